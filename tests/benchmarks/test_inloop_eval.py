"""``benchmarks/inloop_eval.py --tiny``: a run with in-loop evaluation and one without; the overhead
share is printed and written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_benchmark_reports_the_share(tmp_path, smollm2_dir):
    out = tmp_path / "inloop.json"
    proc = subprocess.run([sys.executable, "benchmarks/inloop_eval.py", "--tiny", "--threads=1",
                           "--work", str(tmp_path / "w"), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["evaluations"] > 0 and res["wall_with"] > res["evaluations"] and res["wall_without"] > 0
    assert res["share_of_training"] == pytest.approx(res["evaluations"] / (res["wall_with"] - res["evaluations"]))
    assert "of training time" in proc.stdout
