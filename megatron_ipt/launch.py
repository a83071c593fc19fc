"""Who am I in the job: rank, world size and master address from torchrun, deepspeed or Slurm.

Nothing else in the package reads launcher variables. ``init_distributed`` exports the standard
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables and starts
``torch.distributed`` through DeepSpeed (NCCL with GPUs, gloo without).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass

from megatron_ipt.log import get_logger

log = get_logger(__name__)


class LaunchError(RuntimeError):
    """The launcher environment is incomplete or unparsable."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun" (also deepspeed), "slurm" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand Slurm's compressed node list: ``gpu[01-03,7],cpu1`` -> gpu01 gpu02 gpu03 gpu7 cpu1."""
    hosts: list[str] = []
    i, token = 0, ""
    depth = 0
    parts: list[str] = []
    for ch in nodelist.strip():  # split on commas outside brackets
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append(token)
            token = ""
        else:
            token += ch
        i += 1
    if depth != 0:
        raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: unbalanced '['")
    parts.append(token)
    for part in parts:
        if not part:
            raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: empty entry")
        m = re.fullmatch(r"([^\[\]]*)\[([^\[\]]+)\]([^\[\]]*)", part)
        if m is None:
            if "[" in part or "]" in part:
                raise LaunchError(f"cannot parse Slurm node list {nodelist!r} at {part!r}")
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for rng in ranges.split(","):
            r = _RANGE.match(rng)
            if r is None:
                raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: bad range {rng!r}")
            lo, hi = r.group(1), r.group(2) or r.group(1)
            if int(hi) < int(lo):
                raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: range {rng!r} runs backwards")
            width = len(lo)
            for n in range(int(lo), int(hi) + 1):
                hosts.append(f"{prefix}{n:0{width}d}{suffix}")
    return hosts


def resolve_host(host: str) -> str:
    """An address for a Slurm node name: DNS first, else the node's NodeAddr from scontrol."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        pass
    if shutil.which("scontrol"):
        out = subprocess.run(
            ["scontrol", "show", "node", host], capture_output=True, text=True, check=False
        ).stdout
        m = re.search(r"NodeAddr=(\S+)", out)
        if m:
            return m.group(1)
    raise LaunchError(f"cannot resolve master node {host!r} (no DNS entry, no scontrol NodeAddr)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env_from_environ(environ: dict[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables; torchrun/deepspeed win over Slurm (srun inside torchrun)."""
    env = dict(os.environ if environ is None else environ)
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise LaunchError("Slurm task without SLURM_JOB_NODELIST: cannot find the master node")
        hosts = expand_hostlist(nodelist)
        master = env.get("MASTER_ADDR") or resolve_host(hosts[0])
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        # One port per job, so two jobs sharing a node do not collide.
        port = int(env.get("MASTER_PORT") or 15000 + job_id % 20000)
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            master_addr=master,
            master_port=port,
            source="slurm",
        )
    return DistEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT") or _free_port()), "single")


def export_env(dist: DistEnv) -> None:
    os.environ.update(
        RANK=str(dist.rank),
        WORLD_SIZE=str(dist.world_size),
        LOCAL_RANK=str(dist.local_rank),
        MASTER_ADDR=dist.master_addr,
        MASTER_PORT=str(dist.master_port),
    )


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
