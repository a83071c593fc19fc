#!/bin/bash
# Synthesize instruction-response pairs for raw corpora (`python -m data_tools.synthesize`), as a
# Slurm array over work units: the inputs are cut into units of --unit_texts lines (rows), whatever
# the file sizes, and task i of n takes units i, i+n, ...; any array size gives the same outputs.
# Finished units are skipped and a killed unit resumes, so a requeued task continues.
# `python -m data_tools.synthesize --dry-run ...` prints the plan and the sbatch line to submit.
#
#   INPUTS=corpus/ OUTPUT_DIR=synth/ MODEL=runs/tune_synthesizer/synthesizer \
#       sbatch --array=0-15 slurm/synthesize.sh [--rounds=3 --key.sub=value ...]
#
# Environment:
#   INPUTS       input files, folders or globs, space-separated (required)
#   OUTPUT_DIR   output units <name>.jsonl + <name>.stats.json, units.plan (required)
#   MODEL        the tuned synthesizer (HF directory) (required)
#   ENGINE       auto | vllm | hf                                [auto: vLLM when a GPU is there]
#   TP           tensor-parallel GPUs per task                   [GPUs of the task, else 1]
#   CONFIG       a synthesis YAML (rounds, lengths, sampling)    (none: the tool's defaults)
#   NUM_TASKS    tasks that share the work units                 [the array's task count]
#   TASK_INDEX   this task's index                               [the array task's, from its min]
#   RUN_NAME RUNS_DIR IPT_ROOT PYTHON SRUN_ARGS REQUEUE MAX_REQUEUES: see slurm/common.sh.
# Other settings of data_tools.synthesize (--rounds=, --max_new_tokens=, ...) pass through.
#
#SBATCH --job-name=synthesize
#SBATCH --array=0-7
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out

set -uo pipefail
# sbatch runs a spooled copy: find slurm/common.sh from IPT_ROOT, else this folder, the submit dir or
# the job's recorded command (its first record: an array id lists every task).
[ -n "${IPT_ROOT:-}" ] || for IPT_ROOT in "$(dirname "$0")/.." "${SLURM_SUBMIT_DIR:-}" \
    "$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's|^ *Command=\([^ ]*\)/slurm/[^/ ]*\( .*\)*$|\1|p' | head -n 1)"; do [ -f "$IPT_ROOT/slurm/common.sh" ] && break; done
[ -f "$IPT_ROOT/slurm/common.sh" ] || { echo "[ipt] error: cannot find the megatron-ipt checkout (IPT_ROOT=$IPT_ROOT); set IPT_ROOT" >&2; exit 2; }
# shellcheck source=slurm/common.sh
source "$IPT_ROOT/slurm/common.sh"

ipt_setup synthesize
[ -n "${INPUTS:-}" ] || ipt_die "INPUTS is required: the raw corpus files to synthesize for"
[ -n "${OUTPUT_DIR:-}" ] || ipt_die "OUTPUT_DIR is required: where the synthesized units go"
[ -n "${MODEL:-}" ] || ipt_die "MODEL is required: the instruction synthesizer's HF directory"
read -r -a inputs <<<"$INPUTS"
preflight_args=(--require-dir "$MODEL")
for f in "${inputs[@]}"; do
    case "$f" in *[*?[]*) ;; *) preflight_args+=(--require-path "$f") ;; esac  # globs: the tool expands
done
[ -n "${CONFIG:-}" ] && preflight_args+=(--require-file "$CONFIG")
ipt_preflight "${preflight_args[@]}"
mkdir -p "$OUTPUT_DIR" || ipt_die "cannot create OUTPUT_DIR=$OUTPUT_DIR"
tp=${TP:-${SLURM_GPUS_ON_NODE:-1}}
[ "$tp" -ge 1 ] 2>/dev/null || tp=1  # no GPUs: the transformers engine ignores it anyway
args=(--input "${inputs[@]}" "--output_dir=$OUTPUT_DIR" "--engine.model=$MODEL"
      "--engine.kind=${ENGINE:-auto}"
      "--engine.tensor_parallel_size=$tp")
# The tool takes its array task (index from the array's minimum, count) from the launcher itself.
[ -n "${NUM_TASKS:-}" ] && args+=("--num_tasks=$NUM_TASKS")
[ -n "${TASK_INDEX:-}" ] && args+=("--task_index=$TASK_INDEX")
[ -n "${CONFIG:-}" ] && args=(--config "$CONFIG" "${args[@]}")
ipt_srun "$PYTHON" -m data_tools.synthesize "${args[@]}" "$@"
