"""Tuning data: exact format, loss mask over the pair tokens only, grouping by dataset, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megatron_ipt.data.indexed import IndexedDataset, lossmask_prefix
from megatron_ipt.pairs import (
    Pair,
    chain_of_thought,
    context_text,
    example_string,
    multiple_choice,
    pairs_text,
)
from megatron_ipt.tuning.example import Example
from megatron_ipt.tuning.tuning_data import (
    TuningDataOptions,
    build_tuning_data,
    escape_markers,
    heldout_examples_path,
    is_held_out_example,
)


def test_golden_example_string() -> None:
    mc = multiple_choice("Which colour is the sky?", ["red", "blue"])
    cot = chain_of_thought("Is the sky blue?", "The text says the sky is blue.", "yes")
    pairs = [Pair("What is blue?", "The sky"), Pair(mc, "blue"), Pair(*cot)]
    assert example_string("The sky is blue.", pairs) == (
        "<s> <CON> The sky is blue. </CON>\n\n"
        "<QUE> What is blue? <ANS> The sky </END>\n\n"
        "<QUE> Which colour is the sky?\nOptions:\n- red\n- blue <ANS> blue </END>\n\n"
        "<QUE> Is the sky blue?\nLet's think step by step. <ANS> The text says the sky is blue.\n"
        "Therefore, the answer is yes </END></s>"
    )


def _examples(n_per_ds: int = 6) -> list[Example]:
    out = []
    for ds in ("alpha", "beta", "gamma"):
        for i in range(n_per_ds):
            ctx = f"Context {ds} number {i}: " + " ".join(f"w{ds}{i}x{j}" for j in range(20))
            out.append(
                Example(
                    ds,
                    ctx,
                    [
                        Pair(f"Question {i} about {ds}?", f"Answer {i} {ds}."),
                        Pair("Second question?", f"Second answer {i}."),
                    ],
                )
            )
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, value) runs of a 0/1 array."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(mask)]
    return [(a, b, int(mask[a])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def test_mask_covers_exactly_the_pairs_and_groups_by_dataset(tmp_path: Path, mistral_tokenizer) -> None:
    tok = mistral_tokenizer
    exs = _examples()
    by_context = {e.context: e for e in exs}
    opts = TuningDataOptions(max_length=512, held_out=0.0, pad=False)
    s = build_tuning_data(exs, tmp_path / "t", tok, opts)
    train = s["splits"]["train"]
    assert train["examples"] == 18 and s["splits"]["heldout"]["documents"] == 0
    docs, masks = IndexedDataset(train["prefix"]), IndexedDataset(lossmask_prefix(train["prefix"]))
    assert len(docs) == train["documents"] < 18  # several examples share a document
    seen = 0
    for d in range(len(docs)):
        ids, mask = docs.get(d), masks.get(d)
        assert len(ids) == len(mask) <= 512
        runs = _runs(mask)
        assert len(runs) % 2 == 0 and runs[0][2] == 0  # (context, pairs) per example, context first
        datasets = set()
        for (a, b, _), (c, e, v) in zip(runs[::2], runs[1::2], strict=True):
            assert v == 1
            ctx_ids, pair_ids = ids[a:b].tolist(), ids[c:e].tolist()
            assert ctx_ids[0] == tok.bos_id and pair_ids[-1] == tok.eos_id
            context = tok.decode(ctx_ids[1:]).strip()
            assert context.startswith("<CON>") and context.endswith("</CON>")
            ex = by_context[context[len("<CON>") : -len("</CON>")].strip()]
            assert ctx_ids[1:] == tok.encode(context_text(ex.context))
            assert pair_ids[:-1] == tok.encode(pairs_text(ex.pairs))  # masked-in = pairs + EOS, nothing else
            assert tok.decode(pair_ids[:-1]) == pairs_text(ex.pairs)
            datasets.add(ex.dataset)
            seen += 1
        assert len(datasets) == 1  # one dataset per document
    assert seen == 18


def test_bad_input_is_counted_never_lost(tmp_path: Path, mistral_tokenizer) -> None:
    long_context = " ".join(f"word{i}" for i in range(400))
    exs = [
        Example("a", "Fine context.", [Pair("Q?", "A.")]),
        Example("a", "No pairs at all.", []),
        Example("a", "Empty response.", [Pair("Q?", "  ")]),
        Example("a", "Half empty.", [Pair("", "orphan"), Pair("Kept?", "Yes.")]),
        Example("a", "   ", [Pair("Q?", "A.")]),
        Example("a", "Sneaky <QUE> marker </END> here.", [Pair("What <ANS> now?", "ok")]),
        Example("a", long_context, [Pair("What is the first word?", "word0")]),
        Example("a", "Short.", [Pair("Tell me everything.", " ".join(["long answer"] * 200))]),
    ]
    s = build_tuning_data(
        exs, tmp_path / "bad", mistral_tokenizer, TuningDataOptions(max_length=128, held_out=0.0)
    )
    st = s["stats"]
    assert st["examples_in"] == 8
    assert st["skipped"] == {"empty_context": 1, "no_pairs": 2, "pairs_too_long": 1}
    assert st["pairs_dropped"] == {"empty_instruction": 1, "empty_response": 1}
    assert st["markers_escaped"] == 1 and st["contexts_truncated"] == 1 and st["context_tokens_cut"] > 300
    assert st["examples_kept"]["train"] == 4 == 8 - sum(st["skipped"].values())
    tokens = IndexedDataset(s["splits"]["train"]["prefix"]).tokens
    text = mistral_tokenizer.decode(np.asarray(tokens).tolist())
    assert "<QUE> What is the first word? <ANS> word0 </END>" in text  # pairs intact after truncation
    assert "< QUE> marker < /END> here." in text and "<QUE> What < ANS> now? <ANS> ok </END>" in text
    # rejecting instead of escaping
    s2 = build_tuning_data(
        exs,
        tmp_path / "rej",
        mistral_tokenizer,
        TuningDataOptions(max_length=128, held_out=0.0, markers="reject"),
    )
    assert s2["stats"]["skipped"]["marker_in_text"] == 1 and s2["stats"]["markers_escaped"] == 0
    assert escape_markers("<CON>x</CON>") == "< CON>x< /CON>"


def test_heldout_split_resume_and_options(tmp_path: Path, mistral_tokenizer) -> None:
    exs = _examples(20)
    opts = TuningDataOptions(max_length=512, held_out=0.2, seed=3)
    s = build_tuning_data(exs, tmp_path / "h", mistral_tokenizer, opts, fingerprint={"x": 1})
    held = [
        Example.from_dict(json.loads(x))
        for x in heldout_examples_path(tmp_path / "h").read_text().splitlines()
    ]
    assert len(held) == s["splits"]["heldout"]["examples"] > 0
    assert all(is_held_out_example(e, 0.2, 3) for e in held)
    assert s["splits"]["train"]["examples"] + len(held) == 60
    assert Path(s["splits"]["heldout"]["lossmask_prefix"] + ".bin").is_file()
    summary = tmp_path / "h.summary.json"
    assert json.loads(summary.read_text())["splits"] == s["splits"]
    record = {**mistral_tokenizer.fingerprint(), "dtype": "uint16"}
    assert s["tokenizer_fingerprint"] == record
    for split in ("train", "heldout"):  # each split's dataset carries it too (the trainer checks those)
        split_summary = json.loads(Path(s["splits"][split]["prefix"] + ".summary.json").read_text())
        assert split_summary["tokenizer_fingerprint"] == record
    mtime = summary.stat().st_mtime_ns
    # a finished build is not redone (the examples are not even read) ...
    assert build_tuning_data(iter(()), tmp_path / "h", mistral_tokenizer, opts, fingerprint={"x": 1}) == s
    assert summary.stat().st_mtime_ns == mtime
    # ... unless the inputs or options change
    s3 = build_tuning_data(exs[:30], tmp_path / "h", mistral_tokenizer, opts, fingerprint={"x": 2})
    assert s3["stats"]["examples_in"] == 30
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob("*.segments.jsonl"))
    with pytest.raises(ValueError, match="markers"):
        build_tuning_data(exs, tmp_path / "o", mistral_tokenizer, TuningDataOptions(markers="drop"))


def test_padded_documents_are_whole_packed_samples(tmp_path: Path, mistral_tokenizer) -> None:
    from megatron_ipt.data.packing import PackedDataset

    tok = mistral_tokenizer
    s = build_tuning_data(_examples(), tmp_path / "p", tok, TuningDataOptions(max_length=512, held_out=0.0))
    info = s["splits"]["train"]
    docs, masks = IndexedDataset(info["prefix"]), IndexedDataset(lossmask_prefix(info["prefix"]))
    assert (docs.sizes == 512).all() and info["tokens"] == 512 * len(docs)
    assert 0 < info["padding_tokens"] < info["tokens"] // 2
    by_first = {}
    for d in range(len(docs)):
        ids, mask = docs.get(d), masks.get(d)
        last = int(np.flatnonzero(mask)[-1])
        assert (
            ids[last] == tok.eos_id and (ids[last + 1 :] == tok.eos_id).all() and not mask[last + 1 :].any()
        )
        by_first[tuple(ids[:16].tolist())] = mask
    packed = PackedDataset(info["prefix"], seq_len=512, seed=5, cache_dir=tmp_path / "cache")
    assert len(packed) == len(docs) - 1
    for k in range(len(packed)):
        sample = packed[k]
        assert sample["input_ids"][0] == tok.bos_id
        assert (sample["position_ids"] == np.arange(512)).all()  # one whole document per sample
        mask = by_first[tuple(sample["input_ids"][:16].tolist())]
        assert (sample["loss_mask"][:-1] == mask[1:].astype(np.float32)).all()
