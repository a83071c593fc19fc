"""Throughput, FLOPs/MFU and metric sinks (console, TensorBoard, metrics.jsonl)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from megatron_ipt.io import atomic_write_text
from megatron_ipt.log import get_logger
from megatron_ipt.progress import format_eta

log = get_logger(__name__)

# Dense bf16 peak FLOP/s per device (vendor specs, no sparsity).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10": 125e12, "L40": 181e12, "V100": 125e12}


def flops_per_token(n_params: int, num_layers: int, attn_dim: int, seq_len: int, recompute: bool) -> float:
    """Training FLOPs per token: 6N for the weights plus causal attention scores (fwd+bwd)."""
    weights = (8 if recompute else 6) * n_params
    attention = (8 if recompute else 6) * num_layers * attn_dim * seq_len  # causal halves 12·L·d·S
    return float(weights + attention)


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
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value
        log.warning("unknown GPU %r: MFU uses the A100 peak; set logging.peak_flops_per_device", name)
        return GPU_PEAK_FLOPS["A100"]
    return measure_cpu_matmul_flops(dtype=dtype)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: allocated GPU memory on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
