"""Concatenate indexed datasets (and their loss-mask twins) into one, streaming in chunks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from megatron_ipt.data.indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    exists,
    lossmask_prefix,
    max_token_id,
    summary_path,
)
from megatron_ipt.data.provenance import common_record
from megatron_ipt.io import atomic_write_json, output_lock

_DOCS_PER_CHUNK = 1 << 18


def _copy(src: IndexedDataset, writer: IndexedDatasetWriter, ones: bool = False) -> None:
    sizes = src.sizes
    for s in range(0, len(src), _DOCS_PER_CHUNK):
        lengths = np.asarray(sizes[s : s + _DOCS_PER_CHUNK], dtype=np.int64)
        start = int(src.pointers[s]) // src.dtype.itemsize
        n = int(lengths.sum())
        tokens = np.ones(n, np.uint8) if ones else src.tokens[start : start + n]
        writer.add_documents(tokens, lengths)


def merge_datasets(prefixes: list[str | Path], output_prefix: str | Path) -> dict:
    """Write ``output_prefix`` = the documents of ``prefixes`` in order; return a summary.

    Inputs made with different tokenizers (their ``tokenizer_fingerprint``) or token dtypes are
    refused (:class:`~megatron_ipt.data.provenance.ProvenanceError`): their ids mean different
    things. When any input has a ``_lossmask`` twin the output has one too, with ones for the
    inputs that lack it (every token of theirs counts).
    """
    if not prefixes:
        raise ValueError("merge_datasets: no input prefix")
    seen: dict[str, int] = {}
    for i, p in enumerate(prefixes):  # the same dataset twice would write its documents twice
        first = seen.setdefault(os.path.realpath(p), i)
        if first != i:
            raise ValueError(f"merge_datasets: {p} names the same dataset as {prefixes[first]} (inputs {first + 1} "
                             f"and {i + 1}); give each input once")
    sources = [IndexedDataset(p) for p in prefixes]
    record = common_record([str(p) for p in prefixes], [s.dtype for s in sources])
    dtype = sources[0].dtype
    masks = [IndexedDataset(lossmask_prefix(p)) if exists(lossmask_prefix(p)) else None for p in prefixes]
    out = str(output_prefix)
    if os.path.realpath(out) in seen:
        raise ValueError(f"merge_datasets: output {out} is also an input")
    with output_lock(out):  # a second merge into the same prefix is refused
        mask_writer = IndexedDatasetWriter(lossmask_prefix(out), np.uint8) if any(masks) else None
        writer = IndexedDatasetWriter(out, dtype)
        try:
            for src, mask in zip(sources, masks, strict=True):
                _copy(src, writer)
                if mask_writer is not None:
                    _copy(mask if mask is not None else src, mask_writer, ones=mask is None)
        except BaseException:
            writer.abort()
            if mask_writer is not None:
                mask_writer.abort()
            raise
        if mask_writer is not None:
            mask_writer.finalize()
        writer.finalize()
        if mask_writer is None:  # never leave a stale twin from an earlier merge next to the output
            for p in (f"{lossmask_prefix(out)}.idx", f"{lossmask_prefix(out)}.bin"):
                Path(p).unlink(missing_ok=True)
        summary = {
            "prefix": out,
            "lossmask_prefix": lossmask_prefix(out) if mask_writer is not None else None,
            "inputs": [str(p) for p in prefixes],
            "documents": writer.n_docs,
            "tokens": writer.n_tokens,
            "dtype": str(dtype),
            "tokenizer_fingerprint": record,
            # carried from the inputs' summaries, so the trainer's id check needs no scan of the output
            "max_token_id": max((max_token_id(src) for src in sources), default=-1),
        }
        atomic_write_json(summary_path(out), summary)
        return summary
