"""Weighted blends of packed datasets: ``0.7 a 0.3 b`` → one deterministic stream of samples.

Dataset ``d`` with normalised weight ``w_d`` gets its ``k``-th sample at the ideal time
``(k + 0.5) / w_d``; sorting all those times (ties by dataset) interleaves the datasets so that any
prefix of ``n`` samples holds ``n * w_d ± 1`` samples of each. This is vectorised (one ``lexsort``),
deterministic, and cached on disk. Each dataset is packed for exactly the samples it must supply,
which may take several epochs of a small dataset: :meth:`BlendedDataset.report` says how many.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from megatron_ipt.data.indexed import IndexedDataset
from megatron_ipt.data.packing import INDEX_VERSION, PackedDataset, cached_arrays, sizes_digest
from megatron_ipt.log import get_logger

log = get_logger(__name__)

Blend = list[tuple[float, str]]


class BlendError(ValueError):
    """A blend spec that cannot be parsed or used."""


def parse_blend(spec: Any) -> Blend:
    """Accept ``"0.7 a 0.3 b"``, ``"a"``, ``["0.7", "a", ...]``, ``[[0.7, "a"], ...]``, ``[{"weight", "prefix"}]``."""
    if isinstance(spec, str | Path):
        spec = str(spec).split()
    if not isinstance(spec, list | tuple) or not spec:
        raise BlendError(f"blend must be a non-empty string or list, got {spec!r}")
    if all(isinstance(x, dict) for x in spec):
        try:
            pairs = [(float(x["weight"]), str(x["prefix"])) for x in spec]
        except (KeyError, TypeError, ValueError) as err:
            raise BlendError(f"blend entries need 'weight' and 'prefix': {spec!r}") from err
    elif all(isinstance(x, list | tuple) for x in spec):
        try:
            pairs = [(float(w), str(p)) for w, p in spec]
        except (TypeError, ValueError) as err:
            raise BlendError(f"blend pairs must be (weight, prefix): {spec!r}") from err
    else:
        items = [str(x) for x in spec]
        if len(items) == 1:
            pairs = [(1.0, items[0])]
        elif len(items) % 2:
            raise BlendError(f"blend needs 'weight prefix' pairs, got an odd count: {' '.join(items)}")
        else:
            try:
                pairs = [(float(items[i]), items[i + 1]) for i in range(0, len(items), 2)]
            except ValueError as err:
                raise BlendError(f"blend weight is not a number in {' '.join(items)!r}") from err
    for w, p in pairs:
        if not np.isfinite(w) or w <= 0:
            raise BlendError(f"blend weight for {p} must be positive, got {w}")
    return pairs


def blend_indices(weights: np.ndarray, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index, dataset_sample_index) of length ``num_samples`` for normalised ``weights``."""
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    times, ids, ks = [], [], []
    for d, w in enumerate(weights):
        n = int(np.ceil(w * num_samples)) + 1
        k = np.arange(n, dtype=np.int64)
        times.append((k + 0.5) / w)
        ids.append(np.full(n, d, dtype=np.int16))
        ks.append(k)
    t, i, k = np.concatenate(times), np.concatenate(ids), np.concatenate(ks)
    order = np.lexsort((i, t))[:num_samples]
    return i[order], k[order]


class BlendedDataset:
    """``num_samples`` packed samples drawn from ``blend`` by weight; ``sample["dataset_id"]`` = blend position."""

    def __init__(
        self,
        blend: Any,
        seq_len: int,
        num_samples: int | None = None,
        seed: int = 1234,
        shuffle: bool = True,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.blend = parse_blend(blend)
        self.seq_len = int(seq_len)
        self.seed = seed
        self.shuffle = shuffle
        weights = np.array([w for w, _ in self.blend], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.indexed = [IndexedDataset(p) for _, p in self.blend]
        if num_samples is None:  # one pass over the blend's tokens
            num_samples = max(sum(ds.n_tokens for ds in self.indexed) // self.seq_len, 1)
        self.num_samples = int(num_samples)
        self.cache_dir = Path(cache_dir) if cache_dir else Path(self.blend[0][1]).parent / "index-cache"
        self.fingerprint = self._fingerprint()
        arrays = cached_arrays(
            self.cache_dir,
            "blend",
            f"{self.fingerprint}-{self.num_samples}",
            lambda: dict(
                zip(
                    ("dataset_index", "dataset_sample_index"),
                    blend_indices(self.weights, self.num_samples),
                    strict=True,
                )
            ),
        )
        self.dataset_index, self.dataset_sample_index = (
            arrays["dataset_index"],
            arrays["dataset_sample_index"],
        )
        self.counts = np.bincount(self.dataset_index, minlength=len(self.blend))
        self.datasets = [
            PackedDataset(
                p,
                seq_len,
                max(int(c), 1),
                seed=seed + d,
                shuffle=shuffle,
                cache_dir=self.cache_dir,
                dataset_id=d,
            )
            for d, ((_, p), c) in enumerate(zip(self.blend, self.counts, strict=True))
        ]

    def _fingerprint(self) -> str:
        """Hash of prefixes, document counts/lengths, weights, seed, seq_len, shuffle: stored in checkpoints.

        The sample count is left out so a longer run over the same data keeps the same fingerprint.
        """
        desc = {
            "version": INDEX_VERSION,
            "datasets": [
                {
                    "prefix": str(Path(ds.prefix).resolve()),
                    "docs": len(ds),
                    "tokens": ds.n_tokens,
                    "sizes": sizes_digest(ds),
                }
                for ds in self.indexed
            ],
            "weights": [round(float(w), 12) for w in self.weights],
            "seed": self.seed,
            "seq_len": self.seq_len,
            "shuffle": self.shuffle,
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples})")
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]

    def report(self) -> list[dict]:
        """Per dataset: weight, samples, tokens drawn, documents, tokens per epoch, epochs."""
        return [
            {
                "prefix": ds.prefix,
                "weight": round(float(w), 6),
                "samples": int(c),
                "tokens": int(c) * self.seq_len,
                "documents": len(ds.ds),
                "tokens_per_epoch": ds.tokens_per_epoch,
                "epochs": round(int(c) * self.seq_len / ds.tokens_per_epoch, 3),
            }
            for ds, w, c in zip(self.datasets, self.weights, self.counts, strict=True)
        ]

    def log_report(self) -> None:
        for r in self.report():
            log.info(
                "blend %s: weight %.3f, %d samples, %.2f epochs of %d tokens",
                r["prefix"],
                r["weight"],
                r["samples"],
                r["epochs"],
                r["tokens_per_epoch"],
            )

    def __getstate__(self) -> dict:
        keep = ("blend", "seq_len", "num_samples", "seed", "shuffle", "cache_dir")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
