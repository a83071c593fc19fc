"""torchrun with the requeue status: ``python -m megatron_ipt.cluster.launch run [torchrun options] ...``.

torchrun turns any worker exit, 75 included, into 1; each rank records its status
(:func:`megatron_ipt.train.preemption.record_exit_status`) and this launcher exits 75 when the ranks
were preempted after a checkpoint, so a requeue policy keyed on 75 works outside srun too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping

from megatron_ipt.log import get_logger
from megatron_ipt.train.preemption import EXIT_DIR_ENV, EXIT_REQUEUE

log = get_logger(__name__)


def _recorded_statuses(folder: str) -> dict[int, int]:
    out = {}
    for name in os.listdir(folder):
        if name.startswith("rank"):
            with contextlib.suppress(ValueError, OSError):
                out[int(name[4:])] = int(open(os.path.join(folder, name)).read().strip())
    return out


def launch_status(torchrun_failed: bool, statuses: Mapping[int, int], fallback: int) -> int:
    """The launcher's exit status: 0 when torchrun succeeded; 75 when a rank recorded 75 and no rank
    recorded anything else (ranks the agent killed after a peer exited record nothing: the
    checkpoint was complete before any rank returned 75); else ``fallback`` (torchrun's own)."""
    if not torchrun_failed:
        return 0
    if statuses and set(statuses.values()) == {EXIT_REQUEUE}:
        return EXIT_REQUEUE
    return fallback


def run_torchrun(argv: list[str]) -> int:
    """Run torchrun's elastic agent in this process with ``argv`` (torchrun's own options and
    script), and return 75 when the ranks were preempted after a checkpoint (torchrun itself turns
    any non-zero worker exit, 75 included, into 1)."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    args = parse_args(argv)
    folder = tempfile.mkdtemp(prefix="ipt-exit-")
    os.environ[EXIT_DIR_ENV] = folder  # inherited by the agent's workers
    try:
        try:
            torchrun(args)
            failed, fallback = False, 0
        except ChildFailedError as err:
            _, first = err.get_first_failure()
            failed, fallback = True, first.exitcode if first.exitcode > 0 else 1
        except SignalException as err:  # the agent was signalled; it stopped the workers first
            failed, fallback = True, 128 + int(err.sigval)
        status = launch_status(failed, _recorded_statuses(folder), fallback)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if status == EXIT_REQUEUE:
        log.warning("launch: the ranks were preempted after a checkpoint: exiting %d (requeue)", EXIT_REQUEUE)
    return status


def main(argv: list[str] | None = None) -> int:
    """``run`` and torchrun's own command line: torchrun parses it, so the house grammar does not apply."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "run":
        print("usage: python -m megatron_ipt.cluster.launch run [torchrun options] (-m MODULE | SCRIPT) [args ...]\n\n"
              "torchrun, with one difference: when the ranks exit 75 after a preemption checkpoint, so does\n"
              "this launcher (torchrun exits 1), so a requeue policy keyed on 75 works outside srun too.\n"
              "On SIGTERM the agent waits --shutdown-timeout seconds (default 30) for the ranks' checkpoint.\n"
              "Example: python -m megatron_ipt.cluster.launch run --standalone --nproc-per-node 8 -m megatron_ipt.train \\\n"
              "           --config configs/pretrain_500M.yaml --data.train=PREFIX")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from megatron_ipt.log import setup_logging

    setup_logging()
    return run_torchrun(argv[1:])



if __name__ == "__main__":
    import sys as _sys

    _sys.exit(main())
