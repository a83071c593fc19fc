"""The trainer's view of the data core: a map-style sequence of packed samples for a blend.

``build_samples(data_cfg, split)`` returns an object with ``len()``, ``[i]`` -> contract sample
(``input_ids``, ``labels``, ``loss_mask``, ``position_ids``, ``cu_seqlens``, ``dataset_id``),
``fingerprint`` (str) and ``dataset_names`` (list, indexed by ``dataset_id``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from megatron_ipt.config import ConfigError
from megatron_ipt.train.config import DataConfig


def parse_blend(spec: Any, where: str) -> list[tuple[float, str]]:
    """``"0.7 a 0.3 b"`` / ``[0.7, a, 0.3, b]`` / ``[a, b]`` / ``a`` -> [(weight, prefix)]."""
    items = spec.split() if isinstance(spec, str) else list(spec)
    if not items:
        raise ConfigError(f"{where}: empty blend")
    if len(items) == 1:
        return [(1.0, str(items[0]))]
    try:
        float(items[0])
        weighted = True
    except (TypeError, ValueError):
        weighted = False
    if not weighted:
        return [(1.0, str(p)) for p in items]
    if len(items) % 2:
        raise ConfigError(f"{where}: a weighted blend needs weight/prefix pairs, got {len(items)} items")
    out = []
    for w, p in zip(items[::2], items[1::2], strict=True):
        try:
            out.append((float(w), str(p)))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: weight {w!r} is not a number") from err
    return out


def check_prefixes(blend: list[tuple[float, str]], where: str) -> None:
    for _, prefix in blend:
        for ext in (".bin", ".idx"):
            if not Path(prefix + ext).is_file():
                raise ConfigError(f"{where}: indexed dataset {prefix}{ext} not found")


def build_samples(cfg: DataConfig, split: str) -> Any:
    spec = cfg.train if split == "train" else cfg.valid
    where = f"data.{split}"
    blend = parse_blend(spec, where)
    check_prefixes(blend, where)
    return _StreamPacked(blend, cfg.seq_len, cfg.seed if split == "train" else cfg.seed + 1)


class _StreamPacked:
    """Interim packer (replaced by the data core's loader): each dataset's token stream cut in
    seq_len+1 windows; positions restart after each document end; blend by weighted interleave."""

    def __init__(self, blend: list[tuple[float, str]], seq_len: int, seed: int) -> None:
        from megatron_ipt.data.indexed import IndexedDataset

        self.seq_len = seq_len
        self.dataset_names = [p for _, p in blend]
        self.streams = []
        h = hashlib.sha256(f"{seq_len}:{seed}".encode())
        for w, prefix in blend:
            ds = IndexedDataset(prefix)
            toks = np.asarray(ds.tokens if not callable(ds.tokens) else ds.tokens(), dtype=np.int64)
            starts = np.zeros(len(toks), dtype=bool)
            starts[np.cumsum(np.asarray(ds.sizes))[:-1]] = True
            starts[0] = True
            self.streams.append((toks, starts, (len(toks) - 1) // seq_len))
            h.update(f"{w}:{prefix}".encode())
            h.update(Path(prefix + ".idx").read_bytes())
        self.fingerprint = h.hexdigest()[:16]
        weights = np.array([w for w, _ in blend], dtype=np.float64)
        counts = [n for _, _, n in self.streams]
        rng = np.random.default_rng(seed)
        n_total = sum(counts)
        order = rng.choice(len(blend), size=n_total, p=weights / weights.sum())
        cursor = [0] * len(blend)
        self.index = []
        for d in order:
            self.index.append((int(d), cursor[d] % max(1, counts[d])))
            cursor[d] += 1

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        d, k = self.index[i]
        toks, starts, _ = self.streams[d]
        a = k * self.seq_len
        window = toks[a : a + self.seq_len + 1]
        st = starts[a : a + self.seq_len].copy()
        st[0] = True
        doc_start_idx = np.flatnonzero(st)
        pos = np.arange(self.seq_len) - np.repeat(doc_start_idx, np.diff(np.append(doc_start_idx, self.seq_len)))
        return {
            "input_ids": window[:-1],
            "labels": window[1:],
            "loss_mask": np.ones(self.seq_len, dtype=np.float32),
            "position_ids": pos,
            "cu_seqlens": np.append(doc_start_idx, self.seq_len).astype(np.int32),
            "dataset_id": d,
        }
