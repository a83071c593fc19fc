"""Packed samples: no token lost, shared boundary tokens, document bookkeeping, masks, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_ipt.data.packing import PackedDataset, build_packing_index


def expected_bookkeeping(tokens: np.ndarray, doc_of: np.ndarray, pos_in_doc: np.ndarray) -> tuple:
    """Independent derivation: a document starts where the document id changes (or at 0)."""
    S = tokens.size - 1
    starts = [0] + [i for i in range(1, S) if doc_of[i] != doc_of[i - 1] or pos_in_doc[i] == 0]
    positions = np.zeros(S, dtype=np.int64)
    for i in range(1, S):
        positions[i] = 0 if i in starts else positions[i - 1] + 1
    return np.array(starts + [S], dtype=np.int32), positions


@pytest.mark.parametrize("seq_len", [7, 64])
def test_no_token_lost_and_boundaries(small_dataset, seq_len: int) -> None:
    prefix, docs = small_dataset
    stream = np.concatenate(docs)
    ds = PackedDataset(prefix, seq_len, shuffle=False)
    assert len(ds) == (stream.size - 1) // seq_len
    inputs = np.concatenate([ds[i]["input_ids"] for i in range(len(ds))])
    assert np.array_equal(inputs, stream[: inputs.size])
    for i in range(len(ds)):
        s = ds[i]
        assert s["input_ids"].shape == s["labels"].shape == (seq_len,)
        assert np.array_equal(s["labels"][:-1], s["input_ids"][1:])
        if i + 1 < len(ds):  # neighbours share one boundary token
            assert s["labels"][-1] == ds[i + 1]["input_ids"][0]
        toks = np.append(s["input_ids"], s["labels"][-1])
        cu, pos = expected_bookkeeping(toks, toks // 1000, toks % 1000)
        assert np.array_equal(s["cu_seqlens"], cu) and s["cu_seqlens"].dtype == np.int32
        assert np.array_equal(s["position_ids"], pos)
        # the label that begins another document is masked, every other label counts
        crosses = (s["labels"] % 1000 == 0) & (s["labels"] // 1000 != s["input_ids"] // 1000)
        assert np.array_equal(s["loss_mask"], (~crosses).astype(np.float32))
        assert s["input_ids"].dtype == s["labels"].dtype == s["position_ids"].dtype == np.int64
        assert s["loss_mask"].dtype == np.float32


def test_shuffled_epochs_cover_every_token(small_dataset) -> None:
    prefix, docs = small_dataset
    total = sum(d.size for d in docs)
    seq_len = 16
    n = 3 * total // seq_len  # about three epochs
    ds = PackedDataset(prefix, seq_len, num_samples=n, seed=5)
    assert 2.9 < ds.epochs <= 3.01
    seen = np.concatenate([ds[i]["input_ids"] for i in range(n)])
    counts = np.unique(seen, return_counts=True)[1]
    assert seen.size == n * seq_len and counts.min() >= 2 and counts.max() <= 4
    # same seed → same samples; another seed → another order
    again = PackedDataset(prefix, seq_len, num_samples=n, seed=5)
    other = PackedDataset(prefix, seq_len, num_samples=n, seed=6)
    assert all(np.array_equal(ds[i]["input_ids"], again[i]["input_ids"]) for i in range(0, n, 17))
    assert any(not np.array_equal(ds[i]["input_ids"], other[i]["input_ids"]) for i in range(10))


def test_loss_mask_twin(tmp_path: Path, make_ds) -> None:
    prefix = tmp_path / "masked"
    make_ds(prefix, 50, seed=1, mask=True)
    ds = PackedDataset(prefix, 32, shuffle=False)
    for i in range(len(ds)):
        s = ds[i]
        labels = s["labels"]
        twin = (labels % 1000 % 3 != 0).astype(np.float32)  # the mask written for each label token
        new_doc = labels % 1000 == 0
        assert np.array_equal(s["loss_mask"], np.where(new_doc, 0.0, twin))


def test_index_is_cached_and_reused(small_dataset, tmp_path: Path) -> None:
    prefix, _ = small_dataset
    cache = tmp_path / "cache"
    a = PackedDataset(prefix, 16, seed=3, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert any(f.endswith("shuffle_idx.npy") for f in files) and any(f.endswith(".done") for f in files)
    b = PackedDataset(prefix, 16, seed=3, cache_dir=cache)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes  # loaded, not rebuilt
    assert not b.shuffle_idx.flags.writeable  # a read-only map of the cached file
    assert np.array_equal(a[3]["input_ids"], b[3]["input_ids"])
    PackedDataset(prefix, 16, seed=4, cache_dir=cache)  # another key, other files
    assert len(list(cache.iterdir())) == 2 * len(files)


def test_pickle_reopens_without_copying(small_dataset) -> None:
    import pickle

    prefix, _ = small_dataset
    ds = PackedDataset(prefix, 16)
    blob = pickle.dumps(ds)
    assert len(blob) < 2000
    assert np.array_equal(pickle.loads(blob)[5]["labels"], ds[5]["labels"])


def test_empty_documents_add_no_boundary(tmp_path: Path) -> None:
    from megatron_ipt.data.indexed import IndexedDatasetWriter

    with IndexedDatasetWriter(tmp_path / "e", np.int32) as w:
        for doc in ([1, 2, 3], [], [4, 5], [], [], [6, 7, 8, 9]):
            w.add_document(doc)
    ds = PackedDataset(tmp_path / "e", 8, shuffle=False)
    s = ds[0]
    assert s["input_ids"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert s["cu_seqlens"].tolist() == [0, 3, 5, 8] and s["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]


def test_build_index_vectorised_scale() -> None:
    """About 100M tokens of document sizes: index arrays consistent with the sizes."""
    sizes = np.random.default_rng(0).integers(1, 600, size=330_000).astype(np.int32)
    idx = build_packing_index(sizes, 2048, int(sizes.sum()) // 2048, seed=1)
    doc_idx, sample_idx = idx["doc_idx"], idx["sample_idx"]
    ends = np.cumsum(sizes[doc_idx].astype(np.int64))
    starts = ends - sizes[doc_idx]
    pos = starts[sample_idx[:, 0]] + sample_idx[:, 1]
    assert np.array_equal(pos, np.arange(len(sample_idx)) * 2048)
    assert (sample_idx[:, 1] < sizes[doc_idx[sample_idx[:, 0]]]).all()
    assert sorted(idx["shuffle_idx"][:1000]) != list(idx["shuffle_idx"][:1000])


def test_too_small_dataset(tmp_path: Path) -> None:
    from megatron_ipt.data.indexed import IndexedDatasetWriter

    with IndexedDatasetWriter(tmp_path / "one", np.int32) as w:
        w.add_document([7])
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        PackedDataset(tmp_path / "one", 4)
