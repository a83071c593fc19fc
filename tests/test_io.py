"""megatron_ipt.io: atomic files and directories, including SIGKILL at random points of a swap."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from megatron_ipt import io


def write_version(folder: Path, version: int, files: int = 3) -> None:
    for i in range(files):
        (folder / f"part{i}.txt").write_text(f"{version}\n" * 1000)
    (folder / "version").write_text(str(version))


def read_version(folder: Path) -> int:
    """The directory's version; asserts every file belongs to it (no mix of old and new)."""
    version = int((folder / "version").read_text())
    for part in sorted(folder.glob("part*.txt")):
        assert set(part.read_text().split()) == {str(version)}, f"{part} mixes versions"
    return version


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_atomic_dir_creates_then_replaces_keeping_the_old_until_done(tmp_path) -> None:
    out = tmp_path / "model"
    with io.atomic_dir(out) as tmp:
        assert not out.exists() and tmp.parent == out.parent
        write_version(tmp, 1)
    assert read_version(out) == 1
    with io.atomic_dir(out) as tmp:
        write_version(tmp, 2)
        assert read_version(out) == 1  # the old output is whole while the new one is written
    assert read_version(out) == 2
    assert leftovers(out) == []


def tree_state(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under ``root``'s parent: mode and bytes (folders: mode only)."""
    return {str(p.relative_to(root.parent)): (p.lstat().st_mode, None if p.is_dir() else p.read_bytes())
            for p in sorted(root.parent.rglob("*"))}


def test_atomic_dir_replaces_only_an_empty_folder_or_an_earlier_output(tmp_path) -> None:
    ours, empty, foreign = tmp_path / "ours", tmp_path / "empty", tmp_path / "foreign"
    with io.atomic_dir(ours) as tmp:
        write_version(tmp, 1)
    assert (ours / io.DIR_MARKER).is_file()
    empty.mkdir()
    foreign.mkdir()
    (foreign / "metrics.jsonl").write_text("precious\n")
    for out in (ours, empty):
        with io.atomic_dir(out) as tmp:
            write_version(tmp, 2)
        assert read_version(out) == 2
    before = tree_state(foreign)
    with pytest.raises(io.OutputRefused, match=r"foreign: the folder holds files this tool did not write"):
        with io.atomic_dir(foreign) as tmp:
            write_version(tmp, 3)
    assert tree_state(foreign) == before


@pytest.mark.parametrize("kind", ["file", "symlink", "under a file"])
def test_atomic_dir_refuses_a_file_a_symlink_and_a_path_under_a_file_touching_nothing(tmp_path, kind) -> None:
    (tmp_path / "f").write_text("precious\n")
    (tmp_path / "d").mkdir()
    out = {"file": tmp_path / "f", "symlink": tmp_path / "link", "under a file": tmp_path / "f" / "model"}[kind]
    if kind == "symlink":
        out.symlink_to(tmp_path / "d")
    before = tree_state(tmp_path / "f")
    with pytest.raises(io.OutputRefused, match={"file": "a file stands there", "symlink": "a symlink stands there",
                                                "under a file": "cannot write under .*f: a file stands"}[kind]):
        with io.atomic_dir(out) as tmp:
            write_version(tmp, 1)
    assert tree_state(tmp_path / "f") == before


def test_atomic_dir_gives_its_files_the_mode_of_a_plain_open(tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    out = tmp_path / "model"
    (tmp_path / "plain").write_text("x")
    with io.atomic_dir(out) as tmp:
        save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")  # safetensors creates it 0600
        (tmp / "config.json").write_text("{}")
    plain = (tmp_path / "plain").stat().st_mode
    assert {p.name: p.stat().st_mode for p in out.iterdir()} == dict.fromkeys(
        ["model.safetensors", "config.json", io.DIR_MARKER], plain)


def test_atomic_dir_failure_leaves_the_old_output(tmp_path) -> None:
    out = tmp_path / "model"
    with io.atomic_dir(out) as tmp:
        write_version(tmp, 1)
    with pytest.raises(RuntimeError, match="boom"), io.atomic_dir(out) as tmp:
        write_version(tmp, 2)
        raise RuntimeError("boom")
    assert read_version(out) == 1
    assert leftovers(out) == []


def test_without_rename_exchange_a_crash_between_renames_is_recovered(tmp_path, monkeypatch) -> None:
    out = tmp_path / "model"
    with io.atomic_dir(out) as tmp:
        write_version(tmp, 1)
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    with io.atomic_dir(out) as tmp:
        write_version(tmp, 2)
    assert read_version(out) == 2 and leftovers(out) == []

    # A kill after the old directory was set aside and before the new one moved in:
    real_rename = os.rename
    calls = []

    def dying_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for the kill: nothing after this runs
        real_rename(src, dst)

    monkeypatch.setattr(io.os, "rename", dying_rename)
    monkeypatch.setattr(io.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing
    with pytest.raises(KeyboardInterrupt), io.atomic_dir(out) as tmp:
        write_version(tmp, 3)
    monkeypatch.undo()
    assert not out.exists()  # the state a kill leaves: the old one is set aside under another name
    io.recover_dir(out)
    assert read_version(out) == 2 and leftovers(out) == []


def test_recover_dir_keeps_a_live_writers_temporary(tmp_path) -> None:
    out = tmp_path / "model"
    live = tmp_path / f".model.tmp-{os.getppid()}-abcd1234"  # the parent process is alive
    dead = tmp_path / ".model.tmp-999999999-abcd1234"
    live.mkdir()
    dead.mkdir()
    io.recover_dir(out)
    assert live.exists() and not dead.exists()


def test_atomic_path_removes_what_killed_writers_left(tmp_path) -> None:
    out = tmp_path / "shard.jsonl"
    dead = tmp_path / ".shard.jsonl.tmp-999999999"  # no such process
    live = tmp_path / f".shard.jsonl.tmp-{os.getppid()}"  # a live writer's work in progress
    other = tmp_path / ".other.jsonl.tmp-999999999"  # another output's: not ours to judge
    for p in (dead, live, other):
        p.write_text("half")
    io.atomic_write_text(out, "whole\n")
    assert out.read_text() == "whole\n" and not dead.exists() and live.exists() and other.exists()


SWAPPER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_io import write_version
    from megatron_ipt.io import atomic_dir
    out = Path(sys.argv[1])
    version = 0
    while True:
        version += 1
        with atomic_dir(out) as tmp:
            write_version(tmp, version, files=20)
""")


@pytest.mark.slow
def test_sigkill_during_swaps_never_leaves_neither(tmp_path) -> None:
    """A writer swapping versions in a loop is killed with SIGKILL at random points: every time,
    the final name holds one whole version, and the next writer's start cleans up."""
    out = tmp_path / "model"
    script = tmp_path / "swapper.py"
    script.write_text(SWAPPER)
    rng = random.Random(0)
    kills, seen = 0, []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(out), str(Path(__file__).parent)])
        deadline = time.monotonic() + 60
        while not (out / "version").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        io.recover_dir(out)
        seen.append(read_version(out))
        assert leftovers(out) == []
    print(f"{kills} kills; versions found after each: {seen}")
    assert kills == 6 and all(v >= 1 for v in seen)


def test_output_lock_refuses_a_second_writer_and_survives_kill(tmp_path) -> None:
    import multiprocessing as mp
    import signal as sig

    from megatron_ipt.io import OutputLocked, output_lock

    out = tmp_path / "ds"
    ctx = mp.get_context("fork")
    ready, hold = ctx.Event(), ctx.Event()

    def holder() -> None:
        with output_lock(out):
            ready.set()
            hold.wait(60)

    p = ctx.Process(target=holder)
    p.start()
    assert ready.wait(30)
    with pytest.raises(OutputLocked, match=rf"ds: another run \(pid {p.pid}\) is writing this output now"):
        with output_lock(out):
            pass
    os.kill(p.pid, sig.SIGKILL)  # the kernel drops the lock with its holder: no stale lock
    p.join()
    with output_lock(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()  # a finished holder removes its lock file
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a file stands where a folder must be"):
        with output_lock(tmp_path / "file" / "ds"):
            pass
