"""Blends: parsing, proportions, determinism, epochs, cache, fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from megatron_ipt.config import ConfigError
from megatron_ipt.data.blend import Blend, BlendedDataset, BlendError, blend_indices


def test_blend_parse_every_spelling() -> None:
    want = ((0.7, "a"), (0.3, "b"))
    for spec in [
        "0.7 a 0.3 b",  # Megatron's string
        ["0.7", "a", "0.3", "b"],  # the same, split (a command line's nargs)
        [[0.7, "a"], [0.3, "b"]],  # [[w, p], ...] (JSON / YAML)
        ((0.7, "a"), (0.3, "b")),
        [{"weight": 0.7, "prefix": "a"}, {"prefix": "b", "weight": "0.3"}],  # YAML {weight, prefix} mappings
    ]:
        blend = Blend.parse(spec)
        assert blend.entries == want and list(blend) == list(want), spec
        assert blend.weights == (0.7, 0.3) and blend.prefixes == ("a", "b") and len(blend) == 2
    assert Blend.parse("only/prefix").entries == ((1.0, "only/prefix"),)
    assert Blend.parse(Path("only/prefix")).entries == ((1.0, "only/prefix"),)
    assert Blend.parse(["only/prefix"]).entries == ((1.0, "only/prefix"),)
    assert Blend.parse([[2, "a"]]).entries == ((2.0, "a"),)  # weights need not sum to one
    blend = Blend.parse("0.7 a 0.3 b")
    assert Blend.parse(blend) is blend  # parsed once: a Blend passes through
    assert Blend.parse(blend.to_megatron()) == blend == Blend.parse(blend.to_yaml())
    assert blend.to_megatron() == "0.7 a 0.3 b"
    assert blend.to_yaml() == [{"weight": 0.7, "prefix": "a"}, {"weight": 0.3, "prefix": "b"}]
    assert Blend.optional(None) is None and Blend.optional("") is None and Blend.optional([]) is None
    assert Blend.optional("a") == Blend.parse("a")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0.7 a 0.3", "data.train: a blend needs 'weight prefix' pairs, got an odd count: 0.7 a 0.3"),
        ("x a", "data.train: blend weight for a is not a number: 'x'"),
        ([["x", "a"]], "data.train: blend weight for a is not a number: 'x'"),
        ([{"weight": "heavy", "prefix": "a"}], "data.train: blend weight for a is not a number: 'heavy'"),
        ([{"weight": True, "prefix": "a"}], "data.train: blend weight for a is not a number: True"),
        ([[None, "a"]], "data.train: blend weight for a is not a number: None"),
        ("-1 a", "data.train: blend weight for a must be positive, got '-1'"),
        ([[0.5, "a"], [-0.5, "b"]], "data.train: blend weight for b must be positive, got -0.5"),
        ([{"weight": -2, "prefix": "a"}], "data.train: blend weight for a must be positive, got -2"),
        ("0 a 0 b", "data.train: blend weight for a must be positive, got '0'"),  # a zero sum
        ([[0.0, "a"]], "data.train: blend weight for a must be positive, got 0.0"),
        ("nan a", "data.train: blend weight for a must be positive, got 'nan'"),
        ("inf a", "data.train: blend weight for a must be positive, got 'inf'"),
        ([], "data.train: a blend must be a non-empty string or list, got []"),
        ("", "data.train: a blend must be a non-empty string or list, got []"),
        (None, "data.train: a blend must be a non-empty string or list, got None"),
        (3, "data.train: a blend must be a non-empty string or list, got 3"),
        ([{"weight": 1}], "data.train: blend entries need exactly 'weight' and 'prefix', got {'weight': 1}"),
        ([{"weight": 1, "prefix": "a", "extra": 2}], "blend entries need exactly 'weight' and 'prefix'"),
        ([[0.5, "a", "b"]], "data.train: blend pairs must be [weight, prefix], got [0.5, 'a', 'b']"),
        ([[0.5, 3]], "data.train: blend prefix must be a path, got 3"),
        ([[0.5, "a"], "b"], "data.train: a blend list mixes entry forms"),
        ("0.5 a 0.5 a", "data.train: a names the same dataset as a (blend entries 1 and 2); give it once, "
                        "with the weights summed (0.5 + 0.5)"),
        ("0.2 a 0.3 b 0.5 x/../a", "data.train: x/../a names the same dataset as a (blend entries 1 and 3)"),
        ([{"weight": 1, "prefix": "d/a"}, {"weight": 2, "prefix": "d//a"}], "d//a names the same dataset as d/a"),
    ],
)
def test_blend_parse_rejects(spec: object, message: str) -> None:
    with pytest.raises(BlendError) as err:
        Blend.parse(spec, "data.train")
    assert message in str(err.value)
    assert isinstance(err.value, ConfigError)  # command lines report it like any bad config value


def test_blend_prefix_existence_and_blend_file(tmp_path: Path, make_ds) -> None:
    present = str(tmp_path / "present")
    make_ds(Path(present), 3, seed=0)
    absent = str(tmp_path / "absent")
    blend = Blend.parse([[0.5, present], [0.5, absent]])
    assert blend.missing("data.train") == [f"data.train: data prefix '{absent}': missing {absent}.bin, {absent}.idx"]
    with pytest.raises(BlendError, match=f"data.valid: data prefix '{absent}'"):
        blend.check_exists("data.valid")
    assert Blend.parse(present).check_exists().prefixes == (present,)
    Path(absent + ".bin").write_bytes(b"")
    assert blend.missing() == [f"data prefix '{absent}': missing {absent}.idx"]
    f = tmp_path / "blend.yaml"
    f.write_text(yaml.safe_dump({"data": {"train": blend.to_yaml()}}))
    assert Blend.load(f) == blend
    f.write_text(yaml.safe_dump({"data": {"train": [{"weight": -1, "prefix": present}]}}))
    with pytest.raises(BlendError, match=rf"{f}: data.train: blend weight for .* must be positive"):
        Blend.load(f)
    f.write_text("data: {seq_len: 8}\n")
    with pytest.raises(BlendError, match=rf"{f}: no data.train blend"):
        Blend.load(f)


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
    # A longer run has another order (each dataset is shuffled for its own sample count): never the same.
    assert longer.fingerprint != ds.fingerprint
    assert {k: (ds.spec[k], v) for k, v in longer.spec.items() if ds.spec[k] != v} == {"num_samples": (2000, 3000)}
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
