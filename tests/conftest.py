"""Fixtures shared across the test tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep test processes from each spawning a full thread pool on the 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain HF directory (converted once from the shipped GGUF, cached)."""
    from megatron_ipt.model.hf_import import smollm2_hf_dir

    return smollm2_hf_dir()


@pytest.fixture(scope="session")
def mistral_tokenizer():
    from megatron_ipt.tokenizer import load_tokenizer

    return load_tokenizer("mistral")


@pytest.fixture(scope="session")
def save_tiny_llama(mistral_tokenizer):
    """``save_tiny_llama(out, **shape)``: a random Llama with Mistral's vocabulary saved as an HF dir."""

    def save(out: Path, hidden_size: int = 32, intermediate_size: int = 64, num_hidden_layers: int = 1,
             num_attention_heads: int = 2, num_key_value_heads: int = 1,
             max_position_embeddings: int = 512) -> Path:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=mistral_tokenizer.vocab_size, hidden_size=hidden_size,
                          intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
                          num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                          max_position_embeddings=max_position_embeddings, bos_token_id=mistral_tokenizer.bos_id,
                          eos_token_id=mistral_tokenizer.eos_id, pad_token_id=mistral_tokenizer.eos_id)
        LlamaForCausalLM(cfg).save_pretrained(out)
        return out

    return save


# -- fault injection: SIGKILL at the N-th commit point of a real command -------------------------

# Runs ``python -m MODULE ARGS`` with every fsync/rename/replace counted; the process SIGKILLs itself
# just before the AT-th one (0: never) and, when it exits normally, writes how many it passed. Those
# calls are the moments a writer commits data, so killing there hits every half-written state.
_KILL_AT_POINT = """
import os, runpy, signal, sys
at, count_file, module, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
seen = 0
def _point(fn):
    def wrapped(*args, **kwargs):
        global seen
        seen += 1
        if seen == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped
os.fsync, os.rename, os.replace = _point(os.fsync), _point(os.rename), _point(os.replace)
sys.argv = [module, *argv]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    with open(count_file, "w") as fh:
        fh.write(str(seen))
"""


class FaultInjector:
    """``run(module, args, at)`` -> (exit status, commit points passed); kills counted per stage."""

    def __init__(self, tmp: Path, stage: str, record: list) -> None:
        self.tmp, self.stage, self.kills, self._record = tmp, stage, 0, record
        self.script = tmp / "kill_at_point.py"
        self.script.write_text(_KILL_AT_POINT)

    def run(self, module: str, args: list[str], at: int = 0, timeout: float = 300) -> tuple[int, int]:
        import signal
        import subprocess
        import sys

        count = self.tmp / "points"
        count.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.Popen([sys.executable, str(self.script), str(at), str(count), module, *map(str, args)],
                                cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        finally:
            try:  # the command's own children (tokenizing workers) go with it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.returncode == -signal.SIGKILL:
            self.kills += 1
            return proc.returncode, at - 1
        assert proc.returncode == 0, f"{module} exited {proc.returncode}:\n{err[-3000:]}"
        return 0, int(count.read_text())

    def count_points(self, fn, *args, **kwargs) -> int:
        """Run ``fn`` in this process (the uninterrupted reference) and count its commit points."""
        seen = 0
        originals = {name: getattr(os, name) for name in ("fsync", "rename", "replace")}

        def counted(orig):
            def wrapped(*a, **k):
                nonlocal seen
                seen += 1
                return orig(*a, **k)
            return wrapped

        try:
            for name, orig in originals.items():
                setattr(os, name, counted(orig))
            fn(*args, **kwargs)
        finally:
            for name, orig in originals.items():
                setattr(os, name, orig)
        return seen

    def killed(self, n: int = 1) -> None:
        """Count kills made outside :meth:`run` (a whole training job)."""
        self.kills += n

    def done(self) -> None:
        self._record.append((self.stage, self.kills))
        print(f"fault injection: {self.stage}: {self.kills} SIGKILLs, every rerun matched the uninterrupted run")


_FAULT_KILLS: list[tuple[str, int]] = []


@pytest.fixture
def fault_injector(tmp_path):
    """``fault_injector(stage) -> FaultInjector``; its kills are reported at the end of the session."""
    made: list[FaultInjector] = []

    def make(stage: str) -> FaultInjector:
        (tmp_path / "faults").mkdir(exist_ok=True)
        made.append(FaultInjector(tmp_path / "faults", stage, _FAULT_KILLS))
        return made[-1]

    return make


def pytest_terminal_summary(terminalreporter) -> None:
    if _FAULT_KILLS:
        total = sum(n for _, n in _FAULT_KILLS)
        parts = ", ".join(f"{stage} {n}" for stage, n in _FAULT_KILLS)
        terminalreporter.write_line(f"fault injection: {total} SIGKILLs ({parts}); every rerun matched")


# -- waiting on real processes: for an observable event, never for a time -------------------------

def wait_until(done, running, what: str, output=lambda: "", timeout: float = 300) -> None:
    """Poll ``done()`` until true. Fails at once if ``running()`` turns false first (the process ended
    before the event) and after ``timeout`` seconds (a hang); ``output()`` goes into the message."""
    import time

    deadline = time.monotonic() + timeout
    while not done():
        assert running(), f"the process ended before {what}:\n{output()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}:\n{output()[-3000:]}"
        time.sleep(0.05)


@pytest.fixture(scope="session")
def wait_for():
    """``wait_for(done, running, what, output=..., timeout=300)``: see :func:`wait_until`."""
    return wait_until


class Park:
    """Processes started with ``env(point)`` stop at that park point (megatron_ipt.park); ``wait``
    returns once they have. A test then kills or signals them at a known place, whatever the
    machine's speed, or lets them go on with :meth:`release`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def env(self, point: str) -> dict[str, str]:
        """Environment for the processes to park at ``point``; markers of earlier (killed) ones are cleared."""
        from megatron_ipt.park import AT_ENV, DIR_ENV

        self.release()
        self.folder.mkdir(parents=True, exist_ok=True)
        return {AT_ENV: point, DIR_ENV: str(self.folder)}

    def parked(self) -> list[int]:
        """Pids of the processes parked now (a marker still being written is not counted)."""
        return sorted(int(p.name) for p in self.folder.glob("[0-9]*")) if self.folder.is_dir() else []

    def wait(self, count: int, running, output=lambda: "", timeout: float = 300) -> list[int]:
        """Wait until ``count`` processes are parked (see :func:`wait_until`); returns their pids."""
        wait_until(lambda: len(self.parked()) >= count, running, f"{count} processes parked", output, timeout)
        return self.parked()

    def release(self) -> None:
        """Let every parked process go on (a killed one's marker is just removed)."""
        for p in self.folder.glob("[0-9]*") if self.folder.is_dir() else []:
            p.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def park():
    """``park(folder) -> Park``: stop subprocesses at a named park point and wait for them there."""
    return Park


def tree_bytes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (names in ``skip`` left out): for byte-for-byte comparison."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and p.name not in skip}


@pytest.fixture
def same_tree():
    """``same_tree(a, b, skip=())``: assert two output trees hold the same files with the same bytes."""

    def check(a: Path, b: Path, skip: tuple[str, ...] = ()) -> None:
        ta, tb = tree_bytes(a, skip), tree_bytes(b, skip)
        assert sorted(ta) == sorted(tb)
        diff = [k for k in ta if ta[k] != tb[k]]
        assert not diff, f"files differ after the kills: {diff}"

    return check
