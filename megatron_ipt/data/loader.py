"""Training and evaluation loaders over blended, packed datasets (the trainer codes against this).

API::

    from megatron_ipt.data.loader import build_train_loader, build_eval_loader

    train = build_train_loader(
        blend="0.7 data/a_text_document 0.3 data/b_text_document",  # or [(0.7, "a"), ...] / YAML list
        seq_len=2048, micro_batch_size=4, num_samples=train_iters * global_batch_size,
        dp_rank=rank, dp_size=world, seed=1234, consumed_samples=0, cache_dir=None, num_workers=0,
    )
    for batch in train:          # one micro-batch per step of this rank; stops when samples run out
        batch["input_ids"]       # int64 (B, S)
        batch["labels"]          # int64 (B, S), next tokens
        batch["loss_mask"]       # float32 (B, S)
        batch["position_ids"]    # int64 (B, S), restart at 0 at each document start
        batch["cu_seqlens"]      # int32 (n+1,), document boundaries flattened over the batch (b*S offsets)
        batch["max_seqlen"]      # int, longest document piece in the batch
        batch["dataset_ids"]     # int64 (B,), position of each sample's dataset in the blend
    train.consumed_samples       # samples consumed by ALL data-parallel ranks so far
    sd = train.state_dict()      # {"consumed_samples", "fingerprint"}: store in checkpoints
    train.load_state_dict(sd)    # resume exactly; a different blend fingerprint raises
    train.fingerprint            # hash of prefixes, document sizes, weights, seed, seq_len, sample count
    train.spec                   # the description behind it (what a checkpoint compares, key by key)
    train.report()               # per dataset: weight, samples, epochs

    valid = build_eval_loader(blend_or_prefix, seq_len, micro_batch_size, num_samples, dp_rank, dp_size)
    for batch in valid: ...      # the same fixed, unshuffled samples on every pass

Sharding is Megatron's: each micro-step consumes ``micro_batch_size * dp_size`` consecutive samples of
the blended stream and rank ``r`` takes slice ``r``. ``consumed_samples`` counts only batches actually
handed out, so prefetching never skips or repeats data across a save/resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatron_ipt.data.blend import BlendedDataset


def collate(samples: list[dict]) -> dict[str, Any]:
    """Stack samples into a batch; ``cu_seqlens`` becomes one int32 vector over the flattened batch."""
    S = samples[0]["input_ids"].shape[0]
    cu = [np.asarray(samples[0]["cu_seqlens"], dtype=np.int64)]
    for b, s in enumerate(samples[1:], 1):
        cu.append(np.asarray(s["cu_seqlens"][1:], dtype=np.int64) + b * S)
    cu_all = np.concatenate(cu)
    return {
        "input_ids": torch.from_numpy(np.stack([s["input_ids"] for s in samples])),
        "labels": torch.from_numpy(np.stack([s["labels"] for s in samples])),
        "loss_mask": torch.from_numpy(np.stack([s["loss_mask"] for s in samples])),
        "position_ids": torch.from_numpy(np.stack([s["position_ids"] for s in samples])),
        "cu_seqlens": torch.from_numpy(cu_all.astype(np.int32)),
        "max_seqlen": int(np.diff(cu_all).max()),
        "dataset_ids": torch.tensor([s["dataset_id"] for s in samples], dtype=torch.int64),
    }


class ShardedBatchSampler:
    """Micro-batches of sample indices for one data-parallel rank, from ``consumed_samples`` on."""

    def __init__(
        self, total: int, micro_batch_size: int, dp_rank: int, dp_size: int, consumed_samples: int = 0
    ):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside [0, {dp_size})")
        if consumed_samples % (micro_batch_size * dp_size):
            raise ValueError(
                f"consumed_samples {consumed_samples} is not a multiple of micro_batch_size*dp_size "
                f"({micro_batch_size * dp_size})"
            )
        self.total, self.mbs, self.rank, self.world = total, micro_batch_size, dp_rank, dp_size
        self.consumed_samples = consumed_samples

    @property
    def step_samples(self) -> int:
        return self.mbs * self.world

    def __len__(self) -> int:
        return max(self.total - self.consumed_samples, 0) // self.step_samples

    def __iter__(self) -> Iterator[list[int]]:
        start = self.consumed_samples
        while start + self.step_samples <= self.total:
            first = start + self.rank * self.mbs
            yield list(range(first, first + self.mbs))
            start += self.step_samples


class TrainLoader:
    """Iterable over this rank's micro-batches; tracks ``consumed_samples`` for checkpoints."""

    def __init__(
        self,
        dataset: BlendedDataset,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        consumed_samples: int = 0,
        num_workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size
        self.num_workers = num_workers
        self.consumed_samples = consumed_samples
        ShardedBatchSampler(len(dataset), micro_batch_size, dp_rank, dp_size, consumed_samples)  # validates

    @property
    def fingerprint(self) -> str:
        return self.dataset.fingerprint

    @property
    def spec(self) -> dict:
        """The blend's description behind ``fingerprint`` (a checkpoint stores it to say what changed)."""
        return self.dataset.spec

    def report(self) -> list[dict]:
        return self.dataset.report()

    def __len__(self) -> int:
        """Micro-steps left."""
        return max(len(self.dataset) - self.consumed_samples, 0) // (self.micro_batch_size * self.dp_size)

    def __iter__(self) -> Iterator[dict]:
        sampler = ShardedBatchSampler(
            len(self.dataset), self.micro_batch_size, self.dp_rank, self.dp_size, self.consumed_samples
        )
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=False,
        )
        for batch in loader:
            self.consumed_samples += sampler.step_samples
            yield batch

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        fp = state.get("fingerprint")
        if fp is not None and fp != self.fingerprint:
            raise ValueError(
                f"checkpoint data fingerprint {fp} differs from this blend's {self.fingerprint}: "
                "the datasets, weights, seed, seq_len or sample count changed, so resuming would not continue the same stream"
            )
        ShardedBatchSampler(
            len(self.dataset), self.micro_batch_size, self.dp_rank, self.dp_size, state["consumed_samples"]
        )
        self.consumed_samples = int(state["consumed_samples"])


