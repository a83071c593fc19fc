"""Who am I in the job: rank, world size and master address from torchrun, deepspeed or Slurm, and
which task of a job array (:func:`array_task`).

Nothing else in the package reads launcher variables: executors (the command-line tools, the
trainer) ask here and hand rank, world size and array task to the steps they run. The trainer's
``init_distributed`` (:mod:`megatron_ipt.train.distributed`) exports the standard
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables from :func:`export_env`
and starts ``torch.distributed``. This module imports nothing of the package, so the logger can ask it for
the rank of its prefix.

Precedence: variables set by torchrun/deepspeed (``RANK`` and ``WORLD_SIZE``) win over Slurm's, so
``srun`` starting one ``torchrun`` per node works; then a Slurm step (``SLURM_PROCID``); else a
single process. Under Slurm the master is the first node of the step's node list, resolved by DNS
or, failing that, by the node's ``NodeAddr`` from ``scontrol show node``; the port is derived from
the job id so two jobs sharing a node do not collide. ``MASTER_ADDR``/``MASTER_PORT`` already in
the environment win (the Slurm scripts resolve them once in the batch shell, see
:mod:`megatron_ipt.cluster.preflight`).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

# Ports derived from job ids stay below Linux's ephemeral range (32768+), where connect() picks
# local ports and could already hold the one we want.
PORT_BASE = 10000
PORT_SPAN = 20000


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


_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_HOST_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def _split_outside_brackets(text: str, nodelist: str) -> list[str]:
    parts, token, depth = [], "", 0
    for ch in text:
        if ch == "[":
            depth += 1
            if depth > 1:
                raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: nested '['")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append(token)
            token = ""
        else:
            token += ch
    if depth:
        raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: unbalanced '['")
    parts.append(token)
    return parts


def _expand_ranges(ranges: str, nodelist: str) -> list[str]:
    out: list[str] = []
    for rng in ranges.split(","):
        r = _RANGE.fullmatch(rng)
        if r is None:
            raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: bad range {rng!r}")
        lo, hi = r.group(1), r.group(2) or r.group(1)
        if int(hi) < int(lo):
            raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: range {rng!r} runs backwards")
        width = len(lo)  # "01-10" keeps the zero padding of its lower bound, as Slurm does
        out.extend(f"{n:0{width}d}" for n in range(int(lo), int(hi) + 1))
    return out


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand Slurm's compressed node list: ``gpu[01-03,7],cpu1`` -> gpu01 gpu02 gpu03 gpu7 cpu1.

    Several bracket groups in one name expand as a product (``r[1-2]n[1-2]`` -> r1n1 r1n2 r2n1
    r2n2). Anything else (empty entries, unbalanced or nested brackets, stray characters) raises
    ``LaunchError`` naming the list.
    """
    text = nodelist.strip()
    if not text:
        raise LaunchError("cannot parse Slurm node list '': it is empty")
    hosts: list[str] = []
    for part in _split_outside_brackets(text, nodelist):
        if not part:
            raise LaunchError(f"cannot parse Slurm node list {nodelist!r}: empty entry")
        # Alternate literal pieces and bracket contents: "r", "1-2", "n", "1-2", "".
        pieces = re.split(r"\[([^\[\]]*)\]", part)
        choices: list[list[str]] = []
        for i, piece in enumerate(pieces):
            if i % 2:
                choices.append(_expand_ranges(piece, nodelist))
            elif piece:
                if not _HOST_CHARS.fullmatch(piece):
                    raise LaunchError(f"cannot parse Slurm node list {nodelist!r} at {part!r}")
                choices.append([piece])
        if not choices:
            raise LaunchError(f"cannot parse Slurm node list {nodelist!r} at {part!r}")
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    return hosts


