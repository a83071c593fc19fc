"""Park points: a real process stops at the named point (once), says so, and goes on when released."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Passes three points, the middle one twice; prints after each pass.
SCRIPT = """
from megatron_ipt.park import park_point
for where, n in (("train_step", 1), ("save_commit", 2), ("save_commit", 2), ("train_step", 3)):
    park_point(where, n)
    print(f"passed {where}:{n}", flush=True)
"""


def _start(env: dict[str, str], out: Path) -> subprocess.Popen:
    with open(out, "w") as fh:
        return subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_parks_once_at_the_named_point_until_released(tmp_path, park) -> None:
    parking = park(tmp_path / "park")
    out = tmp_path / "out.txt"
    proc = _start(parking.env("save_commit:2"), out)
    try:
        assert parking.wait(1, lambda: proc.poll() is None, out.read_text) == [proc.pid]
        assert (tmp_path / "park" / str(proc.pid)).read_text() == "save_commit:2\n"
        assert proc.poll() is None and out.read_text().count("passed") == 1  # held before its second print
        assert "parked at save_commit:2" in out.read_text()
    finally:
        parking.release()
    assert proc.wait(120) == 0, out.read_text()
    assert [line for line in out.read_text().splitlines() if line.startswith("passed")] == [
        "passed train_step:1", "passed save_commit:2", "passed save_commit:2", "passed train_step:3"]
    assert parking.parked() == []


def test_unset_it_does_nothing_and_without_a_folder_it_says_so(tmp_path) -> None:
    from megatron_ipt.park import AT_ENV, DIR_ENV

    env = {k: v for k, v in os.environ.items() if k not in (AT_ENV, DIR_ENV)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.count("passed") == 4, proc.stderr
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT), AT_ENV: "train_step:3"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout.count("passed") == 3
    assert f"RuntimeError: {AT_ENV}=train_step:3 is set but {DIR_ENV} (where to say so) is not" in proc.stderr
