"""The synthesizer's tuning data: clean examples, split, fit, group by dataset, tokenize.

Each training document concatenates several examples *from the same dataset* (one document, so
attention flows across them and the model learns to keep a pattern), up to ``max_length`` tokens.
Examples are written as ``segments`` records (:func:`megatron_ipt.pairs.example_segments`)
and tokenized by the data core's :func:`~megatron_ipt.data.preprocess.preprocess`, whose loss-mask
twin then covers exactly the pairs and each example's closing EOS.

Outputs for ``--output-prefix OUT``: ``OUT_train`` and ``OUT_heldout`` indexed datasets (with
``_lossmask`` twins), ``OUT_heldout.examples.jsonl`` (held-out contexts and gold pairs for
generation-based evaluation) and ``OUT.summary.json`` (every count, every skip by reason).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_ipt.data.indexed import summary_path
from megatron_ipt.io import atomic_write_json, atomic_write_jsonl
from megatron_ipt.log import get_logger
from megatron_ipt.pairs import Pair, context_text, escape_markers, example_segments, find_marker, pairs_text
from megatron_ipt.progress import progress
from megatron_ipt.tokenizer import Tokenizer, load_tokenizer, select_engine
from megatron_ipt.tuning.example import ConvertStats, Example

log = get_logger(__name__)

SPLITS = ("train", "heldout")
_ENCODE_CHUNK = 512


@dataclass
class TuningDataOptions:
    max_length: int = 4096
    held_out: float = 0.05  # share of examples (by a hash of dataset + context)
    markers: str = "escape"  # format markers inside user text: "escape" them or "reject" the example
    seed: int = 0
    min_context_chars: int = 1
    # Pad every document to exactly max_length with loss-free EOS tokens. With data.seq_len equal to
    # max_length, the data core's stream packer then cuts samples exactly at document starts: each
    # training sample is one whole document, never a tail whose context is in another sample.
    pad: bool = True

    def validate(self) -> None:
        if self.markers not in ("escape", "reject"):
            raise ValueError(f"markers must be 'escape' or 'reject', got {self.markers!r}")
        if not 0 <= self.held_out < 1:
            raise ValueError(f"held_out must be in [0, 1), got {self.held_out}")
        if self.max_length < 16:
            raise ValueError(f"max_length too small: {self.max_length}")


@dataclass
class TuningStats:
    examples_in: int = 0
    examples_kept: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    skipped: Counter = field(default_factory=Counter)  # whole examples, by reason
    pairs_dropped: Counter = field(default_factory=Counter)  # single pairs, by reason
    markers_escaped: int = 0
    contexts_truncated: int = 0
    context_tokens_cut: int = 0
    per_dataset: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def to_dict(self) -> dict:
        return {
            "examples_in": self.examples_in,
            "examples_kept": dict(self.examples_kept),
            "skipped": dict(sorted(self.skipped.items())),
            "pairs_dropped": dict(sorted(self.pairs_dropped.items())),
            "markers_escaped": self.markers_escaped,
            "contexts_truncated": self.contexts_truncated,
            "context_tokens_cut": self.context_tokens_cut,
            "per_dataset": {k: dict(v) for k, v in sorted(self.per_dataset.items())},
        }


def clean_example(ex: Example, stats: TuningStats, opts: TuningDataOptions) -> Example | None:
    """Strip text, drop empty pairs, handle markers; None (counted) when the example is unusable."""
    context = ex.context.strip()
    if len(context) < opts.min_context_chars:
        stats.skipped["empty_context"] += 1
        return None
    pairs: list[Pair] = []
    for p in ex.pairs:
        q, a = p.instruction.strip(), p.response.strip()
        if not q:
            stats.pairs_dropped["empty_instruction"] += 1
        elif not a:
            stats.pairs_dropped["empty_response"] += 1
        else:
            pairs.append(Pair(q, a))
    if not pairs:
        stats.skipped["no_pairs"] += 1
        return None
    texts = [context] + [t for p in pairs for t in (p.instruction, p.response)]
    if any(find_marker(t) for t in texts):
        if opts.markers == "reject":
            stats.skipped["marker_in_text"] += 1
            return None
        stats.markers_escaped += 1
        context = escape_markers(context)
        pairs = [Pair(escape_markers(p.instruction), escape_markers(p.response)) for p in pairs]
    return Example(ex.dataset, context, pairs, ex.source)


def is_held_out_example(ex: Example, fraction: float, seed: int = 0) -> bool:
    """Deterministic split by a hash of (dataset, context): duplicates of a context stay on one side."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}\0{ex.dataset}\0{ex.context}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def example_length(tok: Tokenizer, context: str, pairs: list[Pair]) -> tuple[int, int]:
    """(context tokens incl. BOS, pair tokens incl. EOS): segments are tokenized separately, so this is exact."""
    return 1 + len(tok.encode(context_text(context))), len(tok.encode(pairs_text(pairs))) + 1


