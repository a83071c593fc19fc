"""``benchmarks/demo_train_speed.py --tiny``: every arm runs (plain loop fp32 / bf16 autocast, the
trainer with ZeRO-0 on one process and ZeRO-3 on two, fp32 and bf16) and the ratio is printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_benchmark_runs_every_arm(tmp_path, smollm2_dir):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, "benchmarks/demo_train_speed.py", "--tiny", "--work", str(tmp_path / "w"),
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    arms = res["tokens_per_s"]
    assert set(arms) == {"plain fp32", "plain bf16-autocast", "trainer zero0 x1 float32", "trainer zero0 x1 bfloat16",
                         "trainer zero3 x2 float32", "trainer zero3 x2 bfloat16", "trainer zero0 x1 bfloat16_autocast"}
    assert all(v > 0 for v in arms.values())
    assert res["ratio"] == pytest.approx(max(v for k, v in arms.items() if k.startswith("trainer"))
                                         / max(v for k, v in arms.items() if k.startswith("plain")))
    assert "best trainer" in proc.stdout and "goal >= 0.90x" in proc.stdout


def test_arms_subset_is_checked_before_any_work(tmp_path):
    """``--arms`` names arms as printed; an unknown name, or no plain or no trainer arm, is refused."""
    for arms, word in (("plain-fp32,trainer-zero9", "trainer-zero9"), ("plain-fp32", "at least one plain")):
        proc = subprocess.run([sys.executable, "benchmarks/demo_train_speed.py", "--arms", arms, "--work",
                               str(tmp_path / "w")], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and word in proc.stderr, proc.stderr
        assert not (tmp_path / "w").exists()  # refused before the scratch folder or the model
