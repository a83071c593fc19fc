"""Megatron-LM's ``MMIDIDX`` indexed dataset: a ``PREFIX.bin`` of tokens and a ``PREFIX.idx`` index.

Layout of ``.idx`` (little endian), byte-compatible with megatron-core's ``IndexedDataset``::

    magic      9 bytes   b"MMIDIDX\\x00\\x00"
    version    uint64    1
    dtype      uint8     code of the token dtype (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
                         6 float64, 7 float32, 8 uint16)
    seq_count  uint64    number of sequences (one per document here)
    doc_count  uint64    number of document indices (seq_count + 1)
    lengths    int32[seq_count]   tokens per sequence
    pointers   int64[seq_count]   byte offset of each sequence in .bin (64-bit: no overflow)
    doc_idx    int64[doc_count]   0, 1, ..., seq_count

The writer never holds per-document Python lists: lengths stream to a side file and the index is
assembled chunk by chunk at ``finalize()``. ``.bin`` is renamed before ``.idx``, and the reader checks
that they agree, so a kill at any moment never yields a readable but wrong pair.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8 + 8
DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
_CHUNK = 1 << 22  # documents per chunk when assembling the index


class IndexedDatasetError(ValueError):
    """A missing, corrupt or inconsistent indexed dataset, or a token that does not fit the dtype."""


def best_dtype(vocab_size: int) -> np.dtype:
    """Megatron's rule: uint16 below 65,500 tokens, int32 otherwise."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def bin_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def summary_path(prefix: str | Path) -> Path:
    """The provenance record beside a dataset (or beside any output file the tools write)."""
    return Path(f"{prefix}.summary.json")


def lossmask_prefix(prefix: str | Path) -> str:
    return f"{prefix}_lossmask"


def missing_files(prefix: str | Path) -> list[str]:
    """The files of the indexed dataset ``prefix`` that are not there (``PREFIX.bin``, ``PREFIX.idx``)."""
    return [str(p) for p in (bin_path(prefix), idx_path(prefix)) if not p.is_file()]


def exists(prefix: str | Path) -> bool:
    return not missing_files(prefix)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


