"""Blends: parsing, proportions, determinism, epochs, cache, fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_ipt.data.blend import BlendedDataset, BlendError, blend_indices, parse_blend


def test_parse_blend_forms() -> None:
    want = [(0.7, "a"), (0.3, "b")]
    assert parse_blend("0.7 a 0.3 b") == want
    assert parse_blend(["0.7", "a", "0.3", "b"]) == want
    assert parse_blend([[0.7, "a"], [0.3, "b"]]) == want
    assert parse_blend([{"weight": 0.7, "prefix": "a"}, {"weight": 0.3, "prefix": "b"}]) == want
    assert parse_blend("only/prefix") == [(1.0, "only/prefix")]
    for bad, msg in [
        ("0.7 a 0.3", "odd count"),
        ("x a", "not a number"),
        ("-1 a", "positive"),
        ([], "non-empty"),
    ]:
        with pytest.raises(BlendError, match=msg):
            parse_blend(bad)


def test_blend_indices_proportions_and_prefix_balance() -> None:
    w = np.array([0.5, 0.3, 0.15, 0.05])
    d, k = blend_indices(w, 100_000)
    counts = np.bincount(d, minlength=4)
    assert np.all(np.abs(counts / 100_000 - w) < 0.01)
    for n in (100, 1000, 33_333):  # any prefix is balanced within one sample per dataset
        assert np.all(np.abs(np.bincount(d[:n], minlength=4) - n * w) <= 1.0 + 1e-9)
    for j in range(4):  # each dataset's samples are taken in order 0, 1, 2, ...
        assert np.array_equal(k[d == j], np.arange(counts[j]))
    d2, k2 = blend_indices(w, 100_000)
    assert np.array_equal(d, d2) and np.array_equal(k, k2)


def test_blend_indices_at_scale() -> None:
    """4M samples (a 1B-token blend at seq_len 256) in one vectorised call; timing lives in benchmarks/."""
    d, k = blend_indices(np.array([0.6, 0.3, 0.1]), 4_000_000)
    assert d.size == k.size == 4_000_000
    assert np.all(np.abs(np.bincount(d) / 4_000_000 - [0.6, 0.3, 0.1]) < 1e-5)


def test_blended_dataset(tmp_path: Path, make_ds) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    make_ds(big, 300, seed=0, base=0)
    make_ds(small, 20, seed=1, base=1_000_000)
    blend = f"0.6 {big} 0.4 {small}"
    ds = BlendedDataset(blend, seq_len=16, num_samples=2000, seed=7, cache_dir=tmp_path / "cache")
    ids = np.array([ds[i]["dataset_id"] for i in range(len(ds))])
    assert abs(ids.mean() - 0.4) < 0.01
    for i in range(0, 2000, 97):  # samples come from the dataset they claim
        toks = ds[i]["input_ids"]
        assert ((toks >= 1_000_000) == bool(ds[i]["dataset_id"])).all()
    report = {r["prefix"]: r for r in ds.report()}
    assert report[str(small)]["epochs"] > 10  # the small dataset is repeated many times
    assert report[str(big)]["samples"] + report[str(small)]["samples"] == 2000
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    again = BlendedDataset(blend, seq_len=16, num_samples=2000, seed=7, cache_dir=tmp_path / "cache")
    assert again.fingerprint == ds.fingerprint
    assert all(np.array_equal(ds[i]["input_ids"], again[i]["input_ids"]) for i in range(0, 2000, 31))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == mtimes  # cache reused
    longer = BlendedDataset(blend, seq_len=16, num_samples=3000, seed=7, cache_dir=tmp_path / "cache")
    assert longer.fingerprint == ds.fingerprint  # same data spec, longer run
    for other in (
        BlendedDataset(f"0.5 {big} 0.5 {small}", 16, 2000, seed=7, cache_dir=tmp_path / "cache"),
        BlendedDataset(blend, 16, 2000, seed=8, cache_dir=tmp_path / "cache"),
        BlendedDataset(blend, 32, 2000, seed=7, cache_dir=tmp_path / "cache"),
    ):
        assert other.fingerprint != ds.fingerprint


def test_fingerprint_changes_with_data(tmp_path: Path, make_ds) -> None:
    make_ds(tmp_path / "a", 30, seed=0)
    fp = BlendedDataset(str(tmp_path / "a"), 8, 100, cache_dir=tmp_path / "c").fingerprint
    make_ds(tmp_path / "a", 31, seed=0)  # rewritten with one more document
    assert BlendedDataset(str(tmp_path / "a"), 8, 100, cache_dir=tmp_path / "c").fingerprint != fp
