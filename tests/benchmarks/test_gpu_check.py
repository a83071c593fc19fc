"""benchmarks/gpu_check.py --device cpu --tiny: the prepared GPU check runs end to end on CPU, started
from a directory outside the checkout with its default (relative) work folder and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two single-rank torchrun trainings and a two-round synthesis
def test_tiny_cpu_form_runs_every_part_from_any_directory(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny"],
                          capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report_path = tmp_path / "gpu_check.json"  # the default --out, in the caller's directory
    assert (tmp_path / "gpu_check_work" / "material" / "tokenizer.model").is_file()
    report = json.loads(report_path.read_text())
    assert report["torch"] and report["transformers"] and report["deepspeed"]
    attn = report["attention"]
    assert attn["auto"] == "doc_sdpa" and set(attn["backends"]) == {"doc_sdpa", "doc_flex"}
    for name, row in attn["backends"].items():
        assert row["built_with"] == name  # each model built with its backend, not switched afterwards
        assert row["max_abs_diff"] <= 1e-5, (name, row)  # fp32 on CPU: packed equals per-document
    assert attn["backends"]["doc_sdpa"]["fwd_bwd_ms"] > 0 and attn["backends"]["doc_flex"]["fwd_ms"] > 0
    train = report["training"]
    assert train["peak_flops_measured"] > 0
    assert [(r["zero"], r["attention"]) for r in train["runs"]] == [(3, "auto"), (2, "doc_sdpa")]
    for row in train["runs"]:
        assert row["exit"] == 0 and row["step"] == train["steps"] and row["built_with"] == "doc_sdpa", row
        # MFU > 0 only: on a shared CPU the measured matmul peak and the run see different loads
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["peak_memory_gib"] > 0
    synth = report["synthesis"]
    assert synth["texts"] == 4 and synth["rounds"] == 2 and synth["failures"] == 0
    assert 0 < synth["generated_tokens"] <= 4 * 8 and synth["generated_tokens_per_s"] > 0
    for part in ("attention", "training", "synthesis"):
        assert report[part]["part_wall_s"] > 0
    for heading in ("a. attention", "b. training", "c. synthesis", "doc_sdpa"):
        assert heading in proc.stdout


def test_a_failed_run_is_named_beside_the_others() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    report = {"attention": {"backends": {"doc_sdpa": {"max_abs_diff": 0.0}, "doc_varlen": {"error": "x"}}},
              "training": {"runs": [{"zero": 2, "attention": "doc_flex", "error": "time limit"},
                                    {"zero": 3, "attention": "auto", "tokens_per_s": 1.0}]},
              "synthesis": {"error": "time limit 90 s"}}
    assert gpu_check.failures(report) == ["synthesis", "attention:doc_varlen", "training:zero2:doc_flex"]
