"""SIGTERM/SIGUSR1 → checkpoint and exit 75 (Slurm requeues jobs that exit with 75).

The handler only sets a flag; the loop all-reduces it at each step boundary so every rank agrees to
save at the same step even when only one of them got the signal.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch
import torch.distributed as dist

from megatron_ipt.launch import EXIT_REQUEUE
from megatron_ipt.log import get_logger

log = get_logger(__name__)



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
