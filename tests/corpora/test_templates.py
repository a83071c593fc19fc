"""Templates: determinism, purity, variety, and correct multiple-choice / chain-of-thought rendering."""

from __future__ import annotations

import copy
import re
from collections import Counter

from megatron_ipt.corpora.templates import (
    OPTION_MARKERS,
    QA_TEMPLATES,
    anatomy,
    render_chain,
    render_instruction,
)
from megatron_ipt.synth.format import MARKERS, Pair, chain_of_thought, multiple_choice

OPTIONS = ["Heart", "Liver", "Lung", "Kidney"]
PAIRS = [
    Pair("What does the protein bind?", "The receptor."),
    Pair(multiple_choice("Which organ makes bile?", OPTIONS), "Liver"),
    Pair(*chain_of_thought("Is the effect dose dependent?", "Higher doses gave larger effects.", "yes")),
    Pair(*chain_of_thought(multiple_choice("Which drug worked?", ["A-12", "B-7"]), "Only B-7 cut symptoms.", "B-7")),
]
CHAIN = [("First abstract about bile.", PAIRS), ("Second abstract, a follow-up.", PAIRS[:2])]


def test_anatomy_of_each_kind():
    kinds = [anatomy(p) for p in PAIRS]
    assert [a.kind for a in kinds] == ["qa", "mc", "cot", "mc_cot"]
    assert kinds[1].question == "Which organ makes bile?" and kinds[1].options == tuple(OPTIONS)
    assert kinds[2].rationale == "Higher doses gave larger effects." and kinds[2].answer == "yes"
    assert kinds[3].options == ("A-12", "B-7") and kinds[3].answer == "B-7"
    # A malformed options block stays part of the question instead of being half-parsed.
    assert anatomy(Pair("Q?\nOptions:\nnot a list", "x")).kind == "qa"


def test_same_seed_same_document_and_input_untouched():
    before = copy.deepcopy(CHAIN)
    docs = [render_chain(CHAIN, seed) for seed in range(50)]
    assert CHAIN == before  # rendering never mutates its input ...
    assert [render_chain(CHAIN, seed) for seed in range(50)] == docs  # ... so a second call is identical
    assert len({d.text for d in docs}) > 40


def test_layout_variety_and_shares():
    counts = Counter()
    inverted = 0
    qa_used = set()
    for seed in range(2000):
        r = render_chain(CHAIN, seed)
        counts[r.layout] += 1
        inverted += r.inverted
        for t in QA_TEMPLATES:
            head = t.split("{q}")[0]
            if r.layout == "classic" and head and head in r.text:
                qa_used.add(head)
    assert set(counts) == {"classic", "dialogue", "numbered", "fewshot", "next_turn"}
    assert 0.77 < counts["classic"] / 2000 < 0.85
    assert all(0.03 < counts[k] / 2000 < 0.07 for k in ("dialogue", "numbered", "fewshot", "next_turn"))
    assert 0.03 < inverted / 2000 < 0.07
    assert len(qa_used) >= 8


def test_single_pair_entries_never_get_multi_pair_layouts():
    chain = [("Only one pair here.", PAIRS[:1]), ("Two here.", PAIRS[:2])]
    layouts = {render_chain(chain, seed).layout for seed in range(1000)}
    assert layouts == {"classic", "dialogue"}


def test_no_format_markers_and_every_answer_present():
    for seed in range(300):
        text = render_chain(CHAIN, seed).text
        assert not any(m in text for m in MARKERS)
        assert "First abstract about bile." in text and "Second abstract, a follow-up." in text
        assert "The receptor." in text and "Higher doses gave larger effects." in text


def test_options_shuffled_and_lettered_answer_points_at_the_right_option():
    orders, letters = set(), 0
    mc = [("Text.", [PAIRS[1]])]
    for seed in range(400):
        text = render_chain(mc, seed).text
        found = [o for o in OPTIONS if o in text]
        if len(found) < 4:
            assert "Liver" in text  # options dropped: the answer is the option text
            continue
        orders.add(tuple(sorted(OPTIONS, key=text.index)))
        for kind, line, answer_fmt in OPTION_MARKERS:
            if kind == "none":
                continue
            pattern = re.escape(line).replace(r"\{L\}", r"(\w)").replace(r"\{o\}", "Liver")
            hit = re.search(pattern, text)
            kind_of = {"upper": str.isupper, "lower": str.islower, "digit": str.isdigit}[kind]
            if hit and kind_of(hit.group(1)):
                last_option = max(text.index(o) + len(o) for o in OPTIONS)
                after = text[last_option:]
                answer = answer_fmt.format(L=hit.group(1), o="Liver")
                assert answer in after, (text, answer)
                others = {_ for _ in {"upper": "ABCD", "lower": "abcd", "digit": "1234"}[kind] if _ != hit.group(1)}
                assert not others & set(re.findall(r"\b(\w)\b", after)), text
                letters += 1
                break
    assert len(orders) >= 12  # many of the 24 orders occur
    assert letters > 50


def test_raw_chain_and_instruction_rendering():
    r = render_chain([("Just text.", []), ("More text.", [])], 3)
    assert (r.text, r.layout, r.inverted) == ("Just text.\n\nMore text.", "raw", False)
    assert render_instruction("  What is 2+2? ", "4.\n") == "What is 2+2? 4."
    rec = {"text": "Dict entry.", "pairs": [{"instruction": "Q?", "response": "A."}]}
    assert "Dict entry." in render_chain([rec], 0).text