def fit_context(tok: Tokenizer, ex: Example, budget: int) -> tuple[str, int]:
    """The longest prefix of the context whose segment fits ``budget`` tokens (binary search on characters)."""
    lo, hi = 0, len(ex.context)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if 1 + len(tok.encode(context_text(ex.context[:mid].rstrip()))) <= budget:
            lo = mid
        else:
            hi = mid - 1
    text = ex.context[:lo].rstrip()
    return text, 1 + len(tok.encode(context_text(text)))


@dataclass
class Sized:
    example: Example
    length: int  # tokens of the whole example (BOS .. EOS)


def measure(
    examples: list[Example], tok: Tokenizer, opts: TuningDataOptions, stats: TuningStats
) -> list[Sized]:
    """Token lengths; contexts too long are truncated (never the pairs), pairs too long are rejected."""
    out: list[Sized] = []
    # Small sets measure in moments: no progress for them.
    bar = progress(total=len(examples), desc="measuring examples", unit="ex",
                   enabled=False if len(examples) < 5000 else None)
    for start in range(0, len(examples), _ENCODE_CHUNK):
        bar.update(min(_ENCODE_CHUNK, len(examples) - start))
        chunk = examples[start : start + _ENCODE_CHUNK]
        texts = [t for ex in chunk for t in (context_text(ex.context), pairs_text(ex.pairs))]
        ids = tok.encode_batch(texts)
        for i, ex in enumerate(chunk):
            n_ctx, n_pairs = 1 + len(ids[2 * i]), len(ids[2 * i + 1]) + 1
            if n_ctx + n_pairs > opts.max_length:
                budget = opts.max_length - n_pairs
                min_ctx = 1 + len(tok.encode(context_text("")))
                if budget < min_ctx + 8:  # no room for any real context
                    stats.skipped["pairs_too_long"] += 1
                    continue
                text, n_new = fit_context(tok, ex, budget)
                stats.contexts_truncated += 1
                stats.context_tokens_cut += n_ctx - n_new
                ex, n_ctx = Example(ex.dataset, text, ex.pairs, ex.source), n_new
            out.append(Sized(ex, n_ctx + n_pairs))
    bar.close()
    return out


def group_by_dataset(items: list[Sized], max_length: int, seed: int = 0) -> list[list[Sized]]:
    """Documents of examples from one dataset each, greedily filled up to ``max_length`` tokens.

    Examples are shuffled within their dataset first and the documents shuffled at the end, both
    seeded, so the output is deterministic.
    """
    rng = random.Random(seed)
    by_ds: dict[str, list[Sized]] = defaultdict(list)
    for it in items:
        by_ds[it.example.dataset].append(it)
    docs: list[list[Sized]] = []
    for name in sorted(by_ds):
        group = by_ds[name]
        rng.shuffle(group)
        doc: list[Sized] = []
        used = 0
        for it in group:
            if doc and used + it.length > max_length:
                docs.append(doc)
                doc, used = [], 0
            doc.append(it)
            used += it.length
        if doc:
            docs.append(doc)
    rng.shuffle(docs)
    return docs


def document_segments(doc: list[Sized], pad_to: int | None = None) -> list[dict]:
    """The document's examples as segments, then ``pad_to - length`` loss-free EOS tokens."""
    segs = [seg for it in doc for seg in example_segments(it.example.context, it.example.pairs)]
    if pad_to is not None:
        segs.extend({"special": "eos", "loss": False} for _ in range(pad_to - sum(it.length for it in doc)))
    return segs


def split_prefix(output_prefix: str | Path, split: str) -> str:
    return f"{output_prefix}_{split}"


def heldout_examples_path(output_prefix: str | Path) -> Path:
    return Path(f"{output_prefix}_heldout.examples.jsonl")


def _synthesis_tokenizer(tokenizer: Tokenizer | str) -> Tokenizer:
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if tok.bos_id is None or tok.eos_id is None:
        raise ValueError(f"tokenizer {tok.name} needs BOS and EOS tokens for the synthesizer format")
    return tok


def _finished_summary(
    output_prefix: str | Path, opts: TuningDataOptions, tok: Tokenizer, fingerprint: dict | None
) -> dict | None:
    """The summary on disk when it records the same options, tokenizer and inputs, else None."""
    summary_file = summary_path(output_prefix)
    if not summary_file.exists():
        return None
    prev = json.loads(summary_file.read_text())
    same = (prev.get("options"), prev.get("tokenizer"), prev.get("inputs"))
    return prev if same == (asdict(opts), tok.name, fingerprint) else None


