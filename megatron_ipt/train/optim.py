"""AdamW with weight-decay groups, and linear warmup + cosine decay to ``min_lr``."""

from __future__ import annotations

import math

import torch

from megatron_ipt.train.config import OptimConfig


def _shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    # Under ZeRO-3 the local tensor is an empty placeholder; ds_shape is the real shape.
    return tuple(getattr(p, "ds_shape", p.shape))


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Norm weights and biases (anything 1-D) are not decayed."""
    return len(_shape(param)) < 2 or name.endswith(".bias") or "norm" in name.lower()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, skip = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (skip if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # A plain torch AdamW: DeepSpeed's CPU FusedAdam would compile for ~2 minutes at start-up.
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """LR for optimizer step ``step`` (0-based): linear warmup to lr, cosine down to min_lr."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg, total_steps) / cfg.lr)
