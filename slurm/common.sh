# shellcheck shell=bash
# The one launch helper every slurm/*.sh script sources. It only launches: the Python entry points
# do the work, and `python -m megatron_ipt.cluster.preflight` does the checking.
#
# Each stage script finds this file (IPT_ROOT, else its own folder, the submit dir or the job's
# recorded command: sbatch runs a spooled copy of the script), sources it, and calls
#   ipt_setup STAGE            cd to the repo, pick PYTHON, make this job's run directories
#   ipt_preflight ARGS...      fail fast (exit 2, message in the job log) on a bad node list or a
#                              missing input; exports MASTER_ADDR/MASTER_PORT for the step
#   ipt_train STAGE CONFIG ARGS...  setup + preflight + srun of `python -m megatron_ipt.train`
#                              (environment -> config overrides: see ipt_train below)
#   ipt_srun CMD...            srun one task per allocated task (one per GPU), forward the
#                              time-limit signal, requeue when the step reports preemption
#
# Environment understood by every script (all optional):
#   IPT_ROOT      the megatron-ipt checkout            [found from the script / submit dir]
#   PYTHON        interpreter with megatron-ipt installed         [$IPT_ROOT/.venv/bin/python]
#   RUNS_DIR      where runs live                                 [$IPT_ROOT/runs]
#   RUN_NAME      this run's name; jobs of one run share its checkpoints     [the stage name]
#   SRUN_ARGS     extra srun options, e.g. "--label"
#   SRUN_WAIT     seconds the other tasks may run on after the first one exits [600]
#   REQUEUE       0: never requeue after a preemption                         [1]
#   MAX_REQUEUES  stop requeueing after this many restarts                    [20]
#   OMP_NUM_THREADS  threads per task                                 [$SLURM_CPUS_PER_TASK]
#   PYTHONWARNINGS   [ignore::FutureWarning: torch 2.13 warns on every DeepSpeed collective]
# Per job: $RUNS_DIR/$RUN_NAME/jobs/<job id>/ (config.yaml, metrics.jsonl, tensorboard/); the job's
# own log is the sbatch --output file (%x-%j.out in the submit directory unless overridden).
#
# Preemption: with `#SBATCH --signal=B:USR1@120` Slurm warns the batch shell 120 s before the time
# limit; the helper forwards USR1 to the step (srun passes it to every task); the trainer saves a
# checkpoint and exits 75; the helper then runs `scontrol requeue` and the next run resumes from
# the latest checkpoint (`checkpoint.resume: auto`). A step that exits 75 on its own (the signal
# sent to the step directly: `scancel --signal=USR1 JOB`) is requeued the same way. Under Slurm's
# PreemptMode=REQUEUE, Slurm requeues by itself; the checkpoint the trainer writes on SIGTERM
# during GraceTime is what the next run resumes from.

IPT_EXIT_REQUEUE=75
IPT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# `bash slurm/STAGE.sh --help`: the script's header (usage, environment, #SBATCH defaults).
case "${1:-}" in
    -h | --help)
        sed -n '2,/^[^#]/{/^#SBATCH/{p;b};/^#/{s/^# \{0,1\}//;p}}' "$0"
        exit 0
        ;;
esac

ipt_log() { echo "[ipt $(date -u +%H:%M:%S)] $*"; }

# ipt_die MESSAGE: a clear line in the job log and a non-zero exit, before any step starts.
ipt_die() {
    echo "[ipt] error: $*" >&2
    exit 2
}

# ipt_setup STAGE: cd to the repo, check PYTHON, create this job's directories.
#   Sets RUN_DIR ($RUNS_DIR/$RUN_NAME) and JOB_DIR ($RUN_DIR/jobs/<job id>: logs, TensorBoard).
ipt_setup() {
    IPT_STAGE=$1
    cd "$IPT_ROOT" || ipt_die "cannot cd to IPT_ROOT=$IPT_ROOT"
    PYTHON=${PYTHON:-$IPT_ROOT/.venv/bin/python}
    [ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null \
        || ipt_die "python interpreter '$PYTHON' not found (set PYTHON= or run 'make venv')"
    RUNS_DIR=${RUNS_DIR:-$IPT_ROOT/runs}
    RUN_NAME=${RUN_NAME:-$IPT_STAGE}
    RUN_DIR=$RUNS_DIR/$RUN_NAME
    if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
        IPT_JOB=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
    else
        IPT_JOB=${SLURM_JOB_ID:-local-$$}
    fi
    JOB_DIR=$RUN_DIR/jobs/$IPT_JOB
    mkdir -p "$JOB_DIR" || ipt_die "cannot create the job directory $JOB_DIR"
    export PYTHONUNBUFFERED=1  # log lines reach the job log as they happen
    # One thread pool per task sized to its CPUs, not to the whole node (8 ranks x 96 threads).
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    # torch 2.13 warns about deprecated collectives on every DeepSpeed call: thousands of lines.
    export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::FutureWarning}
    ipt_log "stage=$IPT_STAGE job=$IPT_JOB restart=${SLURM_RESTART_COUNT:-0}" \
        "nodes=${SLURM_JOB_NODELIST:-local} tasks=${SLURM_NTASKS:-1} root=$IPT_ROOT"
    ipt_log "run dir $RUN_DIR, job dir $JOB_DIR, python $PYTHON"
}