def resolve_host(host: str) -> str:
    """An address for a Slurm node name: DNS first, else the node's NodeAddr from scontrol."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        pass
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "node", host], capture_output=True, text=True, check=False, timeout=30
            ).stdout
        except subprocess.TimeoutExpired as err:
            raise LaunchError(f"cannot resolve master node {host!r}: no DNS entry and scontrol timed out") from err
        m = re.search(r"NodeAddr=(\S+)", out)
        if m:
            addr = m.group(1)
            try:
                return socket.gethostbyname(addr)
            except OSError as err:
                raise LaunchError(f"node {host!r} has NodeAddr {addr!r}, which does not resolve") from err
    raise LaunchError(f"cannot resolve master node {host!r} (no DNS entry, no scontrol NodeAddr)")


def master_port_for_job(job_id: int) -> int:
    """The rendezvous port of a Slurm job: fixed per job (requeues reuse it), distinct for nearby ids."""
    return PORT_BASE + job_id % PORT_SPAN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _int(env: Mapping[str, str], key: str, default: str | None = None) -> int:
    value = env.get(key, default)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise LaunchError(f"launcher variable {key}={value!r} is not an integer") from err


def slurm_master(env: Mapping[str, str]) -> tuple[str, int]:
    """Master address and port for the Slurm job or step described by ``env``."""
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise LaunchError("Slurm task without SLURM_JOB_NODELIST: cannot find the master node")
    hosts = expand_hostlist(nodelist)
    addr = env.get("MASTER_ADDR") or resolve_host(hosts[0])
    port = _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else master_port_for_job(_int(env, "SLURM_JOB_ID", "0"))
    return addr, port


def in_slurm_job(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs inside a Slurm job (batch shell or step)."""
    return bool((os.environ if environ is None else environ).get("SLURM_JOB_ID"))


def _launcher(env: Mapping[str, str]) -> str:
    """Who started this process: "torchrun" (also deepspeed), "slurm" (a step) or "single"."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return "torchrun"
    # SLURM_PROCID/SLURM_NTASKS are also set in the batch shell itself; only a step (srun) has a
    # step id, and a python started bare in the batch shell is one process, not rank 0 of N.
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return "slurm"
    return "single"


def process_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank, by the same precedence as :func:`dist_env_from_environ`, without
    resolving the master (cheap enough for log prefixes); 0 when it cannot be read."""
    env = os.environ if environ is None else environ
    key = {"torchrun": "RANK", "slurm": "SLURM_PROCID"}.get(_launcher(env))
    try:
        return int(env[key]) if key else 0
    except ValueError:
        return 0


@dataclass(frozen=True)
class ArrayTask:
    """This process's task of a job array: ``index`` in ``0..count-1``."""

    index: int
    count: int
    source: str  # "slurm" or "single"


def array_task(environ: Mapping[str, str] | None = None) -> ArrayTask:
    """The Slurm array task as a 0-based index: ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) //
    SLURM_ARRAY_TASK_STEP`` of ``SLURM_ARRAY_TASK_COUNT`` (so ``--array=1-8`` and ``--array=0-14:2``
    index 0..7); outside an array, task 0 of 1."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" not in env:
        return ArrayTask(0, 1, "single")
    task_id = _int(env, "SLURM_ARRAY_TASK_ID")
    low = _int(env, "SLURM_ARRAY_TASK_MIN", "0")
    step = _int(env, "SLURM_ARRAY_TASK_STEP", "1")
    count = _int(env, "SLURM_ARRAY_TASK_COUNT", "1")
    index, off_step = divmod(task_id - low, max(step, 1))
    if off_step or not 0 <= index < count:
        raise LaunchError(
            f"Slurm array task {task_id} (min {low}, step {step}, count {count}) is not one of {count} evenly "
            "spaced tasks: submit a range (--array=A-B[:S]) or give the task index and count explicitly"
        )
    return ArrayTask(index, count, "slurm")


def dist_env_from_environ(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables; torchrun/deepspeed win over Slurm (srun inside torchrun)."""
    env = dict(os.environ if environ is None else environ)
    launcher = _launcher(env)
    if launcher == "torchrun":
        return DistEnv(
            rank=_int(env, "RANK"),
            world_size=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK", "0"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT", "29500"),
            source="torchrun",
        )
    if launcher == "slurm":
        addr, port = slurm_master(env)
        return DistEnv(
            rank=_int(env, "SLURM_PROCID"),
            world_size=_int(env, "SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")),
            local_rank=_int(env, "SLURM_LOCALID", "0"),
            master_addr=addr,
            master_port=port,
            source="slurm",
        )
    port = _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else _free_port()
    return DistEnv(0, 1, 0, env.get("MASTER_ADDR", "127.0.0.1"), port, "single")


def export_env(dist: DistEnv) -> None:
    os.environ.update(
        RANK=str(dist.rank),
        WORLD_SIZE=str(dist.world_size),
        LOCAL_RANK=str(dist.local_rank),
        MASTER_ADDR=dist.master_addr,
        MASTER_PORT=str(dist.master_port),
    )
