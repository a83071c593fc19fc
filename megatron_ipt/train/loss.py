"""Token-weighted masked next-token loss, exact under gradient accumulation and data parallelism.

The step loss is sum(loss * mask) over every micro-batch of every rank divided by the step's total
mask count. Each micro-batch's backward gets its own sum divided by that global count, scaled back
up by the averaging DeepSpeed applies (1/grad_accum locally, 1/world across ranks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, S, V) logits and (B, S) next-token labels -> (B, S) cross-entropy in fp32."""
    b, s, v = logits.shape
    return F.cross_entropy(logits.float().reshape(b * s, v), labels.reshape(b * s), reduction="none").reshape(b, s)


def masked_loss_sum(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    return (token_losses(logits, labels) * loss_mask).sum()


def global_token_count(micro_batches: list[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Loss tokens of this optimizer step over all micro-batches and all ranks (all-reduced)."""
    import torch.distributed as dist

    n = torch.zeros((), dtype=torch.float64, device=device)
    for mb in micro_batches:
        n += mb["loss_mask"].to(torch.float64).sum().to(device)
    if dist.is_initialized():
        dist.all_reduce(n)
    return n


def backward_scale(grad_accum: int, world_size: int) -> float:
    """Factor undoing DeepSpeed's gradient averaging over accumulation steps and ranks."""
    return float(grad_accum * world_size)
