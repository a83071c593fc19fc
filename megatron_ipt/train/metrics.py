"""Throughput, FLOPs/MFU and metric sinks (console, TensorBoard, metrics.jsonl)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from megatron_ipt.io import atomic_write_text
from megatron_ipt.log import get_logger
from megatron_ipt.progress import format_eta

log = get_logger(__name__)

# Dense bf16 peak FLOP/s per device (vendor specs, no sparsity), the most specific name first: the PCIe
# and NVL parts of H100/H200 run at lower clocks and power than the SXM ones.
GPU_PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("H100", 989e12),
                  ("H200", 989e12), ("A100", 312e12), ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12),
                  ("V100", 125e12))


def gpu_peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a device named like ``torch.cuda.get_device_name()``; None when unknown."""
    return next((value for key, value in GPU_PEAK_FLOPS if key in device_name), None)


def matmul_parameters(n_params: int, vocab_size: int, hidden_size: int, tied_embeddings: bool) -> int:
    """Parameters that take part in matmuls: all but the input embedding, whose lookups are not
    matmuls. With tied embeddings that matrix is counted once and is also the LM head, a matmul."""
    return n_params if tied_embeddings else n_params - vocab_size * hidden_size


def flops_per_token(n_params: int, num_layers: int, attn_dim: int, seq_len: int) -> float:
    """Model FLOPs per trained token (the MFU numerator): 6N for the matmul weights plus causal
    attention scores, fwd+bwd. Activation recomputation is not counted: it is overhead, not model work."""
    attention = 6 * num_layers * attn_dim * seq_len  # causal halves 12·L·d·S
    return float(6 * n_params + attention)


def model_flops_per_token(hf_config: Any, n_params: int, seq_len: int) -> float:
    """:func:`flops_per_token` of a transformers model config with ``n_params`` parameters in all."""
    heads = hf_config.num_attention_heads
    attn_dim = heads * (getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads)
    n_matmul = matmul_parameters(n_params, hf_config.vocab_size, hf_config.hidden_size,
                                 hf_config.tie_word_embeddings)
    return flops_per_token(n_matmul, hf_config.num_hidden_layers, attn_dim, seq_len)


def measure_cpu_matmul_flops(n: int = 1024, repeats: int = 8, dtype: torch.dtype = torch.float32) -> float:
    """Measured dense matmul FLOP/s of this process's CPU threads (the MFU baseline on CPU)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def peak_flops(configured: float | None, device_type: str, dtype: torch.dtype) -> float:
    if configured:
        return configured
    if device_type == "cuda":
        name = torch.cuda.get_device_name()
        peak = gpu_peak_flops(name)
        if peak is None:
            peak = gpu_peak_flops("A100")
            log.warning("unknown GPU %r: MFU uses the A100 peak; set logging.peak_flops_per_device", name)
        return peak
    return measure_cpu_matmul_flops(dtype=dtype)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: allocated GPU memory on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class StepWindow:
    """The optimizer steps since the last metrics line: their per-step values as the steps left them
    (device tensors: read with one host sync, at the line), and the training time they took, with
    evaluation and checkpoint time (spent inside :meth:`paused`) left out."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.start = time.perf_counter()
        self.paused_s = 0.0

    def add(self, values: dict[str, Any]) -> None:
        self.steps.append(values)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused_s

    def read(self) -> list[dict[str, float | None]]:
        """Every step's values as host floats (None stays None): one transfer for all tensors."""
        tensors = [v for step in self.steps for v in step.values() if isinstance(v, torch.Tensor)]
        device = tensors[0].device if tensors else None
        host = iter(torch.stack([t.detach().to(device, torch.float64) for t in tensors]).tolist() if tensors else [])
        return [{k: next(host) if isinstance(v, torch.Tensor) else (None if v is None else float(v))
                 for k, v in step.items()} for step in self.steps]


