#!/bin/bash
# Continual pre-training of a Llama3-8B-class HF checkpoint on a domain's instruction-augmented
# corpus (ZeRO-3, the model is built partitioned across ranks).
#
#   DOMAIN=biomedicine INIT_FROM=/models/Llama-3-8B TOKENIZER=/models/Llama-3-8B \
#       BLEND=data/corpora/biomedicine/blend.yaml sbatch slurm/continual_pretrain_8B.sh
#   DOMAIN=finance ... sbatch slurm/continual_pretrain_8B.sh [--section.key=value ...]
#
# Environment:
#   DOMAIN        biomedicine | finance (required): names the run
#   INIT_FROM     HF checkpoint directory to start from          (config's model.init_from)
#   BLEND         the domain blend: a YAML with a data: section, as `data_tools.build_corpora
#                 --recipe domain --output-dir OUT` writes to OUT/blend.yaml
#                 [data/corpora/$DOMAIN/blend.yaml when it exists and DATA is unset]
#   DATA          or the blend itself: PREFIX or "w1 PREFIX1 w2 PREFIX2"   (config's data.train)
#   CONFIG        training config                                [configs/continual_8B.yaml]
#   VALID STEPS GLOBAL_BATCH MICRO_BATCH SEQ_LEN LR DS_CONFIG TOKENIZER EXPORT_DIR   (config's)
#   RUN_NAME      [continual_8B_$DOMAIN]   RUNS_DIR [$IPT_ROOT/runs]
#   CKPT_DIR      [$RUNS_DIR/$RUN_NAME/checkpoints]   RESUME auto | none | a checkpoint dir [auto]
#   Per job: $RUNS_DIR/$RUN_NAME/jobs/$SLURM_JOB_ID/ holds config.yaml, metrics.jsonl, tensorboard/.
#   IPT_ROOT PYTHON SRUN_ARGS SRUN_WAIT REQUEUE MAX_REQUEUES: see slurm/common.sh.
# A missing INIT_FROM directory or data prefix fails the job before anything is launched.
#
#SBATCH --job-name=continual_8B
#SBATCH --nodes=4
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

case "${DOMAIN:-}" in
    biomedicine | finance) ;;
    *) ipt_die "DOMAIN must be biomedicine or finance (got '${DOMAIN:-}')" ;;
esac
RUN_NAME=${RUN_NAME:-continual_8B_$DOMAIN}
if [ -z "${DATA:-}" ] && [ -z "${BLEND:-}" ] && [ -f "$IPT_ROOT/data/corpora/$DOMAIN/blend.yaml" ]; then
    BLEND=$IPT_ROOT/data/corpora/$DOMAIN/blend.yaml
fi
ipt_train "continual_8B_$DOMAIN" "${CONFIG:-configs/continual_8B.yaml}" "$@"
