#!/bin/bash
# Pre-train the ~1.3B Mistral-style model from scratch on an instruction-augmented corpus.
#
#   sbatch slurm/pretrain_1.3B.sh [--section.key=value ...]     # overrides go to the trainer
#   sbatch --nodes=4 slurm/pretrain_1.3B.sh                     # #SBATCH values are defaults
#
# Environment (all optional; unset means "the config's value"):
#   CONFIG        training config                                [configs/pretrain_1.3B.yaml]
#   DATA          training blend: PREFIX or "0.7 A 0.3 B"        (config's data.train)
#   BLEND         a YAML with a data: section laid over CONFIG, e.g. the blend.yaml written by
#                 `python -m data_tools.build_corpora --recipe general`
#   VALID         held-out blend                                 (config's data.valid)
#   STEPS GLOBAL_BATCH MICRO_BATCH SEQ_LEN LR DS_CONFIG TOKENIZER EXPORT_DIR   sizes and paths
#   RUN_NAME      jobs of one run share checkpoints              [pretrain_1.3B]
#   RUNS_DIR      [$IPT_ROOT/runs]   CKPT_DIR [$RUNS_DIR/$RUN_NAME/checkpoints]
#   RESUME        auto | none | a checkpoint dir                 [auto]
#   Per job: $RUNS_DIR/$RUN_NAME/jobs/$SLURM_JOB_ID/ holds config.yaml, metrics.jsonl, tensorboard/.
#   IPT_ROOT PYTHON SRUN_ARGS SRUN_WAIT REQUEUE MAX_REQUEUES: see slurm/common.sh.
# One task per GPU (NCCL); an allocation without GPUs trains over gloo. Preempted or at the time
# limit, the trainer checkpoints, the job requeues itself and resumes.
#
#SBATCH --job-name=pretrain_1.3B
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
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

ipt_train pretrain_1.3B "${CONFIG:-configs/pretrain_1.3B.yaml}" "$@"
