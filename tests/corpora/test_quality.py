"""The quality gate: one test per filter, its switch, and its place in synthesized documents."""

from __future__ import annotations

import json
from collections import Counter

from megatron_ipt.corpora.chains import synthesized_documents
from megatron_ipt.corpora.quality import QualityConfig, QualityGate, drop_reason, question_hash
from megatron_ipt.pairs import Pair, chain_of_thought, multiple_choice, normalize

OPTIONS = ["Heart", "Liver", "Lung"]
GOOD = [
    Pair("What does the protein bind?", "The receptor."),
    Pair(multiple_choice("Which organ makes bile?", OPTIONS), "Liver."),
    Pair(*chain_of_thought("Is the effect dose dependent?", "Higher doses gave larger effects.", "yes")),
    Pair(*chain_of_thought(multiple_choice("Which organ?", OPTIONS), "Bile comes from the liver.", "Liver")),
]


def off(**on: bool) -> QualityConfig:
    """Every filter off except those named."""
    cfg = QualityConfig(degenerate=False, mc_answer=False, cot_answer=False, dedup_text=False, dedup_corpus=False)
    for k, v in on.items():
        setattr(cfg, k, v)
    return cfg


def test_good_pairs_pass_every_filter():
    gate = QualityGate()
    assert gate.filter(GOOD) == GOOD and not gate.drops and gate.checked == 4


def test_degenerate_responses():
    cfg = off(degenerate=True)
    assert drop_reason(Pair("Q?", "  "), cfg) == "empty_response"
    assert drop_reason(Pair("Q?", "?!. --"), cfg) == "degenerate"
    assert drop_reason(Pair("Q?", "yes " * 12), cfg) == "degenerate"
    assert drop_reason(Pair("Q1: Q1: Q1: Q1: Q1: Q1: Q1: Q1: Q1:", "fine"), cfg) == "degenerate"
    assert drop_reason(Pair("What binds the receptor?", "what binds the receptor"), cfg) == "degenerate"
    assert drop_reason(Pair("Q?", "No."), cfg) is None
    assert drop_reason(Pair("Q?", "  "), off()) is None  # switched off


def test_multiple_choice_answer_must_be_an_option():
    cfg = off(mc_answer=True)
    mc = multiple_choice("Which organ makes bile?", OPTIONS)
    assert drop_reason(Pair(mc, " LIVER!"), cfg) is None  # case and punctuation do not matter
    assert drop_reason(Pair(mc, "Pancreas"), cfg) == "mc_answer_not_in_options"
    assert drop_reason(Pair(mc, "B"), cfg) == "mc_answer_not_in_options"  # a letter turns wrong once shuffled
    assert drop_reason(Pair("Which one?\nOptions:\nno list here", "Liver"), cfg) == "mc_bad_options"
    cot = Pair(*chain_of_thought(mc, "Bile is made in the liver.", "Kidney"))
    assert drop_reason(cot, cfg) == "mc_answer_not_in_options"
    assert drop_reason(Pair(mc, "Pancreas"), off()) is None


def test_chain_of_thought_needs_a_final_answer():
    cfg = off(cot_answer=True)
    assert drop_reason(Pair("Let's think step by step.", "Because. Therefore, the answer is x"), cfg) \
        == "cot_without_question"
    assert drop_reason(Pair("Is it dose dependent?\nLet's think step by step.", "Let's think step by step."), cfg) \
        == "cot_without_final_answer"
    assert drop_reason(Pair(*chain_of_thought("Is it?", "Doses rose.", "")), cfg) == "cot_without_final_answer"
    assert drop_reason(Pair(*chain_of_thought("Is it?", "", "yes")), cfg) == "cot_without_rationale"
    assert drop_reason(GOOD[2], cfg) is None and drop_reason(GOOD[3], cfg) is None
    assert drop_reason(Pair("Is it?\nLet's think step by step.", "yes"), off()) is None


