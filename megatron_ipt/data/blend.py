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
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megatron_ipt.config import ConfigError
from megatron_ipt.data.indexed import IndexedDataset, missing_files
from megatron_ipt.data.packing import INDEX_VERSION, PackedDataset, cached_arrays, sizes_digest
from megatron_ipt.log import get_logger

log = get_logger(__name__)

class BlendError(ConfigError):
    """A blend spec that cannot be parsed or used (names the config key it came from)."""


def _weight(value: Any, prefix: str, where: str) -> float:
    if isinstance(value, bool):
        raise BlendError(f"{where}: blend weight for {prefix} is not a number: {value!r}")
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise BlendError(f"{where}: blend weight for {prefix} is not a number: {value!r}") from None
    if not math.isfinite(w) or w <= 0:  # a zero weight would never be drawn: say so instead
        raise BlendError(f"{where}: blend weight for {prefix} must be positive, got {value!r}")
    return w


def _prefix(value: Any, where: str) -> str:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise BlendError(f"{where}: blend prefix must be a path, got {value!r}")
    return str(value)


def _check_distinct(entries: list[tuple[float, str]], where: str) -> None:
    """Each dataset once: a prefix named twice (``A`` and ``x/../A`` too) would be sampled from two
    independent shuffles, repeating its samples early, instead of by its summed weight."""
    seen: dict[str, int] = {}
    for i, (_, prefix) in enumerate(entries):
        first = seen.setdefault(os.path.realpath(prefix), i)
        if first != i:
            earlier = entries[first][1]
            raise BlendError(f"{where}: {prefix} names the same dataset as {earlier} (blend entries {first + 1} "
                             f"and {i + 1}); give it once, with the weights summed "
                             f"({entries[first][0]:g} + {entries[i][0]:g})")


@dataclass(frozen=True)
class Blend:
    """A validated blend: ``(weight, prefix)`` entries with finite, positive weights (so their sum is
    too). Made by :meth:`parse` from any spelling a config or command line uses."""

    entries: tuple[tuple[float, str], ...]

    @classmethod
    def parse(cls, spec: Any, where: str = "blend") -> Blend:
        """Accept a :class:`Blend`, one prefix, Megatron's ``"0.3 A 0.7 B"`` (also as a list of
        strings), ``[[w, prefix], ...]`` and YAML lists of ``{weight, prefix}`` mappings.

        ``where`` (a config key, a file) starts every error message.
        """
        if isinstance(spec, Blend):
            return spec
        if isinstance(spec, str | Path):
            spec = str(spec).split()
        if not isinstance(spec, list | tuple) or not spec:
            raise BlendError(f"{where}: a blend must be a non-empty string or list, got {spec!r}")
        if all(isinstance(x, dict) for x in spec):
            entries = []
            for x in spec:
                if set(x) != {"weight", "prefix"}:
                    raise BlendError(f"{where}: blend entries need exactly 'weight' and 'prefix', got {x!r}")
                p = _prefix(x["prefix"], where)
                entries.append((_weight(x["weight"], p, where), p))
        elif all(isinstance(x, list | tuple) for x in spec):
            entries = []
            for x in spec:
                if len(x) != 2:
                    raise BlendError(f"{where}: blend pairs must be [weight, prefix], got {x!r}")
                p = _prefix(x[1], where)
                entries.append((_weight(x[0], p, where), p))
        elif any(isinstance(x, dict | list | tuple) for x in spec):
            raise BlendError(f"{where}: a blend list mixes entry forms: {spec!r}")
        else:
            items = [str(x) for x in spec]
            if len(items) == 1:
                entries = [(1.0, _prefix(items[0], where))]
            elif len(items) % 2:
                raise BlendError(f"{where}: a blend needs 'weight prefix' pairs, got an odd count: {' '.join(items)}")
            else:
                entries = [(_weight(items[i], items[i + 1], where), _prefix(items[i + 1], where))
                           for i in range(0, len(items), 2)]
        _check_distinct(entries, where)
        return cls(tuple(entries))

    @classmethod
    def load(cls, path: str | Path) -> Blend:
        """The ``data.train`` blend of a YAML file such as ``build_corpora``'s ``blend.yaml``."""
        import yaml

        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise BlendError(f"{path}: cannot read the blend file ({err})") from err
        train = doc.get("data", {}).get("train") if isinstance(doc, dict) and isinstance(doc.get("data"), dict) else None
        if train is None:
            raise BlendError(f"{path}: no data.train blend in it")
        return cls.parse(train, f"{path}: data.train")

    @classmethod
    def optional(cls, spec: Any, where: str = "blend") -> Blend | None:
        """None for an unset blend (``None``, ``""``, ``[]``), else :meth:`parse`."""
        return None if spec is None or (isinstance(spec, str | list | tuple) and not spec) else cls.parse(spec, where)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(w for w, _ in self.entries)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(p for _, p in self.entries)

    def __iter__(self) -> Iterator[tuple[float, str]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def missing(self, where: str = "") -> list[str]:
        """One problem line per prefix whose ``.bin``/``.idx`` is not there (empty: all exist)."""
        lead = f"{where}: " if where else ""
        out = []
        for p in dict.fromkeys(self.prefixes):
            files = missing_files(p)
            if files:
                out.append(f"{lead}data prefix {p!r}: missing {', '.join(files)}")
        return out

    def check_exists(self, where: str = "blend") -> Blend:
        """This blend, or a :class:`BlendError` naming every missing file."""
        problems = self.missing(where)
        if problems:
            raise BlendError("; ".join(problems))
        return self

    def to_megatron(self) -> str:
        """Megatron's spelling: ``"0.3 A 0.7 B"``."""
        return " ".join(f"{w} {p}" for w, p in self.entries)

    def to_yaml(self) -> list[dict[str, Any]]:
        """The YAML form: a list of ``{weight, prefix}`` mappings."""
        return [{"weight": w, "prefix": p} for w, p in self.entries]


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
        self.blend = Blend.parse(blend)
        self.seq_len = int(seq_len)
        self.seed = seed
        self.shuffle = shuffle
        weights = np.array(self.blend.weights, dtype=np.float64)
        self.weights = weights / weights.sum()
        self.indexed = [IndexedDataset(p) for p in self.blend.prefixes]
        if num_samples is None:  # one pass over the blend's tokens
            num_samples = max(sum(ds.n_tokens for ds in self.indexed) // self.seq_len, 1)
        self.num_samples = int(num_samples)
        self.cache_dir = Path(cache_dir) if cache_dir else Path(self.blend.prefixes[0]).parent / "index-cache"
        self.spec = self._spec()
        self.fingerprint = hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:16]
        arrays = cached_arrays(
            self.cache_dir,
            "blend",
            self.fingerprint,
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

    def _spec(self) -> dict[str, Any]:
        """What decides the sample order: prefixes, document counts/lengths, weights, seed, seq_len,
        shuffle and the sample count. Its hash is ``fingerprint``; both are stored in checkpoints.

        The sample count is part of it: each dataset is packed and shuffled for exactly the samples it
        supplies, so a longer run over the same data has another order and must not pass for the same.
        """
        return {
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
            "num_samples": self.num_samples,
        }

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
