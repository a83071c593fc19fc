"""95% bootstrap intervals over seeds and items, for one model family's scores and for a difference.

A score is a matrix ``runs x items`` (one row per training seed, the same items in every row).
Each bootstrap draw resamples the runs (with replacement) and the items (with replacement, the
same item draw for both sides of a difference, since both sides answered the same items), so the
interval carries the seed-to-seed spread as well as the item sampling. Perplexity is a ratio
(summed loss / summed tokens per text) and is resampled the same way before ``exp``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    runs: int
    items: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "runs": self.runs, "items": self.items}


def _matrix(rows: Sequence[Sequence[float]]) -> np.ndarray:
    m = np.asarray(rows, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty runs x items matrix, got shape {m.shape}")
    return m


def _draws(n: int, size: int, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    return rng.integers(0, n, size=(n_boot, size))


def mean_interval(scores: Sequence[Sequence[float]], n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Mean over runs and items, with its 95% percentile interval."""
    m = _matrix(scores)
    rng = np.random.default_rng(seed)
    runs, items = _draws(m.shape[0], m.shape[0], rng, n_boot), _draws(m.shape[1], m.shape[1], rng, n_boot)
    boot = np.array([m[r][:, i].mean() for r, i in zip(runs, items, strict=True)])
    return Interval(float(m.mean()), *map(float, np.percentile(boot, [2.5, 97.5])), m.shape[0], m.shape[1])


def diff_interval(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], n_boot: int = N_BOOT,
                  seed: int = 0) -> Interval:
    """``mean(a) - mean(b)`` over the same items, with its 95% interval (items paired, runs independent)."""
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"a and b must score the same items: {ma.shape[1]} vs {mb.shape[1]}")
    rng = np.random.default_rng(seed)
    ra, rb = _draws(ma.shape[0], ma.shape[0], rng, n_boot), _draws(mb.shape[0], mb.shape[0], rng, n_boot)
    items = _draws(ma.shape[1], ma.shape[1], rng, n_boot)
    boot = np.array([ma[x][:, i].mean() - mb[y][:, i].mean() for x, y, i in zip(ra, rb, items, strict=True)])
    return Interval(float(ma.mean() - mb.mean()), *map(float, np.percentile(boot, [2.5, 97.5])),
                    min(ma.shape[0], mb.shape[0]), ma.shape[1])


def _ppl(losses: np.ndarray, tokens: np.ndarray) -> float:
    return math.exp(losses.sum() / max(tokens.sum(), 1))


def perplexity_interval(losses: Sequence[Sequence[float]], tokens: Sequence[Sequence[int]], n_boot: int = N_BOOT,
                        seed: int = 0, other: tuple[Sequence[Sequence[float]], Sequence[Sequence[int]]] | None = None
                        ) -> Interval:
    """Token-weighted perplexity (runs x texts of summed loss and token counts) with its 95% interval;
    with ``other``, the difference ``ppl(self) - ppl(other)`` over the same texts."""
    la, ta = _matrix(losses), _matrix(tokens)
    rng = np.random.default_rng(seed)
    items = _draws(la.shape[1], la.shape[1], rng, n_boot)
    ra = _draws(la.shape[0], la.shape[0], rng, n_boot)
    if other is None:
        boot = np.array([_ppl(la[r][:, i], ta[r][:, i]) for r, i in zip(ra, items, strict=True)])
        return Interval(_ppl(la, ta), *map(float, np.percentile(boot, [2.5, 97.5])), la.shape[0], la.shape[1])
    lb, tb = _matrix(other[0]), _matrix(other[1])
    rb = _draws(lb.shape[0], lb.shape[0], rng, n_boot)
    boot = np.array([_ppl(la[x][:, i], ta[x][:, i]) - _ppl(lb[y][:, i], tb[y][:, i])
                     for x, y, i in zip(ra, rb, items, strict=True)])
    return Interval(_ppl(la, ta) - _ppl(lb, tb), *map(float, np.percentile(boot, [2.5, 97.5])),
                    min(la.shape[0], lb.shape[0]), la.shape[1])
