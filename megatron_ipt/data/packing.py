"""Packed training samples cut from one indexed dataset, Megatron style, with document boundaries.

Documents are shuffled per epoch (``doc_idx``) and conceptually concatenated; sample ``k`` is the
``seq_len + 1`` tokens starting at token ``k * seq_len`` of that stream, so neighbouring samples share
one boundary token and no token is lost or padded. ``sample_idx[k] = (position in doc_idx, offset)``
locates each boundary; ``shuffle_idx`` permutes the samples. All three arrays are built vectorised
with numpy, cached on disk under a hash of their inputs, and memory-mapped: random access is O(1).

A sample (the data core → trainer contract)::

    input_ids    int64 (S,)   tokens[:-1]
    labels       int64 (S,)   tokens[1:]
    loss_mask    float32 (S,) 1 where the label counts: the loss-mask twin's value for the label
                              (all ones without a twin), 0 where the label starts another document
                              (attention never crosses documents, so that token is unpredictable)
    position_ids int64 (S,)   restarting at 0 at every document start inside the sample
    cu_seqlens   int32 (n+1,) document start offsets within the sample, then S
    dataset_id   int
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from megatron_ipt.data.indexed import IndexedDataset, exists, lossmask_prefix
from megatron_ipt.io import atomic_path
from megatron_ipt.log import get_logger

log = get_logger(__name__)
_ZERO = np.zeros(1, dtype=np.int64)
INDEX_VERSION = "packing-v1"


def sizes_digest(ds: IndexedDataset) -> str:
    """A short hash of a dataset's document lengths (identifies its content shape)."""
    return hashlib.sha256(np.ascontiguousarray(ds.sizes).tobytes()).hexdigest()[:16]


def default_cache_dir(prefix: str | Path) -> Path:
    return Path(prefix).parent / "index-cache"


