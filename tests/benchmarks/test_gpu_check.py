"""benchmarks/gpu_check.py --device cpu --tiny: the prepared GPU check runs end to end on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two single-rank DeepSpeed trainings and a two-round synthesis
def test_tiny_cpu_form_runs_every_part(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--work", str(tmp_path / "work"), "--out", str(report_path)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    attn = report["attention"]
    assert attn["auto"] == "doc_sdpa" and set(attn["backends"]) == {"doc_sdpa", "doc_flex"}
    for name, row in attn["backends"].items():
        assert row["max_abs_diff"] <= 1e-5, (name, row)  # fp32 on CPU: packed equals per-document
    assert attn["backends"]["doc_sdpa"]["fwd_bwd_ms"] > 0 and attn["backends"]["doc_flex"]["fwd_ms"] > 0
    train = report["training"]
    assert train["peak_flops_measured"] > 0
    for stage in ("zero2", "zero3"):
        row = train[stage]
        assert row["exit"] == 0 and row["step"] == train["steps"], row
        # MFU > 0 only: on a shared CPU the measured matmul peak and the run see different loads
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["peak_memory_gib"] > 0
    synth = report["synthesis"]
    assert synth["texts"] == 4 and synth["rounds"] == 2 and synth["failures"] == 0
    assert 0 < synth["generated_tokens"] <= 4 * 8 and synth["generated_tokens_per_s"] > 0
    for heading in ("a. attention", "b. training", "c. synthesis", "zero3"):
        assert heading in proc.stdout
