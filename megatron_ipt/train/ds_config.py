"""DeepSpeed config = the ZeRO-specific JSON in ds_configs/ + values from the training config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_ipt import resources
from megatron_ipt.config import ConfigError
from megatron_ipt.train.config import TrainConfig

# Keys the training config owns; a ds_configs/ file that sets them would be a second source of truth.
OWNED_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler",
)


def load_ds_json(path: str | Path) -> dict[str, Any]:
    """The DeepSpeed JSON at ``path`` (from the cwd, else the shipped ``ds_configs/`` file it names)."""
    path = resources.resolve(path)
    if not path.is_file():
        raise ConfigError(f"ds_config: file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    clash = [k for k in OWNED_KEYS if k in data]
    if clash:
        raise ConfigError(f"{path}: sets {clash[0]!r}, which comes from the training config; remove it there")
    return data


def build_ds_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The full DeepSpeed config dict for this run on ``world_size`` ranks."""
    ds = load_ds_json(cfg.ds_config)
    ds.update(
        train_batch_size=cfg.global_batch_size,
        train_micro_batch_size_per_gpu=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_plan(world_size).grad_accum,
        gradient_clipping=cfg.optim.grad_clip,
        bf16={"enabled": cfg.precision == "bfloat16"},
        steps_per_print=10**9,  # our own logger reports
    )
    ds.setdefault("zero_optimization", {"stage": 0})
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
