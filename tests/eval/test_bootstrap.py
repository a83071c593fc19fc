"""Bootstrap intervals: they cover the mean, widen with noise, and separate real differences only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_ipt.eval.bootstrap import diff_interval, mean_interval, perplexity_interval


def test_mean_interval_covers_the_mean_and_narrows_with_items():
    rng = np.random.default_rng(1)
    small = (rng.random((2, 40)) < 0.6).astype(float)
    large = (rng.random((3, 600)) < 0.6).astype(float)
    a, b = mean_interval(small), mean_interval(large)
    assert a.low <= a.mean <= a.high and b.low <= b.mean <= b.high
    assert (b.high - b.low) < (a.high - a.low) / 2
    assert b.low < 0.6 < b.high and (a.runs, a.items) == (2, 40)


def test_seed_spread_widens_the_interval():
    items = np.tile((np.arange(200) % 2).astype(float), (3, 1))
    same = mean_interval(items)
    shifted = items.copy()
    shifted[0] = 1.0  # one seed far from the others
    assert (mean_interval(shifted).high - mean_interval(shifted).low) > (same.high - same.low)


def test_difference_interval_separates_a_real_gap_and_not_noise():
    rng = np.random.default_rng(2)
    base = (rng.random((3, 400)) < 0.5).astype(float)
    better = np.maximum(base, (rng.random((3, 400)) < 0.3).astype(float))  # paired, clearly higher
    gap = diff_interval(better, base)
    assert gap.mean > 0.1 and gap.excludes_zero()
    noise = diff_interval((rng.random((3, 400)) < 0.5).astype(float), (rng.random((3, 400)) < 0.5).astype(float))
    assert noise.low < 0 < noise.high or abs(noise.mean) < 0.05
    with pytest.raises(ValueError, match="same items"):
        diff_interval(base, base[:, :10])


def test_perplexity_interval_is_token_weighted():
    losses = [[2.0 * 10, 4.0 * 30]]
    tokens = [[10, 30]]
    iv = perplexity_interval(losses, tokens)
    assert iv.mean == pytest.approx(math.exp(140 / 40))
    assert iv.low <= iv.mean <= iv.high
    same = perplexity_interval(losses, tokens, other=(losses, tokens))
    assert same.mean == 0 and same.low == 0 and same.high == 0
