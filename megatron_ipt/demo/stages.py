"""Resumable stages and the subprocess runner of the demo.

A stage writes its outputs, then a marker ``OUT/stages/NN_key.json`` (atomically) holding its
summary and wall time. A rerun finds the marker and skips the stage, so a killed demo resumes at
the first unfinished stage. Child commands (trainer, synthesizer) print their own progress bars;
their output is also kept in ``OUT/logs/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from megatron_ipt.io import atomic_write_json

STAGE_DIR = "stages"


class DemoError(Exception):
    """A failure the user can act on; printed as one line, without a traceback."""


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


class StageRunner:
    """Runs stages in order, skipping those whose marker exists."""

    def __init__(self, out: Path, total: int) -> None:
        self.out = Path(out)
        self.total = total
        (self.out / STAGE_DIR).mkdir(parents=True, exist_ok=True)

    def marker(self, index: int, key: str) -> Path:
        return self.out / STAGE_DIR / f"{index:02d}_{key}.json"

    def run(self, index: int, key: str, title: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        marker = self.marker(index, key)
        if marker.exists():
            info = json.loads(marker.read_text())
            banner(f"[{index}/{self.total}] {title}: done in an earlier run ({info['seconds']:.0f} s), skipped")
            return info
        banner(f"[{index}/{self.total}] {title}")
        start = time.perf_counter()
        info = fn()
        info = {"stage": key, "title": title, "seconds": time.perf_counter() - start, **info}
        atomic_write_json(marker, info)
        print(f"--- [{index}/{self.total}] {title}: done in {info['seconds']:.0f} s", flush=True)
        return info

    def results(self) -> list[dict[str, Any]]:
        """Markers of every finished stage, in order."""
        return [json.loads(p.read_text()) for p in sorted((self.out / STAGE_DIR).glob("*.json"))]


def child_env(threads: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process: thread count pinned (2 ranks share 2 cores)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def run_command(cmd: Sequence[str], log_path: Path, threads: int = 2, what: str | None = None,
                env: Mapping[str, str] | None = None) -> float:
    """Run ``cmd``, streaming its output to the console and ``log_path``; seconds taken.

    A non-zero exit raises :class:`DemoError` naming the log (the child's own traceback is there).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    what = what or " ".join(cmd[:4])
    start = time.perf_counter()
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        # Its own process group, so that an interrupted demo stops the launcher AND its ranks.
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=child_env(threads, env), cwd=os.getcwd(), start_new_session=True)
        assert proc.stdout is not None
        try:
            # Chunks, not lines: progress bars redraw with \r.
            while chunk := proc.stdout.read1(4096):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log.write(chunk)
            rc = proc.wait()
        except BaseException:
            stop_group(proc)
            raise
    if rc != 0:
        raise DemoError(f"{what} failed with exit code {rc}; its output is in {log_path}")
    return time.perf_counter() - start


def stop_group(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """SIGTERM the child's process group (the trainer checkpoints and exits), SIGKILL after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_main(module: str, args: Sequence[str], what: str) -> float:
    """Call the ``main(argv)`` of a CLI module in this process; seconds taken.

    Same arguments and behaviour as ``python -m module args``, without paying the interpreter and
    import start-up again (~25 s per process on a loaded 2-core machine). A non-zero status raises
    :class:`DemoError`.
    """
    import gc
    import importlib

    args = [str(a) for a in args]
    print(f"$ python -m {module} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    status = importlib.import_module(module).main(args)
    gc.collect()  # models loaded by the tool are released before the next stage
    if status:
        raise DemoError(f"{what} failed: python -m {module} returned {status} (its message is above)")
    return time.perf_counter() - start


def torchrun_module(module: str, nproc: int, *args: str) -> list[str]:
    """``torchrun --standalone`` (a free rendezvous port, so concurrent runs do not collide)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *args]
