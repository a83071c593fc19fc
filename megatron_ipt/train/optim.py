"""AdamW with weight-decay groups, chosen by device, and linear warmup + cosine decay to ``min_lr``.

- CUDA: torch's fused AdamW (one kernel for all parameters of a group);
- ZeRO optimizer offload to CPU on a CUDA machine: DeepSpeed's ``DeepSpeedCPUAdam`` (its C++/AVX op is
  built on first use, about two minutes once per machine);
- CPU runs (tests, the demo): plain ``torch.optim.AdamW``, because DeepSpeed's CPU Adam would compile
  at start-up there for the same two minutes (see the DeepSpeed-on-CPU notes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from megatron_ipt.log import get_logger

log = get_logger(__name__)

OPTIMIZERS = ("torch_adamw", "torch_fused_adamw", "deepspeed_cpu_adam")


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak learning rate (after warm-up)
    min_lr: float = 3e-5  # cosine decay floor
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not on norms and biases)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # global gradient-norm clip

    def build(self, model: torch.nn.Module, total_steps: int, device_type: str = "cpu",
              ds_config: dict[str, Any] | None = None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimizer (:func:`build_optimizer`) and its warmup + cosine schedule over ``total_steps``."""
        optimizer = build_optimizer(model, self, device_type, ds_config)
        return optimizer, build_scheduler(optimizer, self, total_steps)


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


def offloads_optimizer(ds_config: dict[str, Any] | None) -> bool:
    """The DeepSpeed config keeps optimizer states on the CPU (ZeRO ``offload_optimizer``)."""
    zero = (ds_config or {}).get("zero_optimization", {})
    return str(zero.get("offload_optimizer", {}).get("device", "none")).lower() == "cpu"


def choose_optimizer(device_type: str, ds_config: dict[str, Any] | None = None) -> tuple[str, str]:
    """(optimizer, why) for a run on ``device_type`` under ``ds_config``."""
    if device_type != "cuda":
        return "torch_adamw", f"{device_type} run: plain AdamW (DeepSpeed's CPU Adam would compile at start-up)"
    if offloads_optimizer(ds_config):
        return "deepspeed_cpu_adam", "ZeRO offloads optimizer states to CPU: DeepSpeed's CPU Adam"
    return "torch_fused_adamw", "CUDA: torch fused AdamW"


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str = "cpu",
                    ds_config: dict[str, Any] | None = None) -> torch.optim.Optimizer:
    """AdamW over the decay groups, in the implementation :func:`choose_optimizer` picks (logged)."""
    kind, why = choose_optimizer(device_type, ds_config)
    log.info("optimizer: %s (%s)", kind, why)
    groups = param_groups(model, cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    if kind == "deepspeed_cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=kind == "torch_fused_adamw")


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """LR for optimizer step ``step`` (0-based): linear warmup to lr, cosine down to min_lr."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg, total_steps) / cfg.lr)