def cached_arrays(cache_dir: Path, name: str, key: str, build) -> dict[str, np.ndarray]:
    """Load ``{name}-{key}-*.npy`` memory-mapped, or run ``build()`` → dict of arrays and save them."""
    paths = None
    marker = cache_dir / f"{name}-{key}.done"
    if marker.is_file():
        names = marker.read_text().split()
        paths = {n: cache_dir / f"{name}-{key}-{n}.npy" for n in names}
        if all(p.is_file() for p in paths.values()):
            try:
                return {n: np.load(p, mmap_mode="r").view(np.ndarray) for n, p in paths.items()}
            except (ValueError, OSError) as err:
                log.warning("index cache %s unreadable (%s): rebuilding", marker, err)
    arrays = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    for n, arr in arrays.items():
        with atomic_path(cache_dir / f"{name}-{key}-{n}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr)
    with atomic_path(marker) as tmp:
        tmp.write_text(" ".join(arrays))
    return {n: np.load(cache_dir / f"{name}-{key}-{n}.npy", mmap_mode="r").view(np.ndarray) for n in arrays}


def build_packing_index(
    sizes: np.ndarray, seq_len: int, num_samples: int, seed: int, shuffle: bool = True
) -> dict[str, np.ndarray]:
    """doc_idx, sample_idx and shuffle_idx for ``num_samples`` samples (epochs as needed)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    n_docs, tokens_per_epoch = sizes.size, int(sizes.sum())
    if n_docs == 0 or tokens_per_epoch < 2:
        raise ValueError("cannot pack a dataset with fewer than 2 tokens")
    need = num_samples * seq_len + 1
    epochs = -(-need // tokens_per_epoch)
    rng = np.random.default_rng(seed)
    idx_dtype = np.int32 if n_docs < 2**31 else np.int64
    if shuffle:
        doc_idx = np.concatenate([rng.permutation(n_docs).astype(idx_dtype) for _ in range(epochs)])
    else:
        doc_idx = np.tile(np.arange(n_docs, dtype=idx_dtype), epochs)
    ends = np.cumsum(sizes[doc_idx])  # token position after each document of the stream
    bounds = np.arange(num_samples + 1, dtype=np.int64) * seq_len
    pos = np.searchsorted(ends, bounds, side="right")  # document holding each boundary token
    offset = bounds - (ends[pos] - sizes[doc_idx[pos]])
    sample_idx = np.stack([pos, offset], axis=1).astype(np.int64)
    shuffle_idx = rng.permutation(num_samples) if shuffle else np.arange(num_samples)
    return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx.astype(np.int64)}


class PackedDataset:
    """``num_samples`` packed samples of ``seq_len`` tokens from ``prefix`` (default: one epoch)."""

    def __init__(
        self,
        prefix: str | Path,
        seq_len: int,
        num_samples: int | None = None,
        seed: int = 1234,
        shuffle: bool = True,
        cache_dir: str | Path | None = None,
        dataset_id: int = 0,
    ) -> None:
        self.prefix = str(prefix)
        self.seq_len = int(seq_len)
        self.seed = seed
        self.shuffle = shuffle
        self.dataset_id = dataset_id
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(prefix)
        self.ds = IndexedDataset(prefix)
        self.mask = IndexedDataset(lossmask_prefix(prefix)) if exists(lossmask_prefix(prefix)) else None
        if self.mask is not None and not np.array_equal(self.mask.sizes, self.ds.sizes):
            raise ValueError(f"{self.mask.prefix}: document lengths differ from {self.prefix}")
        self.tokens_per_epoch = self.ds.n_tokens
        if num_samples is None:
            num_samples = max((self.tokens_per_epoch - 1) // self.seq_len, 1)
        self.num_samples = int(num_samples)
        self.digest = sizes_digest(self.ds)
        key_src = f"{INDEX_VERSION}|{Path(self.prefix).resolve()}|{self.digest}|{self.seq_len}|{self.num_samples}|{seed}|{shuffle}"
        self.key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        self._load_index()

    def _load_index(self) -> None:
        arrays = cached_arrays(
            self.cache_dir,
            Path(self.prefix).name,
            self.key,
            lambda: build_packing_index(
                self.ds.sizes, self.seq_len, self.num_samples, self.seed, self.shuffle
            ),
        )
        self.doc_idx, self.sample_idx, self.shuffle_idx = (
            arrays["doc_idx"],
            arrays["sample_idx"],
            arrays["shuffle_idx"],
        )
        # Plain in-memory / mmap-backed ndarrays: np.memmap's per-index overhead dominates otherwise.
        self._doc_start = self.ds.pointers // self.ds.dtype.itemsize  # token offset of each document
        self._sizes = self.ds.sizes.astype(np.int64)
        self._sample_flat = self.sample_idx.reshape(-1)
        self._arange1 = np.arange(self.seq_len + 1, dtype=np.int64)

    @property
    def epochs(self) -> float:
        """Passes over the dataset that ``num_samples`` samples take (fractional)."""
        return (self.num_samples * self.seq_len + 1) / self.tokens_per_epoch

    def __len__(self) -> int:
        return self.num_samples

    def _gather_index(self, k: int) -> tuple[np.ndarray | slice, np.ndarray]:
        """Where sample ``k``'s ``seq_len + 1`` tokens lie in the flat token array, and the
        in-sample offsets at which its documents (pieces) start (first is 0)."""
        d0, o0, d1, o1 = self._sample_flat[2 * k : 2 * k + 4].tolist()
        if d0 == d1:
            start = int(self._doc_start[self.doc_idx[d0]]) + o0
            return slice(start, start + o1 - o0 + 1), _ZERO
        docs = self.doc_idx[d0 : d1 + 1]
        starts = self._doc_start[docs]
        lens = self._sizes[docs]
        starts[0] += o0
        lens[0] -= o0
        lens[-1] = o1 + 1
        if (lens == 0).any():  # empty documents carry no token and no boundary
            starts, lens = starts[lens > 0], lens[lens > 0]
        piece_starts = np.cumsum(lens) - lens
        # token t of the sample sits at starts[p] + (t - piece_starts[p]) for its piece p
        index = (starts - piece_starts).repeat(lens) + self._arange1
        return index, piece_starts

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples})")
        where, piece_starts = self._gather_index(int(self.shuffle_idx[i]))
        tokens = self.ds.tokens[where].astype(np.int64)
        S = self.seq_len
        starts = piece_starts[piece_starts < S]
        cu = np.empty(starts.size + 1, dtype=np.int32)
        cu[:-1] = starts
        cu[-1] = S
        if starts.size == 1:
            position_ids = self._arange1[:S].copy()
        else:
            position_ids = self._arange1[:S] - starts.repeat(cu[1:] - cu[:-1])
        if self.mask is not None:
            loss_mask = self.mask.tokens[where][1:].astype(np.float32)
        else:
            loss_mask = np.ones(S, dtype=np.float32)
        # The label at the last position before a document start belongs to the next document.
        loss_mask[piece_starts[1:] - 1] = 0.0
        return {
            "input_ids": tokens[:-1],
            "labels": tokens[1:],
            "loss_mask": loss_mask,
            "position_ids": position_ids,
            "cu_seqlens": cu,
            "dataset_id": self.dataset_id,
        }

    def __getstate__(self) -> dict:
        # Memory maps must not be pickled (that copies them): workers reopen from the cache.
        keep = ("prefix", "seq_len", "num_samples", "seed", "shuffle", "cache_dir", "dataset_id")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