class MetricsWriter:
    """Rank-0 sink: console line, TensorBoard scalars and one JSON object per line in metrics.jsonl."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.tb = None
        self.path = run_dir / "metrics.jsonl"
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> int:
        """Drop records of steps after ``step`` (redone after a resume); returns how many went."""
        if not self.enabled or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record_step = json.loads(line).get("step", 0)
            except (json.JSONDecodeError, AttributeError):
                dropped += 1  # a line torn by a kill mid-write
                continue
            if isinstance(record_step, int) and record_step > step:
                dropped += 1
            else:
                kept.append(line + "\n")
        if dropped:
            atomic_write_text(self.path, "".join(kept))
            log.info("metrics: dropped %d records after step %d from %s (those steps are redone)",
                     dropped, step, self.path)
        return dropped

    def write(self, step: int, kind: str, values: dict[str, Any], total: int | None = None,
              eta_s: float | None = None) -> None:
        """One record; the console line shows ``step/total`` and the ETA when given."""
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": time.time(), **values}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)
            self.tb.flush()
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items() if not isinstance(v, dict))
        where = f"{step}/{total}" if total else str(step)
        if eta_s is not None:
            where += f" (ETA {format_eta(eta_s)})"
        log.info("%s step %s: %s", kind, where, shown)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class StepRecorder:
    """The train side of the metrics: every optimizer step's values go into a :class:`StepWindow`;
    each metrics line turns the window into one ``train`` record (loss, LR, grad norm, throughput,
    FLOPs/MFU, peak memory, samples and tokens per dataset) for the sink, plus one ``tokens/<dataset>``
    TensorBoard scalar per dataset."""

    def __init__(self, sink: MetricsWriter, flops_per_token: float, peak_flops: float, world: int,
                 device: torch.device, total_steps: int) -> None:
        self.sink, self.flops_per_token, self.peak_flops = sink, flops_per_token, peak_flops
        self.world, self.device, self.total_steps = world, device, total_steps
        self.start(0)

    def start(self, step: int) -> None:
        """A run starts at ``step``: the ETA counts the pace of this run's steps only."""
        self.window = StepWindow()
        self.run_start, self.first_step = time.perf_counter(), step

    def add(self, values: dict[str, Any]) -> None:
        self.window.add(values)

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """Time inside is not training time (evaluation, callbacks, checkpoints): kept out of tokens/s."""
        return self.window.paused()

    def record(self, steps: list[dict[str, float | None]], seconds: float, consumed_samples: int,
               tokens_per_dataset: dict[str, int]) -> dict[str, Any]:
        """The ``train`` record of ``steps`` (host values, oldest first) that trained for ``seconds``."""
        last = steps[-1]
        tokens_per_s = sum(s["tokens"] for s in steps) / max(seconds, 1e-9)
        tflops = tokens_per_s * self.flops_per_token / self.world / 1e12
        return {
            "loss": last["loss"],
            "loss_avg": sum(s["loss"] for s in steps) / len(steps),
            "lr": last["lr"],
            # DeepSpeed computes no global norm under ZeRO-0 without clipping: left out there; a real nan
            # norm (a diverged step) is still logged.
            **({"grad_norm": last["grad_norm"]} if last["grad_norm"] is not None else {}),
            "tokens_per_s": tokens_per_s,
            "tflops_per_device": tflops,
            "mfu": tflops * 1e12 / self.peak_flops,
            "peak_memory_gib": peak_memory_bytes(self.device) / 2**30,
            "consumed_samples": consumed_samples,
            "tokens_per_dataset": dict(tokens_per_dataset),
        }

    def write(self, step: int, consumed_samples: int, tokens_per_dataset: dict[str, int]) -> dict[str, Any]:
        """Write the window's record at ``step`` and start the next window; returns the record."""
        seconds = self.window.seconds()
        steps = self.window.read()  # the one host sync of these steps' losses and grad norms
        values = self.record(steps, seconds, consumed_samples, tokens_per_dataset)
        eta_s = (time.perf_counter() - self.run_start) / (step - self.first_step) * (self.total_steps - step)
        self.sink.write(step, "train", values, total=self.total_steps, eta_s=eta_s)
        if self.sink.tb is not None:
            for name, n in tokens_per_dataset.items():
                self.sink.tb.add_scalar(f"tokens/{Path(name).name}", n, step)
        self.window.reset()
        return values


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
