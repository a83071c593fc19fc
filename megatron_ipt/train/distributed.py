"""Start torch.distributed for training: export the job's standard variables, bind the rank's GPU,
then DeepSpeed's init with the configured collective timeout; and the wait for rank 0's lone work."""

from __future__ import annotations

import os
import warnings

from megatron_ipt.dist_env import DistEnv, LaunchError, dist_env_from_environ, export_env
from megatron_ipt.log import get_logger

log = get_logger(__name__)

DEFAULT_TIMEOUT_MINUTES = 30.0  # collective timeout: a rank that waits longer in one collective aborts
DEFAULT_RANK0_WAIT_MINUTES = 24 * 60.0  # other ranks' wait while rank 0 alone converts or exports

# A gloo group the other ranks wait in while rank 0 works alone; its timeout is the rank-0 wait, not
# the collective timeout that guards training (NCCL's watchdog would abort the waiting ranks).
_rank0_wait_group: object | None = None


def cuda_device_index(local_rank: int, visible: int) -> int:
    """The CUDA device of a rank: its local rank modulo the devices it sees (a task bound to one
    GPU, as with ``--gpus-per-task=1``, sees that GPU alone, as device 0)."""
    if visible < 1:
        raise LaunchError(f"local rank {local_rank}: no CUDA device is visible (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
    return local_rank % visible


def init_distributed(backend: str | None = None, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES,
                     rank0_wait_minutes: float = DEFAULT_RANK0_WAIT_MINUTES) -> DistEnv:
    """Export the standard variables and start torch.distributed via DeepSpeed; returns the env.

    ``timeout_minutes`` bounds every collective; ``rank0_wait_minutes`` bounds :func:`wait_for_rank0`.
    """
    from datetime import timedelta

    import torch

    global _rank0_wait_group
    dist = dist_env_from_environ()
    export_env(dist)
    import deepspeed

    cuda = torch.cuda.is_available()
    if not cuda:
        import deepspeed.ops

        # The shared-memory all-reduce op is compiled with g++ on first init (~2 min) and serves only
        # inference. Only on CPU: touching the table makes every rank probe every op builder on CUDA.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda:
        visible = torch.cuda.device_count()
        index = cuda_device_index(dist.local_rank, visible)
        torch.cuda.set_device(index)
        log.info("distributed: rank %d (local rank %d) on cuda:%d of %d visible (CUDA_VISIBLE_DEVICES=%s)",
                 dist.rank, dist.local_rank, index, visible, os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    # ZeRO calls torch's deprecated collective names (all_gather_into_tensor, reduce_scatter_tensor) every
    # step; torch warns on each call and rank, which no user can act on: a flood in every log.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                               timeout=timedelta(minutes=timeout_minutes))
    import torch.distributed as td

    _rank0_wait_group = td.new_group(backend="gloo", timeout=timedelta(minutes=rank0_wait_minutes))
    log.info(
        "distributed: %d ranks via %s, master %s:%d, backend %s, collective timeout %g min",
        dist.world_size, dist.source, dist.master_addr, dist.master_port, backend, timeout_minutes,
    )
    return dist


def wait_for_rank0() -> None:
    """Every rank waits here until rank 0 arrives after work it does alone (a checkpoint conversion,
    an export); the wait is bounded by the rank-0 wait, not by the collective timeout."""
    import torch.distributed as td

    if td.is_initialized():
        td.barrier(group=_rank0_wait_group)  # the default group when init_distributed did not run
