#!/bin/bash
# Tokenize corpora into Megatron-format indexed datasets (`python -m data_tools.preprocess_data`).
# One task; the tokenizer runs in CPUS workers. Resumable: a requeued or rerun job continues.
#
#   INPUT="corpus/ more.jsonl.gz" OUTPUT_PREFIX=data/pubmed sbatch slurm/preprocess.sh --append-eod
#
# Environment:
#   INPUT          files or directories, space-separated (required)
#   OUTPUT_PREFIX  writes OUTPUT_PREFIX_text_document.bin/.idx (required)
#   TOKENIZER      mistral | x.model | HF dir | x.gguf           [mistral]
#   JSON_KEYS      field holding the text                        [text]
#   WORKERS        tokenizing processes                          [$SLURM_CPUS_PER_TASK]
#   RUN_NAME RUNS_DIR IPT_ROOT PYTHON SRUN_ARGS REQUEUE MAX_REQUEUES: see slurm/common.sh.
# Further preprocess_data options (--append-eod, --prepend-bos, --skip-bad, ...) pass through.
#
#SBATCH --job-name=preprocess
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

set -uo pipefail
# sbatch runs a spooled copy: find slurm/common.sh from IPT_ROOT, else this folder, the submit dir or
# the job's recorded command (its first record: an array id lists every task).
[ -n "${IPT_ROOT:-}" ] || for IPT_ROOT in "$(dirname "$0")/.." "${SLURM_SUBMIT_DIR:-}" \
    "$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's|^ *Command=\([^ ]*\)/slurm/[^/ ]*\( .*\)*$|\1|p' | head -n 1)"; do [ -f "$IPT_ROOT/slurm/common.sh" ] && break; done
[ -f "$IPT_ROOT/slurm/common.sh" ] || { echo "[ipt] error: cannot find the megatron-ipt checkout (IPT_ROOT=$IPT_ROOT); set IPT_ROOT" >&2; exit 2; }
# shellcheck source=slurm/common.sh
source "$IPT_ROOT/slurm/common.sh"

ipt_setup preprocess
[ -n "${INPUT:-}" ] || ipt_die "INPUT is required: the corpus files or directories to tokenize"
[ -n "${OUTPUT_PREFIX:-}" ] || ipt_die "OUTPUT_PREFIX is required: where the indexed dataset goes"
read -r -a inputs <<<"$INPUT"
preflight_args=()
for f in "${inputs[@]}"; do preflight_args+=(--require-path "$f"); done
ipt_preflight "${preflight_args[@]}" --require-dir "$(dirname "$OUTPUT_PREFIX")"
ipt_srun "$PYTHON" -m data_tools.preprocess_data --input "${inputs[@]}" \
    --output-prefix "$OUTPUT_PREFIX" --tokenizer "${TOKENIZER:-mistral}" \
    --json-keys "${JSON_KEYS:-text}" --workers "${WORKERS:-${SLURM_CPUS_PER_TASK:-1}}" "$@"