def test_dedup_within_text_and_across_corpus():
    assert normalize("  What  is IT? ") == normalize("what is it") and question_hash("A, b!") == question_hash("a b")
    gate = QualityGate(off(dedup_text=True, dedup_corpus=True))
    text1 = [Pair("What is it?", "One."), Pair("what is  IT", "Two."), Pair("Why?", "Three.")]
    assert gate.filter(text1) == [text1[0], text1[2]]
    assert gate.drops == Counter({"duplicate_in_text": 1})
    text2 = [Pair("WHY", "Again."), Pair("How?", "New.")]
    assert gate.filter(text2) == [text2[1]]
    assert gate.drops == Counter({"duplicate_in_text": 1, "duplicate_in_corpus": 1})
    only_text = QualityGate(off(dedup_text=True))
    assert only_text.filter(text1) == [text1[0], text1[2]] and only_text.filter(text2) == text2
    only_corpus = QualityGate(off(dedup_corpus=True))  # repeats inside one text are kept ...
    assert only_corpus.filter(text1) == text1 and only_corpus.filter(text2) == [text2[1]]  # ... across texts not
    assert QualityGate(QualityConfig(enabled=False)).filter(text1 + text1) == text1 + text1


def test_gate_in_synthesized_documents(tmp_path):
    recs = [{"id": "t0", "text": "Text zero.", "round": 0, "slot": 0, "linked": False,
             "pairs": [p.to_dict() for p in GOOD[:2]] + [{"instruction": "Q?", "response": ""}]},
            {"id": "t1", "text": "Text one.", "round": 1, "slot": 0, "linked": True,
             "pairs": [GOOD[0].to_dict()]}]  # its only pair repeats t0's: t1 stays in the chain as raw text
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    gate, stats = QualityGate(), Counter()
    [doc] = list(synthesized_documents([tmp_path], 0, stats, pair_filters=[gate.filter_texts]))
    assert gate.drops == Counter({"empty_response": 1, "duplicate_in_corpus": 1})
    assert stats["pairs"] == 2 and stats["entries"] == 2
    assert doc["text"].count("What does the protein bind?") == 1 and "Text one." in doc["text"]
    assert recs[0]["pairs"][2] == {"instruction": "Q?", "response": ""}  # the input records are not changed


def test_batches_decide_as_texts_one_after_another():
    import random

    rng = random.Random(0)
    texts = [[Pair(f"Question {rng.randint(0, 40)}?", "Some answer.") for _ in range(rng.randint(0, 6))]
             for _ in range(300)]
    for cfg in (QualityConfig(), off(dedup_corpus=True), off(dedup_text=True)):
        one_by_one = QualityGate(cfg)
        expected = [one_by_one.filter(t) for t in texts]
        batched = QualityGate(cfg)
        got = batched.filter_texts(texts[:100]) + batched.filter_texts(texts[100:101]) + batched.filter_texts(texts[101:])
        assert got == expected and batched.drops == one_by_one.drops
        assert batched.checked == one_by_one.checked == sum(map(len, texts))
        seen = [p.instruction for t in expected for p in t]
        if cfg.dedup_corpus and cfg.dedup_text:
            assert len(seen) == len(set(seen)) == len({p.instruction for t in texts for p in t})


def test_hash_runs_hold_every_hash_in_few_runs():
    import numpy as np

    from megatron_ipt.corpora.quality import HashRuns

    runs, rng, held = HashRuns(), np.random.default_rng(0), []
    for _ in range(200):
        new = np.unique(rng.integers(0, 2**63, 50, dtype=np.uint64))
        new = new[~runs.contains(new)]
        runs.add(new)
        held.append(new)
    every = np.concatenate(held)
    assert runs.contains(every).all() and len(runs) == len(every) and runs.nbytes == 8 * len(every)
    assert not runs.contains(rng.integers(0, 2**63, 1000, dtype=np.uint64)).any()
    assert len(runs.runs) <= 12 and all((np.diff(r.astype(np.float64)) > 0).all() for r in runs.runs)