# ipt_preflight [--require-prefix P] [--require-dir D] [--require-file F] [--train-config C -- OVERRIDES...]
ipt_preflight() {
    local exports
    exports=$("$PYTHON" -m megatron_ipt.cluster.preflight "$@") \
        || ipt_die "preflight failed for stage $IPT_STAGE (see above); nothing was launched"
    eval "$exports"
    [ -n "${MASTER_ADDR:-}" ] && ipt_log "master $MASTER_ADDR:$MASTER_PORT"
    return 0
}

_ipt_forward_signal() {
    IPT_SIGNALLED=$1
    ipt_log "caught SIG$1: forwarding it to the running step"
    [ -n "${IPT_STEP_PID:-}" ] && kill -s "$1" "$IPT_STEP_PID" 2>/dev/null
    return 0
}

# ipt_requeue RC: requeue this job after a preempted step (or exit RC when that is not possible).
ipt_requeue() {
    local rc=$1 restarts=${SLURM_RESTART_COUNT:-0} target=${SLURM_JOB_ID:-}
    # An array task by its task id: the last task's SLURM_JOB_ID is the array's id, and requeueing
    # that would requeue every task of the array.
    [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && target=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
    if [ -z "${SLURM_JOB_ID:-}" ]; then
        ipt_log "step preempted (exit $rc) outside Slurm: run the script again to resume"
    elif [ "${REQUEUE:-1}" = 0 ]; then
        ipt_log "step preempted (exit $rc); REQUEUE=0, not requeueing"
    elif [ "$restarts" -ge "${MAX_REQUEUES:-20}" ]; then
        ipt_log "step preempted (exit $rc) after $restarts restarts (MAX_REQUEUES): giving up"
    else
        ipt_log "step preempted (exit $rc): requeueing job $target (restart $((restarts + 1)))"
        scontrol requeue "$target" && exit 0
        ipt_log "scontrol requeue failed"
    fi
    exit "$rc"
}

# ipt_srun CMD ARGS...: run CMD as one Slurm step over the allocation (outside Slurm: directly).
ipt_srun() {
    local -a launcher=()
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        # Since Slurm 22.05 srun no longer inherits the job's --cpus-per-task: pass it on, or every
        # rank is bound to one core.
        [ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-$SLURM_CPUS_PER_TASK}
        # shellcheck disable=SC2206  # SRUN_ARGS is a list of options
        launcher=(srun --kill-on-bad-exit=0 --wait="${SRUN_WAIT:-600}" ${SRUN_ARGS:-})
    fi
    ipt_log "launch: ${launcher[*]:+${launcher[*]} }$*"
    IPT_SIGNALLED=
    # In the background, so the shell can take the time-limit signal while the step runs.
    "${launcher[@]}" "$@" &
    IPT_STEP_PID=$!
    trap '_ipt_forward_signal USR1' USR1
    while kill -0 "$IPT_STEP_PID" 2>/dev/null; do
        wait "$IPT_STEP_PID"  # returns early when a trapped signal arrives
    done
    wait "$IPT_STEP_PID"
    local rc=$?
    trap - USR1
    IPT_STEP_PID=
    ipt_log "step exited with status $rc"
    if [ "$rc" -eq "$IPT_EXIT_REQUEUE" ] || { [ -n "$IPT_SIGNALLED" ] && [ "$rc" -ne 0 ]; }; then
        ipt_requeue "$rc"
    fi
    return "$rc"
}

# ipt_train STAGE CONFIG [OVERRIDES...]: a training stage. The arguments come from
# `python -m megatron_ipt.cluster.slurm` (the environment -> config-override map and the BLEND
# launch config live there: DATA, VALID, STEPS, GLOBAL_BATCH, MICRO_BATCH, SEQ_LEN, LR, DS_CONFIG,
# TOKENIZER, INIT_FROM, EXPORT_DIR, RESUME; CKPT_DIR [$RUN_DIR/checkpoints]; BLEND: a YAML with a
# `data:` section laid over CONFIG, saved as the job directory's launch_config.yaml). Command-line
# overrides come last and win. Relative paths are relative to the checkout: the step runs there.
ipt_train() {
    local stage=$1 config=$2 out
    shift 2
    ipt_setup "$stage"
    out=$("$PYTHON" -m megatron_ipt.cluster.slurm --train-config "$config" --job-dir "$JOB_DIR" \
        --run-dir "$RUN_DIR" -- "$@") || ipt_die "stage $IPT_STAGE: bad training settings (see above)"
    local -a args
    mapfile -t args <<<"$out"
    ipt_preflight --train-config "${args[1]}" -- "${args[@]:2}"
    ipt_srun "$PYTHON" -m megatron_ipt.train "${args[@]}"
}
