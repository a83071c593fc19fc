"""MMIDIDX writer/reader: round trips, byte compatibility (spec reader + megatron-core), faults."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_ipt.data.indexed import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    best_dtype,
    write_index,
)
from megatron_ipt.data.preprocess import preprocess


def spec_read(prefix: str | Path) -> tuple[np.dtype, list[np.ndarray], dict]:
    """An independent reader written from the Megatron-LM format description (struct + file reads)."""
    codes = {1: "u1", 2: "i1", 3: "<i2", 4: "<i4", 5: "<i8", 6: "<f8", 7: "<f4", 8: "<u2"}
    raw = Path(f"{prefix}.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", raw[9:34])
    assert version == 1
    dtype = np.dtype(codes[code])
    off = 34
    lengths = struct.unpack(f"<{n_seq}i", raw[off : off + 4 * n_seq])
    off += 4 * n_seq
    pointers = struct.unpack(f"<{n_seq}q", raw[off : off + 8 * n_seq])
    off += 8 * n_seq
    doc_idx = struct.unpack(f"<{n_doc}q", raw[off : off + 8 * n_doc])
    assert off + 8 * n_doc == len(raw)
    data = Path(f"{prefix}.bin").read_bytes()
    docs = []
    for length, ptr in zip(lengths, pointers, strict=True):
        docs.append(np.frombuffer(data[ptr : ptr + length * dtype.itemsize], dtype=dtype))
    return dtype, docs, {"doc_idx": list(doc_idx), "pointers": list(pointers)}


def random_docs(n: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(1, 60))) for _ in range(n)]


def write(prefix: Path, docs: list[np.ndarray], dtype) -> None:
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)


@pytest.mark.parametrize("vocab", [32000, 100_000])
def test_round_trip_and_spec_reader(tmp_path: Path, vocab: int) -> None:
    docs = random_docs(300, vocab)
    dtype = best_dtype(vocab)
    assert dtype == (np.uint16 if vocab < 65500 else np.int32)
    write(tmp_path / "ds", docs, dtype)
    ds = IndexedDataset(tmp_path / "ds")
    assert len(ds) == len(docs) and ds.dtype == dtype
    assert ds.n_tokens == sum(d.size for d in docs)
    for i, d in enumerate(docs):
        assert np.array_equal(ds.get(i), d)
    assert np.array_equal(ds.get(5, offset=1, length=2), docs[5][1:3])
    sdtype, sdocs, meta = spec_read(tmp_path / "ds")
    assert sdtype == dtype and meta["doc_idx"] == list(range(len(docs) + 1))
    for a, b in zip(sdocs, docs, strict=True):
        assert np.array_equal(a, b)
    assert not list(tmp_path.glob("*.partial"))


def test_megatron_core_reads_every_document(tmp_path: Path, mistral_tokenizer) -> None:
    """megatron-core 0.16.1's own IndexedDataset, in a subprocess (its import stubs packages)."""
    cases = {"u16": (random_docs(200, 32000, 1), np.uint16), "i32": (random_docs(200, 150_000, 2), np.int32)}
    for name, (docs, dtype) in cases.items():
        write(tmp_path / name, docs, dtype)
    # preprocess() output and its loss-mask twin, too.
    seg = [
        {"special": "bos", "loss": False},
        {"text": "context", "loss": False},
        {"text": "answer", "loss": True},
    ]
    records = [{"text": f"document {i} " * (i % 5 + 1)} for i in range(50)] + [{"segments": seg}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    s = preprocess(
        tmp_path / "in.jsonl", tmp_path / "pre", mistral_tokenizer, workers=0, append_eod=True, progress=False
    )
    for name in ("pre_text_document", "pre_text_document_lossmask"):
        ds = IndexedDataset(tmp_path / name)
        cases[name] = ([ds.get(i) for i in range(len(ds))], ds.dtype)
    assert s["lossmask_prefix"] == str(tmp_path / "pre_text_document_lossmask")
    script = Path(__file__).with_name("megatron_core_reader.py")
    out = subprocess.run(
        [sys.executable, str(script), *(str(tmp_path / n) for n in cases)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for name, (docs, _) in cases.items():
        got = result[str(tmp_path / name)]
        assert got["len"] == len(docs)
        assert got["docs"] == [d.tolist() for d in docs]


def test_pointers_are_64_bit(tmp_path: Path) -> None:
    """Byte offsets beyond 4 GiB (int32 tokens, 3 x 2**30 per document) survive in the index."""
    lengths = np.full(3, 2**30, dtype=np.int32)
    write_index(tmp_path / "big.idx", np.dtype(np.int32), lengths)
    raw = (tmp_path / "big.idx").read_bytes()
    pointers = np.frombuffer(raw, dtype="<i8", count=3, offset=34 + 12)
    assert pointers.tolist() == [0, 2**32, 2**33]


def test_token_too_big_for_dtype(tmp_path: Path) -> None:
    w = IndexedDatasetWriter(tmp_path / "x", np.uint16)
    with pytest.raises(IndexedDatasetError, match="does not fit uint16"):
        w.add_document([1, 70000])
    w.abort()
    w = IndexedDatasetWriter(tmp_path / "y", np.uint16, max_token=99)
    with pytest.raises(IndexedDatasetError, match="token id 100"):
        w.add_document([100])
    w.abort()
    assert not list(tmp_path.iterdir())


def test_bin_size_mismatch(tmp_path: Path) -> None:
    write(tmp_path / "ds", random_docs(10, 1000), np.uint16)
    with open(tmp_path / "ds.bin", "ab") as fh:
        fh.write(b"\0\0")
    with pytest.raises(IndexedDatasetError, match="inconsistent"):
        IndexedDataset(tmp_path / "ds")


def test_wrong_magic_version_and_truncation(tmp_path: Path) -> None:
    write(tmp_path / "ds", random_docs(10, 1000), np.uint16)
    idx = tmp_path / "ds.idx"
    good = idx.read_bytes()
    idx.write_bytes(b"XXXXXXXXX" + good[9:])
    with pytest.raises(IndexedDatasetError, match="bad magic"):
        IndexedDataset(tmp_path / "ds")
    idx.write_bytes(good[:9] + struct.pack("<Q", 2) + good[17:])
    with pytest.raises(IndexedDatasetError, match="version 2"):
        IndexedDataset(tmp_path / "ds")
    idx.write_bytes(good[:-8])
    with pytest.raises(IndexedDatasetError, match="truncated"):
        IndexedDataset(tmp_path / "ds")
    idx.write_bytes(good[:17] + b"\x63" + good[18:])
    with pytest.raises(IndexedDatasetError, match="dtype code 99"):
        IndexedDataset(tmp_path / "ds")
    (tmp_path / "ds.bin").unlink()
    with pytest.raises(IndexedDatasetError, match="missing"):
        IndexedDataset(tmp_path / "ds")


def test_resume_truncates_to_checkpoint(tmp_path: Path) -> None:
    docs = random_docs(20, 1000)
    w = IndexedDatasetWriter(tmp_path / "ds", np.uint16)
    for d in docs[:10]:
        w.add_document(d)
    state = w.state()
    for d in docs[10:13]:  # written after the checkpoint, then "killed"
        w.add_document(d)
    w.close()
    w = IndexedDatasetWriter(tmp_path / "ds", np.uint16, resume=state)
    for d in docs[10:]:
        w.add_document(d)
    w.finalize()
    ds = IndexedDataset(tmp_path / "ds")
    assert [ds.get(i).tolist() for i in range(len(ds))] == [d.tolist() for d in docs]


def test_empty_dataset(tmp_path: Path) -> None:
    IndexedDatasetWriter(tmp_path / "e", np.uint16).finalize()
    ds = IndexedDataset(tmp_path / "e")
    assert len(ds) == 0 and ds.n_tokens == 0
