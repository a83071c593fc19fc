"""SIGTERM/SIGUSR1 → checkpoint and exit 75 (Slurm requeues jobs that exit with 75).

The handler only sets a flag; the loop all-reduces it at each step boundary so every rank agrees to
save at the same step even when only one of them got the signal. Each rank leaves its exit status in
``$MEGATRON_IPT_EXIT_DIR`` for :mod:`megatron_ipt.cluster.launch`, since torchrun keeps only 0/1.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

import torch
import torch.distributed as dist

from megatron_ipt.log import get_logger

log = get_logger(__name__)

EXIT_REQUEUE = 75  # "preempted: checkpoint saved, requeue me" (Slurm requeue policies key on it)
EXIT_DIR_ENV = "MEGATRON_IPT_EXIT_DIR"  # where each rank leaves its exit status for the launcher


def record_exit_status(status: int) -> None:
    """Leave this rank's exit status for ``python -m megatron_ipt.cluster.launch run`` (a no-op outside it)."""
    folder = os.environ.get(EXIT_DIR_ENV)
    if folder:
        rank = os.environ.get("RANK", "0")
        with open(os.path.join(folder, f"rank{rank}"), "w") as fh:
            fh.write(f"{status}\n")


class PreemptionFlag:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            log.warning("received %s: will checkpoint at the next step boundary and exit %d",
                        signal.Signals(signum).name, EXIT_REQUEUE)
        self.received = signum

    def any_rank(self) -> bool:
        """True on every rank if any rank was signalled (a collective: call on all ranks)."""
        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32)
        if dist.is_initialized():
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
