"""Statistics and decoded samples of an indexed dataset (what ``inspect_data`` prints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_ipt.data.indexed import IndexedDataset, exists, lossmask_prefix, max_token_id
from megatron_ipt.data.provenance import ProvenanceError, describe, mismatch, read_record


def dataset_stats(prefix: str | Path) -> dict:
    """Counts, token totals, length percentiles and a power-of-two length histogram."""
    ds = IndexedDataset(prefix)
    sizes = np.asarray(ds.sizes, dtype=np.int64)
    stats: dict = {"prefix": str(prefix), "dtype": str(ds.dtype), "documents": len(ds), "tokens": ds.n_tokens}
    if len(ds):
        stats["length"] = {
            "min": int(sizes.min()),
            "mean": round(float(sizes.mean()), 2),
            "p50": int(np.percentile(sizes, 50)),
            "p90": int(np.percentile(sizes, 90)),
            "p99": int(np.percentile(sizes, 99)),
            "max": int(sizes.max()),
        }
        edges = 2 ** np.arange(0, int(np.ceil(np.log2(sizes.max() + 1))) + 1)
        counts, _ = np.histogram(sizes, bins=np.append(edges, edges[-1] * 2))
        stats["histogram"] = [
            {"from": int(lo), "to": int(hi) - 1, "documents": int(c)}
            for lo, hi, c in zip(edges, np.append(edges[1:], edges[-1] * 2), counts, strict=True)
            if c
        ]
    mp = lossmask_prefix(prefix)
    if exists(mp):
        mask = IndexedDataset(mp)
        stats["lossmask"] = {
            "prefix": mp,
            "lengths_match": bool(np.array_equal(mask.sizes, ds.sizes)),
            "loss_fraction": round(float(mask.tokens.astype(np.float64).mean()) if mask.n_tokens else 0.0, 4),
        }
    return stats


def decoded_samples(
    prefix: str | Path, tokenizer, k: int, seed: int | None = None, max_tokens: int = 512
) -> list[dict]:
    """The first ``k`` documents (or ``k`` random ones with ``seed``), decoded; loss spans marked.

    A dataset whose summary names another tokenizer than ``tokenizer``, or (without a summary) one
    holding ids outside its vocabulary, is refused with a :class:`ProvenanceError`: its ids would
    decode to other text, or not at all."""
    ds = IndexedDataset(prefix)
    mine, recorded = tokenizer.fingerprint(), read_record(prefix)
    if recorded is not None and mismatch(recorded, mine):
        raise ProvenanceError(f"{prefix}: tokenized with {describe(recorded)}, but the tokenizer given is "
                              f"{describe(mine)}; decode with the dataset's own tokenizer")
    if recorded is None and (top := max_token_id(ds)) >= tokenizer.vocab_size:
        raise ProvenanceError(f"{prefix}: holds token id {top}, outside the {tokenizer.vocab_size} ids of "
                              f"{describe(mine)}; decode with the dataset's own tokenizer")
    n = min(k, len(ds))
    ids = np.random.default_rng(seed).choice(len(ds), n, replace=False) if seed is not None else np.arange(n)
    mask = IndexedDataset(lossmask_prefix(prefix)) if exists(lossmask_prefix(prefix)) else None
    out = []
    for i in ids:
        toks = ds.get(int(i))[:max_tokens].tolist()
        item = {"document": int(i), "tokens": int(ds.sizes[i]), "text": tokenizer.decode(toks)}
        if mask is not None and not mask.get(int(i)).all():
            m = mask.get(int(i))[:max_tokens]
            edges = np.flatnonzero(np.diff(np.concatenate([[0], m, [0]])))
            item["loss_spans"] = [
                tokenizer.decode(toks[a:b]) for a, b in zip(edges[::2], edges[1::2], strict=True)
            ]
        out.append(item)
    return out
