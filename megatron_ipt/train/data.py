"""The trainer's side of the data core: its data config and batch plan, step-wise micro-batches,
checked before compute.

``TrainStream`` hands out the grad-accumulation micro-batches of one optimizer step for this rank
from the data core's ``TrainLoader`` (Megatron sharding over a global sample order), so its
``consumed_samples`` is a global position that stays valid when the number of ranks changes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from megatron_ipt.config import ConfigError
from megatron_ipt.data.blend import Blend
from megatron_ipt.data.indexed import IndexedDataset, max_token_id
from megatron_ipt.data.loader import TrainLoader, build_eval_loader, build_train_loader


@dataclass(frozen=True)
class BatchPlan:
    """The batch arithmetic of a run on ``world`` ranks, computed and checked once."""

    micro_batch: int  # samples per rank per forward
    global_batch: int  # samples per optimizer step over all ranks
    world: int  # data-parallel ranks
    grad_accum: int  # micro-batches per rank per optimizer step
    steps: int  # optimizer steps of the whole run

    @property
    def total_samples(self) -> int:
        return self.steps * self.global_batch


@dataclass
class DataConfig:
    # Blend of indexed-dataset prefixes: a prefix, "0.7 a 0.3 b", [[0.7, a], [0.3, b]] or [{weight, prefix}, ...].
    train: Any = None
    # Held-out blend for periodic evaluation (null: no evaluation).
    valid: Any = None
    seq_len: int = 2048  # tokens per training sample
    tokenizer: str = "mistral"  # the tokenizer the data was built with (mistral, .model, HF dir, .gguf)
    allow_tokenizer_mismatch: bool = False  # train on datasets whose recorded tokenizer differs (warned)
    seed: int = 1234  # seed of the blend and sample shuffling
    # Where the data core caches blend/packing indices (null: next to the first train prefix).
    cache_dir: str | None = None
    num_workers: int = 0  # DataLoader worker processes per rank

    @functools.cached_property
    def train_blend(self) -> Blend:
        """``train`` parsed once per config: every reader of the run takes this one value."""
        return Blend.parse(self.train, "data.train")

    @functools.cached_property
    def valid_blend(self) -> Blend | None:
        return Blend.optional(self.valid, "data.valid")

    def blends(self) -> dict[str, Blend]:
        """The blends that are set, by config key."""
        valid = self.valid_blend
        return {"data.train": self.train_blend, **({"data.valid": valid} if valid is not None else {})}

    def build_train(self, batch: BatchPlan, rank: int, consumed_samples: int = 0) -> TrainStream:
        """This rank's stream of optimizer steps over ``train``, from ``consumed_samples`` on."""
        return TrainStream.from_config(self, batch, rank, consumed_samples)

    def build_valid(self, batch: BatchPlan, eval_iters: int, rank: int) -> list[dict[str, Any]]:
        """This rank's fixed held-out micro-batches over ``valid`` (the same at every evaluation)."""
        return eval_batches(self, batch, eval_iters, rank)


def check_data_tokenizer(cfg: DataConfig, tokenizer: Any) -> None:
    """Refuse (before any compute) train/valid datasets whose recorded tokenizer is not ``data.tokenizer``."""
    from megatron_ipt.data.provenance import check_datasets

    override = None if cfg.allow_tokenizer_mismatch else "data.allow_tokenizer_mismatch"
    for where, blend in cfg.blends().items():
        blend.check_exists(where)  # the one check of the run's files
        check_datasets(blend.prefixes, tokenizer, where, override, against="data.tokenizer")


def check_datasets(blend: Blend, where: str, vocab_size: int) -> None:
    """Every dataset of the blend (its files checked by :func:`check_data_tokenizer`) opens, holds
    documents, and has no token id outside the vocabulary (an id >= vocab_size would fail
    mid-training, or train on the wrong rows)."""
    for prefix in dict.fromkeys(blend.prefixes):
        ds = IndexedDataset(prefix)
        if len(ds) == 0 or ds.n_tokens < 2:
            raise ConfigError(f"{where}: {prefix}: the dataset holds no documents ({ds.n_tokens} tokens)")
        top = max_token_id(ds)
        if top >= vocab_size:
            raise ConfigError(f"{where}: {prefix}: token id {top} is outside the tokenizer's vocabulary of "
                              f"{vocab_size} (tokenized with another tokenizer?)")


def dataset_ids(batch: dict[str, Any]) -> torch.Tensor:
    return batch["dataset_ids"] if "dataset_ids" in batch else batch["dataset_id"]


class TrainStream:
    """``next_step()`` -> this rank's ``grad_accum`` micro-batches of the next optimizer step."""

    def __init__(self, blend: Blend, loader: TrainLoader, grad_accum: int) -> None:
        self.blend = blend
        self.dataset_names = list(blend.prefixes)
        self.loader = loader
        self.grad_accum = grad_accum
        self._it: Iterator[dict[str, Any]] | None = None

    @classmethod
    def from_config(cls, cfg: DataConfig, batch: BatchPlan, rank: int, consumed_samples: int = 0) -> TrainStream:
        blend = cfg.train_blend
        loader = build_train_loader(
            blend, cfg.seq_len, batch.micro_batch, batch.total_samples, dp_rank=rank, dp_size=batch.world,
            seed=cfg.seed, consumed_samples=consumed_samples, cache_dir=cfg.cache_dir, num_workers=cfg.num_workers,
        )
        if rank == 0:
            loader.dataset.log_report()  # the samples and epochs each dataset supplies over the whole run
        return cls(blend, loader, batch.grad_accum)

    @property
    def fingerprint(self) -> str:
        return self.loader.fingerprint

    @property
    def consumed_samples(self) -> int:
        return self.loader.consumed_samples

    def next_step(self) -> list[dict[str, Any]]:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return [next(self._it) for _ in range(self.grad_accum)]
        except StopIteration as err:
            raise RuntimeError(f"data ran out after {self.consumed_samples} samples") from err


def eval_batches(cfg: DataConfig, batch: BatchPlan, n_micro: int, rank: int) -> list[dict[str, Any]]:
    """The fixed held-out micro-batches of this rank (the same at every evaluation)."""
    blend = cfg.valid_blend
    if blend is None:
        raise ConfigError("data.valid is not set: no held-out batches to build")
    loader = build_eval_loader(blend, cfg.seq_len, batch.micro_batch, n_micro * batch.micro_batch * batch.world,
                               dp_rank=rank, dp_size=batch.world, cache_dir=cfg.cache_dir)
    return list(loader)
