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
    report = {"attention": {"backends": {"doc_sdpa": {"max_abs_diff": 0.0}, "doc_varlen": {"error": "x"}}},
              "training": {"runs": [{"zero": 2, "attention": "doc_flex", "error": "time limit"},
                                    {"zero": 3, "attention": "auto", "tokens_per_s": 1.0}]},
              "synthesis": {"error": "time limit 90 s"}}
    assert _gpu_check().failures(report) == ["synthesis", "attention:doc_varlen", "training:zero2:doc_flex"]


def _gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_check


def test_varlen_gqa_ways_report_what_this_torch_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a torch 2.11-like varlen_attn (no enable_gqa; here one that takes only equal head counts),
    repeating KV heads is timed and passing them as they are is reported as unsupported."""
    from types import SimpleNamespace

    import torch
    import torch.nn.attention.varlen as varlen
    import torch.nn.functional as F

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):  # noqa: ANN001, ANN202
        if k.shape[1] != q.shape[1]:
            raise RuntimeError("number of KV heads differs")
        out = torch.empty_like(q)
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
            out[a:b] = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                                      v[a:b].transpose(0, 1), is_causal=True, scale=scale).transpose(0, 1)
        return out

    monkeypatch.setattr(varlen, "varlen_attn", varlen_attn)
    hf = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    pos = torch.cat([torch.arange(n) for n in (5, 11)])[None]
    cu = torch.tensor([0, 5, 16], dtype=torch.int32)
    got = _gpu_check().varlen_gqa_ways("cpu", torch.float32, hf, pos, cu, 11, 1)
    assert got["enable_gqa_keyword"] is False
    assert got["repeat_kv"]["fwd_bwd_ms"] > 0 and got["repeat_kv"]["max_abs_diff_vs_repeat"] == 0.0
    assert "number of KV heads differs" in got["kv_heads_as_they_are"]["unsupported"]
