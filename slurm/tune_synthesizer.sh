#!/bin/bash
# Tune an instruction synthesizer: ZeRO-3 fine-tuning of an HF checkpoint (Mistral-7B on a
# cluster) on the context-based task data from `data_tools.build_synthesizer_data`, loss on the
# pair tokens only; exports an HF directory that `slurm/synthesize.sh` loads (MODEL=).
#
#   INIT_FROM=/models/Mistral-7B-v0.1 DATA=data/synth_tuning_text_document sbatch slurm/tune_synthesizer.sh
#
# Environment (unset means "the config's value"):
#   INIT_FROM     HF checkpoint directory to fine-tune           (config's model.init_from)
#   DATA VALID    tuning / held-out prefixes (with _lossmask twins)   (config's)
#   EXPORT_DIR    where the tuned synthesizer is written         [$RUNS_DIR/$RUN_NAME/synthesizer]
#   CONFIG        training config                                [configs/tune_synthesizer.yaml]
#   STEPS GLOBAL_BATCH MICRO_BATCH SEQ_LEN LR DS_CONFIG TOKENIZER   (config's)
#   RUN_NAME      [tune_synthesizer]   RUNS_DIR [$IPT_ROOT/runs]
#   CKPT_DIR      [$RUNS_DIR/$RUN_NAME/checkpoints]   RESUME auto | none | a checkpoint dir [auto]
#   IPT_ROOT PYTHON SRUN_ARGS SRUN_WAIT REQUEUE MAX_REQUEUES: see slurm/common.sh.
#
#SBATCH --job-name=tune_synthesizer
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

EXPORT_DIR=${EXPORT_DIR:-${RUNS_DIR:-$IPT_ROOT/runs}/${RUN_NAME:-tune_synthesizer}/synthesizer}
ipt_train tune_synthesizer "${CONFIG:-configs/tune_synthesizer.yaml}" "$@"