def _clean_and_split(
    examples: Iterable[Example], stats: TuningStats, opts: TuningDataOptions
) -> dict[str, list[Example]]:
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for ex in examples:
        stats.examples_in += 1
        clean = clean_example(ex, stats, opts)
        if clean is not None:
            splits["heldout" if is_held_out_example(clean, opts.held_out, opts.seed) else "train"].append(clean)
    return splits


def _summary_head(tok: Tokenizer, opts: TuningDataOptions, fingerprint: dict | None) -> dict:
    from megatron_ipt.data.indexed import best_dtype
    from megatron_ipt.data.provenance import tokenizer_record

    return {"options": asdict(opts), "tokenizer": tok.name,
            "tokenizer_fingerprint": tokenizer_record(tok, best_dtype(tok.vocab_size)),
            "tokenizer_engine": tok.engine,
            "inputs": fingerprint, "splits": {}}


def _build_split(
    split: str, examples: list[Example], output_prefix: str | Path, tok: Tokenizer, opts: TuningDataOptions,
    stats: TuningStats,
) -> dict:
    """Measure, group and tokenize one split; its entry of the summary's ``splits``."""
    from megatron_ipt.data.preprocess import preprocess

    sized = measure(examples, tok, opts, stats)
    stats.examples_kept[split] = len(sized)
    for it in sized:
        stats.per_dataset[it.example.dataset][split] += 1
    docs = group_by_dataset(sized, opts.max_length, opts.seed)
    prefix = split_prefix(output_prefix, split)
    seg_file = Path(f"{prefix}.segments.jsonl")
    pad_to = opts.max_length if opts.pad else None
    atomic_write_jsonl(seg_file, ({"segments": document_segments(d, pad_to)} for d in docs))
    if split == "heldout":
        atomic_write_jsonl(heldout_examples_path(output_prefix), (it.example.to_dict() for it in sized))
    if not docs:
        log.warning("split %s is empty: no indexed dataset written", split)
        return {"prefix": None, "documents": 0, "examples": 0, "tokens": 0}
    content_tokens = sum(it.length for d in docs for it in d)
    expected_tokens = len(docs) * opts.max_length if opts.pad else content_tokens
    pre = preprocess([seg_file], prefix, tok, workers=0, dataset_suffix=False, overwrite=True, progress=True)
    if pre["written"] != len(docs) or pre["tokens"] != expected_tokens:
        raise RuntimeError(
            f"{prefix}: preprocess wrote {pre['written']} documents / {pre['tokens']} tokens, "
            f"expected {len(docs)} / {expected_tokens}"
        )
    seg_file.unlink()
    lengths = [sum(it.length for it in d) for d in docs]
    return {
        "prefix": prefix,
        "lossmask_prefix": pre.get("lossmask_prefix"),
        "documents": len(docs),
        "examples": len(sized),
        "tokens": expected_tokens,
        "padding_tokens": expected_tokens - content_tokens,
        "mean_examples_per_document": round(len(sized) / len(docs), 2),
        "mean_document_tokens": round(sum(lengths) / len(lengths), 1),
        "max_document_tokens": max(lengths),
    }


def build_tuning_data(
    examples: Iterable[Example],
    output_prefix: str | Path,
    tokenizer: Tokenizer | str,
    opts: TuningDataOptions | None = None,
    convert_stats: ConvertStats | None = None,
    overwrite: bool = False,
    fingerprint: dict | None = None,
) -> dict:
    """Clean, split, fit, group and tokenize examples; returns (and writes) the summary.

    A finished build (its summary on disk with the same options, tokenizer and ``fingerprint`` of
    the inputs) is not redone; an interrupted one is redone from the start (each output is atomic).
    """
    opts = opts or TuningDataOptions()
    opts.validate()
    tok = _synthesis_tokenizer(tokenizer)
    if not overwrite and (prev := _finished_summary(output_prefix, opts, tok, fingerprint)) is not None:
        log.info("tuning data %s already built; skipping (pass overwrite to redo)", output_prefix)
        return prev
    stats = TuningStats()
    splits = _clean_and_split(examples, stats, opts)
    first = splits["train"][: _ENCODE_CHUNK // 2]  # gigatoken measures in bulk where it gives the same ids
    tok = select_engine(tok, "auto", [t for ex in first for t in (context_text(ex.context), pairs_text(ex.pairs))])
    summary = _summary_head(tok, opts, fingerprint)
    for split in SPLITS:
        summary["splits"][split] = _build_split(split, splits[split], output_prefix, tok, opts, stats)
    if convert_stats is not None:  # complete: the converters run lazily, as ``examples`` is consumed
        summary["convert"] = convert_stats.to_dict()
    summary["stats"] = stats.to_dict()
    atomic_write_json(summary_path(output_prefix), summary)
    return summary
