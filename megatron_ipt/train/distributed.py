"""Start torch.distributed for training: export the job's standard variables, then DeepSpeed's init."""

from __future__ import annotations

from megatron_ipt.dist_env import DistEnv, dist_env_from_environ, export_env
from megatron_ipt.log import get_logger

log = get_logger(__name__)


def init_distributed(backend: str | None = None) -> DistEnv:
    """Export the standard variables and start torch.distributed via DeepSpeed; returns the env."""
    import torch

    dist = dist_env_from_environ()
    export_env(dist)
    import deepspeed
    import deepspeed.ops

    # The shared-memory all-reduce op is compiled with g++ on first init (~2 min) and serves only
    # inference; training never needs it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    log.info(
        "distributed: %d ranks via %s, master %s:%d, backend %s",
        dist.world_size, dist.source, dist.master_addr, dist.master_port, backend,
    )
    return dist
