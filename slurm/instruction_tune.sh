#!/bin/bash
# Instruction-tune a pre-trained model: fine-tuning of an exported or HF checkpoint on the
# response-only-loss data from `data_tools.build_instruction_data` (examples packed with document
# masking), scoring lm-eval tasks in the loop (the tuning curve in metrics.jsonl and TensorBoard);
# exports the tuned model as an HF directory.
#
#   INIT_FROM=runs/continual/hf TOKENIZER=runs/continual/hf DATA=data/ins_text_document \
#       TASKS="[evals/suite]" DOWNSTREAM_INTERVAL=100 sbatch slurm/instruction_tune.sh
#
# Environment (unset means "the config's value"):
#   INIT_FROM     pre-trained HF directory to tune               (config's model.init_from)
#   TOKENIZER     its tokenizer (the same directory)             (config's data.tokenizer)
#   DATA VALID    instruction / held-out prefixes (with _lossmask twins)   (config's)
#   TASKS         lm-eval task folders or names scored in the loop, e.g. "[evals/suite]"
#   DOWNSTREAM_INTERVAL  steps between in-loop scores            (config's eval.downstream_interval)
#   EXPORT_DIR    where the tuned model is written               [$RUNS_DIR/$RUN_NAME/hf]
#   CONFIG        training config                                [configs/instruction_tune.yaml]
#   STEPS GLOBAL_BATCH MICRO_BATCH SEQ_LEN LR DS_CONFIG   (config's)
#   RUN_NAME      [instruction_tune]   RUNS_DIR [$IPT_ROOT/runs]
#   CKPT_DIR      [$RUNS_DIR/$RUN_NAME/checkpoints]   RESUME auto | none | a checkpoint dir [auto]
#   IPT_ROOT PYTHON SRUN_ARGS SRUN_WAIT REQUEUE MAX_REQUEUES: see slurm/common.sh.
#
#SBATCH --job-name=instruction_tune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
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

export EXPORT_DIR=${EXPORT_DIR:-${RUNS_DIR:-$IPT_ROOT/runs}/${RUN_NAME:-instruction_tune}/hf}  # exported: the stage policy reads it from the environment
ipt_train instruction_tune "${CONFIG:-configs/instruction_tune.yaml}" "$@"
