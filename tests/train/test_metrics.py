"""MFU arithmetic (model FLOPs only, the LM head of tied embeddings counted, per-part GPU peaks), the
step window (tokens/s without evaluation and checkpoint time, one host read per metrics line) and the
train record built from it (its keys, values and TensorBoard tags)."""

from __future__ import annotations

import pytest
import torch

from megatron_ipt.train.metrics import (
    MetricsWriter,
    StepRecorder,
    StepWindow,
    flops_per_token,
    gpu_peak_flops,
    matmul_parameters,
    model_flops_per_token,
)


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


def test_flops_of_a_model_config_use_its_head_dim_and_tied_head() -> None:
    from transformers import LlamaConfig

    # head_dim 16 with 4 heads: an attention width of 64, not the hidden size of 48
    hf = LlamaConfig(vocab_size=100, hidden_size=48, num_attention_heads=4, head_dim=16, num_hidden_layers=3,
                     tie_word_embeddings=False)
    assert model_flops_per_token(hf, 10_000, 32) == 6 * (10_000 - 100 * 48) + 6 * 3 * 64 * 32
    hf.tie_word_embeddings, hf.head_dim = True, None  # no head_dim: hidden_size / heads
    assert model_flops_per_token(hf, 10_000, 32) == 6 * 10_000 + 6 * 3 * 48 * 32


def test_train_record_throughput_mfu_and_losses(tmp_path) -> None:  # noqa: ANN001
    recorder = StepRecorder(MetricsWriter(tmp_path, True, False), flops_per_token=3e9, peak_flops=2e12, world=4,
                            device=torch.device("cpu"), total_steps=10)
    steps = [{"loss": 3.0, "grad_norm": 1.0, "lr": 1e-3, "tokens": 1000.0},
             {"loss": 2.0, "grad_norm": 0.5, "lr": 2e-3, "tokens": 3000.0}]
    record = recorder.record(steps, seconds=2.0, consumed_samples=64, tokens_per_dataset={"a/b": 7})
    assert list(record) == ["loss", "loss_avg", "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "mfu",
                            "peak_memory_gib", "consumed_samples", "tokens_per_dataset"]
    assert record["loss"] == 2.0 and record["loss_avg"] == 2.5 and record["lr"] == 2e-3
    assert record["grad_norm"] == 0.5
    assert record["tokens_per_s"] == 2000.0  # 4000 tokens (all ranks) in 2 s
    assert record["tflops_per_device"] == pytest.approx(2000 * 3e9 / 4 / 1e12)  # 1.5 TFLOP/s on each rank
    assert record["mfu"] == pytest.approx(1.5e12 / 2e12)
    assert record["peak_memory_gib"] > 0
    assert record["consumed_samples"] == 64 and record["tokens_per_dataset"] == {"a/b": 7}
    steps[-1]["grad_norm"] = None  # no global norm (ZeRO-0 without clipping): no key
    assert "grad_norm" not in recorder.record(steps, 2.0, 64, {})
    steps[-1]["grad_norm"] = float("nan")  # a diverged step's norm is logged
    assert "grad_norm" in recorder.record(steps, 2.0, 64, {})


def test_train_line_writes_the_record_and_tensorboard_tags(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import json

    class Board:
        def __init__(self) -> None:
            self.scalars: dict[str, tuple[float, int]] = {}

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars[tag] = (value, step)

        def flush(self) -> None:
            pass

    sink = MetricsWriter(tmp_path, True, False)
    sink.tb = board = Board()
    recorder = StepRecorder(sink, flops_per_token=1e9, peak_flops=1e12, world=1, device=torch.device("cpu"),
                            total_steps=4)
    recorder.start(2)
    recorder.add({"loss": torch.tensor(4.0, dtype=torch.float64), "grad_norm": torch.tensor(2.0), "lr": 0.1,
                  "tokens": 500.0})
    recorder.add({"loss": torch.tensor(2.0, dtype=torch.float64), "grad_norm": torch.tensor(1.0), "lr": 0.2,
                  "tokens": 500.0})
    monkeypatch.setattr(recorder.window, "seconds", lambda: 4.0)
    written = recorder.write(4, consumed_samples=8, tokens_per_dataset={"/data/pubmed_text_document": 1000})
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["step"] == 4 and row["kind"] == "train" and row["tokens_per_s"] == 250.0
    assert row["loss_avg"] == 3.0 and row["mfu"] == pytest.approx(250 * 1e9 / 1e12)
    assert {k: v for k, v in row.items() if k not in ("step", "kind", "time")} == written
    numeric = {f"train/{k}" for k, v in written.items() if isinstance(v, (int, float))}
    assert set(board.scalars) == numeric | {"tokens/pubmed_text_document"}
    assert board.scalars["tokens/pubmed_text_document"] == (1000, 4) and board.scalars["train/lr"] == (0.2, 4)
    assert recorder.window.steps == []  # the next line starts a new window
