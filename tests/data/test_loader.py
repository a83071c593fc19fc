"""Loaders: batch layout, data-parallel sharding, exact resume from consumed_samples, eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ipt.data.loader import ShardedBatchSampler, build_eval_loader, build_train_loader


@pytest.fixture()
def blend(tmp_path: Path, make_ds) -> str:
    make_ds(tmp_path / "a", 120, seed=0, base=0)
    make_ds(tmp_path / "b", 60, seed=1, base=1_000_000, mask=True)
    return f"0.7 {tmp_path / 'a'} 0.3 {tmp_path / 'b'}"


def test_batch_layout(blend: str, tmp_path: Path) -> None:
    loader = build_train_loader(
        blend, seq_len=32, micro_batch_size=3, num_samples=60, cache_dir=tmp_path / "c"
    )
    batch = next(iter(loader))
    for key in ("input_ids", "labels", "position_ids"):
        assert batch[key].shape == (3, 32) and batch[key].dtype == torch.int64
    assert batch["loss_mask"].dtype == torch.float32 and batch["loss_mask"].shape == (3, 32)
    assert batch["dataset_ids"].shape == (3,) and batch["dataset_ids"].dtype == torch.int64
    cu = batch["cu_seqlens"]
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == 96
    assert torch.all(cu[1:] > cu[:-1])
    flat_pos = batch["position_ids"].reshape(-1)
    assert torch.equal(torch.nonzero(flat_pos == 0).flatten().int(), cu[:-1])  # restarts = boundaries
    assert batch["max_seqlen"] == int((cu[1:] - cu[:-1]).max())
    assert loader.consumed_samples == 3


def test_sharding_covers_stream_once(blend: str, tmp_path: Path) -> None:
    world, mbs = 3, 2
    seen = []
    for rank in range(world):
        loader = build_train_loader(
            blend, 16, mbs, num_samples=60, dp_rank=rank, dp_size=world, cache_dir=tmp_path / "c"
        )
        assert len(loader) == 10
        seen.append([b["input_ids"] for b in loader])
        assert loader.consumed_samples == 60
    ref = build_train_loader(blend, 16, 1, num_samples=60, cache_dir=tmp_path / "c").dataset
    for step in range(10):
        for rank in range(world):
            for j in range(mbs):
                want = ref[step * world * mbs + rank * mbs + j]["input_ids"]
                assert np.array_equal(seen[rank][step][j].numpy(), want)


def test_resume_continues_exactly(blend: str, tmp_path: Path) -> None:
    full = [b["input_ids"] for b in build_train_loader(blend, 16, 2, 40, dp_size=2, cache_dir=tmp_path / "c")]
    first = build_train_loader(blend, 16, 2, 40, dp_size=2, cache_dir=tmp_path / "c")
    it = iter(first)
    head = [next(it)["input_ids"] for _ in range(4)]
    state = first.state_dict()
    assert state["consumed_samples"] == 16
    second = build_train_loader(blend, 16, 2, 40, dp_size=2, cache_dir=tmp_path / "c")
    second.load_state_dict(state)
    tail = [b["input_ids"] for b in second]
    assert len(head) + len(tail) == len(full) == 10
    assert all(torch.equal(a, b) for a, b in zip(head + tail, full, strict=True))
    other = build_train_loader(blend, 16, 2, 40, dp_size=2, seed=99, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="fingerprint"):
        other.load_state_dict(state)


def test_worker_processes_give_same_batches(blend: str, tmp_path: Path) -> None:
    a = [b["labels"] for b in build_train_loader(blend, 16, 4, 24, cache_dir=tmp_path / "c")]
    b = [b["labels"] for b in build_train_loader(blend, 16, 4, 24, cache_dir=tmp_path / "c", num_workers=1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and len(a) == 6


def test_sampler_rejects_bad_state() -> None:
    with pytest.raises(ValueError, match="multiple"):
        ShardedBatchSampler(100, 4, 0, 2, consumed_samples=5)
    with pytest.raises(ValueError, match="dp_rank"):
        ShardedBatchSampler(100, 4, 2, 2)


def test_eval_loader_fixed(tmp_path: Path, make_ds) -> None:
    make_ds(tmp_path / "valid", 40, seed=3)
    ev = build_eval_loader(str(tmp_path / "valid"), 16, 2, num_samples=10, cache_dir=tmp_path / "c")
    first = [b["input_ids"] for b in ev]
    second = [b["input_ids"] for b in ev]
    assert len(first) == 5 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    from megatron_ipt.data.indexed import IndexedDataset

    ds = IndexedDataset(tmp_path / "valid")
    stream = np.concatenate([ds.get(i) for i in range(len(ds))])
    assert np.array_equal(torch.cat(first).reshape(-1).numpy(), stream[:160])  # in order, unshuffled