def build_train_loader(
    blend: Any,
    seq_len: int,
    micro_batch_size: int,
    num_samples: int | None = None,
    *,
    dp_rank: int = 0,
    dp_size: int = 1,
    seed: int = 1234,
    consumed_samples: int = 0,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
) -> TrainLoader:
    """A :class:`TrainLoader` over ``num_samples`` shuffled packed samples of ``blend`` (default: one pass)."""
    ds = BlendedDataset(blend, seq_len, num_samples, seed=seed, shuffle=True, cache_dir=cache_dir)
    return TrainLoader(ds, micro_batch_size, dp_rank, dp_size, consumed_samples, num_workers)


class EvalLoader:
    """The same fixed micro-batches on every pass (no shuffle, no state)."""

    def __init__(self, dataset: BlendedDataset, micro_batch_size: int, dp_rank: int = 0, dp_size: int = 1):
        self.dataset, self.micro_batch_size, self.dp_rank, self.dp_size = (
            dataset,
            micro_batch_size,
            dp_rank,
            dp_size,
        )

    def __len__(self) -> int:
        return len(self.dataset) // (self.micro_batch_size * self.dp_size)

    def __iter__(self) -> Iterator[dict]:
        sampler = ShardedBatchSampler(len(self.dataset), self.micro_batch_size, self.dp_rank, self.dp_size)
        for idx in sampler:
            yield collate([self.dataset[i] for i in idx])


def build_eval_loader(
    blend: Any,
    seq_len: int,
    micro_batch_size: int,
    num_samples: int,
    *,
    dp_rank: int = 0,
    dp_size: int = 1,
    cache_dir: str | Path | None = None,
) -> EvalLoader:
    """Evaluation over the first ``num_samples`` packed samples of a held-out prefix or blend, in order."""
    ds = BlendedDataset(blend, seq_len, num_samples, seed=0, shuffle=False, cache_dir=cache_dir)
    return EvalLoader(ds, micro_batch_size, dp_rank, dp_size)
