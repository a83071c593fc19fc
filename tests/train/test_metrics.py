"""MFU arithmetic (model FLOPs only, the LM head of tied embeddings counted, per-part GPU peaks) and
the step window (tokens/s without evaluation and checkpoint time, one host read per metrics line)."""

from __future__ import annotations

import pytest
import torch

from megatron_ipt.train.metrics import StepWindow, flops_per_token, gpu_peak_flops, matmul_parameters


def test_mfu_counts_model_flops_not_recompute() -> None:
    """6N + 6·L·d·S whether or not activations are recomputed (recompute is overhead, not model work)."""
    assert flops_per_token(1_000_000, 2, 64, 128) == 6 * 1_000_000 + 6 * 2 * 64 * 128


def test_tied_embeddings_keep_the_lm_head_matmul() -> None:
    n_untied = 100 + 2 * 32 * 8  # body + input embedding + LM head (vocab 32, hidden 8)
    assert matmul_parameters(n_untied, 32, 8, tied_embeddings=False) == 100 + 32 * 8  # body + LM head
    n_tied = 100 + 32 * 8  # the one shared matrix is the LM head's matmul
    assert matmul_parameters(n_tied, 32, 8, tied_embeddings=True) == 100 + 32 * 8


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A10", 125e12), ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("Tesla V100-SXM2-32GB", 125e12),
    ("Some New GPU", None),
])
def test_gpu_peak_by_part(name: str, peak: float | None) -> None:
    assert gpu_peak_flops(name) == peak


def test_window_leaves_paused_time_out_and_reads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import megatron_ipt.train.metrics as metrics

    clock = iter([0.0, 10.0, 14.0, 20.0])  # start, pause begins, pause ends, read
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    window = StepWindow()
    window.add({"loss": torch.tensor(2.5, dtype=torch.float64), "grad_norm": torch.tensor(0.5), "lr": 1e-3})
    with window.paused():
        pass
    window.add({"loss": torch.tensor(2.0, dtype=torch.float64), "grad_norm": None, "lr": 2e-3})
    assert window.seconds() == 16.0  # 20 s, less the 4 s of evaluation or checkpoint
    monkeypatch.undo()
    assert window.read() == [{"loss": 2.5, "grad_norm": 0.5, "lr": 1e-3}, {"loss": 2.0, "grad_norm": None, "lr": 2e-3}]