class IndexedDatasetWriter:
    """Stream documents into ``PREFIX.bin``/``.idx``; ``finalize()`` publishes both atomically.

    Work goes to ``PREFIX.bin.partial`` and ``PREFIX.lengths.partial``. ``resume=(n_docs, n_tokens)``
    reopens those partial files, truncated to a checkpointed state (see ``state()``).
    """

    def __init__(
        self,
        prefix: str | Path,
        dtype: np.dtype | type = np.int32,
        resume: tuple[int, int] | None = None,
        max_token: int | None = None,
    ) -> None:
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise IndexedDatasetError(f"unsupported token dtype {self.dtype}")
        # Largest value storable; ids above it would wrap silently, so they are refused.
        self.max_token = max_token
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            self.max_token = info.max if max_token is None else min(max_token, info.max)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self.bin_partial = Path(f"{self.prefix}.bin.partial")
        self.len_partial = Path(f"{self.prefix}.lengths.partial")
        if resume is None:
            self.n_docs, self.n_tokens = 0, 0
            self._bin = open(self.bin_partial, "wb")
            self._len = open(self.len_partial, "wb")
        else:
            self.n_docs, self.n_tokens = resume
            want_bin, want_len = self.n_tokens * self.dtype.itemsize, self.n_docs * 4
            if not self.bin_partial.is_file() or self.bin_partial.stat().st_size < want_bin:
                raise IndexedDatasetError(f"cannot resume {self.bin_partial}: shorter than checkpoint")
            if not self.len_partial.is_file() or self.len_partial.stat().st_size < want_len:
                raise IndexedDatasetError(f"cannot resume {self.len_partial}: shorter than checkpoint")
            self._bin = open(self.bin_partial, "r+b")
            self._bin.truncate(want_bin)
            self._bin.seek(want_bin)
            self._len = open(self.len_partial, "r+b")
            self._len.truncate(want_len)
            self._len.seek(want_len)

    def state(self) -> tuple[int, int]:
        """(documents, tokens) written so far, after flushing: a resumable checkpoint."""
        self.flush()
        return self.n_docs, self.n_tokens

    def flush(self) -> None:
        self._bin.flush()
        self._len.flush()

    def add_document(self, ids) -> None:
        arr = np.asarray(ids)
        self.add_documents(arr, np.array([arr.size], dtype=np.int64))

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append several documents given as one concatenated token array and their lengths."""
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != tokens.size:
            raise IndexedDatasetError(f"lengths sum {int(lengths.sum())} != {tokens.size} tokens")
        if lengths.size and int(lengths.max()) > np.iinfo(np.int32).max:
            raise IndexedDatasetError("a document longer than 2**31-1 tokens does not fit the index")
        if tokens.size and self.dtype.kind in "iu":
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi > self.max_token:
                raise IndexedDatasetError(
                    f"token id {hi if hi > self.max_token else lo} does not fit {self.dtype} "
                    f"(max {self.max_token}) in {self.prefix}: use a wider dtype"
                )
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes())
        self._len.write(lengths.astype(np.int32).tobytes())
        self.n_docs += lengths.size
        self.n_tokens += tokens.size

    def close(self) -> None:
        self._bin.close()
        self._len.close()

    def abort(self) -> None:
        """Close and delete the partial files."""
        self.close()
        for p in (self.bin_partial, self.len_partial):
            p.unlink(missing_ok=True)

    def finalize(self) -> None:
        """Assemble the index, then rename ``.bin`` and ``.idx`` into place (in that order)."""
        self.flush()
        self.close()
        idx_tmp = Path(f"{self.prefix}.idx.partial")
        lengths = (
            np.memmap(self.len_partial, dtype=np.int32, mode="r") if self.n_docs else np.zeros(0, np.int32)
        )
        if lengths.size != self.n_docs:
            raise IndexedDatasetError(f"{self.len_partial}: {lengths.size} lengths, expected {self.n_docs}")
        write_index(idx_tmp, self.dtype, lengths)
        del lengths
        _fsync(self.bin_partial)
        os.replace(self.bin_partial, bin_path(self.prefix))
        os.replace(idx_tmp, idx_path(self.prefix))
        self.len_partial.unlink(missing_ok=True)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def write_index(path: Path, dtype: np.dtype, lengths: np.ndarray) -> None:
    """Write an ``.idx`` for ``lengths`` (any array-like of int), chunk by chunk, and fsync it."""
    n = len(lengths)
    itemsize = np.int64(np.dtype(dtype).itemsize)
    with open(path, "wb") as fh:
        fh.write(MAGIC)
        fh.write(struct.pack("<Q", VERSION))
        fh.write(struct.pack("<B", CODE_OF_DTYPE[np.dtype(dtype)]))
        fh.write(struct.pack("<Q", n))
        fh.write(struct.pack("<Q", n + 1))
        for s in range(0, n, _CHUNK):
            fh.write(np.asarray(lengths[s : s + _CHUNK], dtype=np.int32).tobytes())
        offset = np.int64(0)
        for s in range(0, n, _CHUNK):
            chunk = np.asarray(lengths[s : s + _CHUNK], dtype=np.int64) * itemsize
            ptr = np.cumsum(chunk) - chunk + offset
            fh.write(ptr.tobytes())
            offset += chunk.sum()
        for s in range(0, n + 1, _CHUNK):
            fh.write(np.arange(s, min(s + _CHUNK, n + 1), dtype=np.int64).tobytes())
        fh.flush()
        os.fsync(fh.fileno())


def _check_sizes_and_pointers(ip: Path, sizes: np.ndarray, pointers: np.ndarray, itemsize: int,
                              chunk: int = _CHUNK) -> None:
    """Sizes are non-negative and each pointer is the byte offset the sizes before it imply (so no
    document reads another's tokens); vectorised, chunk by chunk, O(documents)."""
    offset = 0
    for s in range(0, len(sizes), chunk):
        sz = np.asarray(sizes[s : s + chunk], dtype=np.int64)
        neg = np.flatnonzero(sz < 0)
        if neg.size:
            raise IndexedDatasetError(f"{ip}: document {s + int(neg[0])} has a negative size {int(sz[neg[0]])}: corrupt")
        want = (np.cumsum(sz) - sz + offset) * itemsize
        bad = np.flatnonzero(np.asarray(pointers[s : s + chunk]) != want)
        if bad.size:
            i = int(bad[0])
            raise IndexedDatasetError(
                f"{ip}: pointer of document {s + i} is {int(pointers[s + i])}, the sizes before it put it at "
                f"{int(want[i])}: sizes and pointers disagree (corrupt index)"
            )
        offset += int(sz.sum())


def max_token_id(ds: IndexedDataset) -> int:
    """The largest token id in ``ds`` (-1 when empty): from ``PREFIX.summary.json`` when preprocess
    recorded it for these very tokens, else one vectorised scan of ``.bin``."""
    import json

    summary = summary_path(ds.prefix)
    if summary.is_file():
        try:
            rec = json.loads(summary.read_text())
        except (OSError, ValueError):
            rec = {}
        if isinstance(rec, dict) and rec.get("tokens") == ds.n_tokens and isinstance(rec.get("max_token_id"), int):
            return rec["max_token_id"]
    top = -1
    for s in range(0, ds.n_tokens, 1 << 26):
        top = max(top, int(ds.tokens[s : s + (1 << 26)].max()))
    return top


class IndexedDataset:
    """Read-only, memory-mapped view of ``PREFIX.bin``/``.idx``; validates header and sizes."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = str(prefix)
        ip, bp = idx_path(prefix), bin_path(prefix)
        for p in (ip, bp):
            if not p.is_file():
                raise IndexedDatasetError(f"indexed dataset {self.prefix}: {p} is missing")
        idx_size = ip.stat().st_size
        with open(ip, "rb") as fh:
            head = fh.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE or head[: len(MAGIC)] != MAGIC:
            raise IndexedDatasetError(f"{ip}: not a Megatron MMIDIDX index (bad magic)")
        pos = len(MAGIC)
        (version,) = struct.unpack_from("<Q", head, pos)
        if version != VERSION:
            raise IndexedDatasetError(f"{ip}: index version {version}, only {VERSION} is supported")
        (code,) = struct.unpack_from("<B", head, pos + 8)
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(f"{ip}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        seq_count, doc_count = struct.unpack_from("<QQ", head, pos + 9)
        expected = HEADER_SIZE + seq_count * (4 + 8) + doc_count * 8
        # Megatron may append int8 sequence modes (multimodal); anything else is corruption.
        if idx_size not in (expected, expected + seq_count):
            raise IndexedDatasetError(
                f"{ip}: {idx_size} bytes, header promises {expected} ({seq_count} sequences): truncated or corrupt"
            )
        self._idx_mmap = np.memmap(ip, dtype=np.uint8, mode="r")
        buf = self._idx_mmap
        o = HEADER_SIZE
        self.sizes = np.frombuffer(buf, dtype=np.int32, count=seq_count, offset=o)
        o += 4 * seq_count
        self.pointers = np.frombuffer(buf, dtype=np.int64, count=seq_count, offset=o)
        o += 8 * seq_count
        self.document_indices = np.frombuffer(buf, dtype=np.int64, count=doc_count, offset=o)
        _check_sizes_and_pointers(ip, self.sizes, self.pointers, self.dtype.itemsize)
        n_tokens = int(self.sizes.sum(dtype=np.int64))
        bin_size = bp.stat().st_size
        if bin_size != n_tokens * self.dtype.itemsize:
            raise IndexedDatasetError(
                f"{bp}: {bin_size} bytes but {ip} describes {n_tokens} tokens of {self.dtype} "
                f"({n_tokens * self.dtype.itemsize} bytes): the pair is inconsistent"
            )
        if seq_count and int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize != bin_size:
            raise IndexedDatasetError(f"{ip}: sequence pointers disagree with {bp}")
        self.n_tokens = n_tokens
        # A plain ndarray over the map (np.memmap adds per-slice overhead on the hot path).
        self._bin = (
            np.memmap(bp, dtype=self.dtype, mode="r").view(np.ndarray)
            if bin_size
            else np.zeros(0, self.dtype)
        )

    def __len__(self) -> int:
        return len(self.sizes)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens of document ``i`` (a read-only view), optionally a slice ``[offset, offset+length)``."""
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start : start + length]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    @property
    def tokens(self) -> np.ndarray:
        """All tokens, memory-mapped, in document order."""
        return self._bin

    def __repr__(self) -> str:
        return (
            f"IndexedDataset({self.prefix!r}, docs={len(self)}, tokens={self.n_tokens}, dtype={self.dtype})"
        )
