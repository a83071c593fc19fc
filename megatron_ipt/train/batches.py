"""Global-order micro-batches for one rank: the sampler position is a global sample count.

Optimizer step t consumes samples [t*G, (t+1)*G) of the packed-sample sequence (G = global batch);
micro-batch m of rank r takes the slice starting at t*G + (m*W + r)*B. The position does not depend
on the number of ranks W, so a run resumed on another rank count continues the same data stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack contract samples into a (B, S) batch; ``cu_seqlens`` flattened over the batch."""
    out: dict[str, torch.Tensor] = {}
    for key in ("input_ids", "labels", "position_ids"):
        out[key] = torch.stack([torch.as_tensor(s[key], dtype=torch.int64) for s in samples])
    out["loss_mask"] = torch.stack([torch.as_tensor(s["loss_mask"], dtype=torch.float32) for s in samples])
    seq = out["input_ids"].shape[1]
    cus = [torch.as_tensor(s["cu_seqlens"], dtype=torch.int32)[:-1] + i * seq for i, s in enumerate(samples)]
    out["cu_seqlens"] = torch.cat([*cus, torch.tensor([len(samples) * seq], dtype=torch.int32)])
    out["dataset_id"] = torch.tensor([int(s["dataset_id"]) for s in samples], dtype=torch.int64)
    return out


class GlobalBatchSampler:
    """Yields this rank's micro-batches step by step from a map-style packed-sample dataset."""

    def __init__(self, samples: Any, micro_batch: int, global_batch: int, rank: int, world: int,
                 consumed_samples: int = 0) -> None:
        if global_batch % (micro_batch * world):
            raise ValueError(f"global batch {global_batch} not divisible by {micro_batch} x {world} ranks")
        if len(samples) == 0:
            raise ValueError("the packed dataset has no samples")
        self.samples = samples
        self.micro_batch = micro_batch
        self.global_batch = global_batch
        self.rank = rank
        self.world = world
        self.grad_accum = global_batch // (micro_batch * world)
        self.consumed_samples = consumed_samples

    def _sample(self, index: int) -> dict[str, Any]:
        return self.samples[index % len(self.samples)]  # wrap: another pass over the data

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """The grad_accum micro-batches of the next optimizer step for this rank."""
        base = self.consumed_samples
        micro = []
        for m in range(self.grad_accum):
            start = base + (m * self.world + self.rank) * self.micro_batch
            micro.append(collate([self._sample(i) for i in range(start, start + self.micro_batch)]))
        self.consumed_samples += self.global_batch
        return micro

    def fixed_batches(self, n_micro: int) -> list[dict[str, torch.Tensor]]:
        """The first ``n_micro`` micro-batches of this rank (the same every call: held-out eval)."""
        out = []
        for m in range(n_micro):
            start = (m * self.world + self.rank) * self.micro_batch
            out.append(collate([self._sample(i) for i in range(start, start + self.micro_batch)]))
        return out
