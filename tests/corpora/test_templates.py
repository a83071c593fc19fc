"""Templates: determinism, purity, variety, and correct multiple-choice / chain-of-thought rendering."""

from __future__ import annotations

import copy
import random
import re
from collections import Counter

import pytest

from megatron_ipt.corpora import templates as T
from megatron_ipt.corpora.templates import (
    OPTION_MARKERS,
    QA_TEMPLATES,
    anatomy,
    choose_style,
    render_chain,
    render_instruction,
)
from megatron_ipt.pairs import MARKERS, Pair, chain_of_thought, multiple_choice

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


def test_pool_sizes_within_twice_the_reference():
    assert len(T.QA_TEMPLATES) >= 40 and len(T.COT_TEMPLATES) >= 100 and len(T.MC_COT_TEMPLATES) >= 120
    assert len(T.OPTION_MARKERS) >= 40 and len(T.MC_TEMPLATES) >= 24
    for pool in (T.READ_PREFIXES, T.LEAD_INS):  # half the chains get none
        worded = [p for p in pool if p]
        assert len(worded) >= 40 and pool.count("") == len(worded)
    assert len(T.SPEAKERS) >= 25 and len(T.NUMBERED_STYLES) >= 6 and len(T.FEWSHOT_STYLES) >= 5
    assert len(T.NEXT_TURN_PHRASES) >= 8


POOLS = {name: getattr(T, name) for name in (
    "READ_PREFIXES_WORDED", "LEAD_INS_WORDED", "QA_TEMPLATES", "MC_TEMPLATES", "MC_NO_OPTIONS_TEMPLATES",
    "COT_TEMPLATES", "MC_COT_TEMPLATES", "OPTION_MARKERS", "SPEAKERS", "DIALOGUE_INTROS", "NUMBERED_STYLES",
    "FEWSHOT_STYLES", "FEWSHOT_RATIONALES", "FLAT_RATIONALES", "NEXT_TURN_PHRASES", "INVERTED_TEXT_PREFIXES")}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_no_duplicate_entries(name):
    pool = [p for p in POOLS[name] if p]  # the empty entries of the intro pools are deliberate
    assert len(pool) == len(set(pool)), [p for p, n in Counter(pool).items() if n > 1]


def _renders_in_order(template: str, **values: str) -> None:
    out = template.format(**values)
    positions = [out.index(v) for v in values.values()]
    assert positions == sorted(positions), (template, out)
    assert all(out.count(v) == 1 for v in values.values()), template
    assert "{" not in out and "}" not in out, template


def test_every_template_renders_all_its_placeholders_in_order():
    q, o, r, a = "QQQ", "OOO", "RRR", "AAA"
    for t in T.QA_TEMPLATES + T.MC_NO_OPTIONS_TEMPLATES:
        _renders_in_order(t, q=q, a=a)
    for t in T.MC_TEMPLATES:
        _renders_in_order(t, q=q, o=o, a=a)
    for t in T.COT_TEMPLATES:
        _renders_in_order(t, q=q, r=r, a=a)
    for t in T.MC_COT_TEMPLATES:
        _renders_in_order(t, q=q, o=o, r=r, a=a)
    for t in T.FEWSHOT_RATIONALES:  # inline few-shot: the answer, then why
        _renders_in_order(t, a=a, r=r)
    for t in T.FLAT_RATIONALES:
        _renders_in_order(t, r=r, a=a)
    for q_head, q_line, a_head, a_line in T.NUMBERED_STYLES:
        assert q_head and a_head
        _renders_in_order(q_line, i="7", q=q)
        _renders_in_order(a_line, i="7", a=a)
    for _intro, example, final in T.FEWSHOT_STYLES:
        _renders_in_order(example, q=q, a=a)
        _renders_in_order(final, q=q, a=a)
    for kind, line, answer in T.OPTION_MARKERS:
        if kind == "none":
            assert answer == "{o}"
            _renders_in_order(line, o=o)
        else:
            _renders_in_order(line, L="L", o=o)
            assert "L" in answer.format(L="L", o=o)
    for text in T.READ_PREFIXES_WORDED + T.LEAD_INS_WORDED:
        assert text[0].isupper() and "{" not in text
    for text in T.LEAD_INS_WORDED:  # one sentence
        assert text.endswith((".", "?")) and "\n" not in text


QA3 = [Pair(f"Question number {k} about QTOKEN{k}?", f"Reply number {k} ATOKEN{k}.") for k in range(3)]


def _seeds_with(layout: str, chain, n: int = 20) -> list[int]:
    found = [s for s in range(3000) if render_chain(chain, s).layout == layout]
    assert len(found) >= n, layout
    return found[:n]


def test_numbered_lists_all_questions_then_all_answers():
    chain = [("Body text.", QA3)]
    for seed in _seeds_with("numbered", chain):
        text = render_chain(chain, seed).text
        last_question = max(text.index(f"QTOKEN{k}") for k in range(3))
        first_answer = min(text.index(f"ATOKEN{k}") for k in range(3))
        assert last_question < first_answer, text
        assert [text.index(f"QTOKEN{k}") for k in range(3)] == sorted(text.index(f"QTOKEN{k}") for k in range(3))


def test_lead_in_is_one_sentence_after_the_text():
    chain = [("Body text one.", QA3), ("Body text two.", QA3[:2]), ("Body text three.", QA3[:1])]
    checked = 0
    for seed in range(400):
        style = choose_style(random.Random(seed), 1)  # render_chain's first draws
        doc = render_chain(chain, seed)
        one = T.LEAD_IN_SINGULAR.get(style.lead_in, "")
        if doc.layout != "classic" or doc.inverted or not style.lead_in:
            assert not style.lead_in or (style.lead_in not in doc.text and one not in doc.text)
            continue
        # once per entry, not once per question; the singular form for the one-pair entry
        assert doc.text.count(style.lead_in) == 2 + (one == style.lead_in) and one in doc.text
        for body, lead in (("Body text one.", style.lead_in), ("Body text two.", style.lead_in),
                           ("Body text three.", one)):
            after = doc.text.index(body) + len(body)
            assert doc.text.index(lead, after) - after <= 2  # right after the text (a line break)
        checked += 1
    assert checked > 100
    assert len(set(T.LEAD_IN_SINGULAR.values())) > 40 and "Answer the question below based on the passage." in (
        T.LEAD_IN_SINGULAR.values())


def test_inline_fewshot_puts_the_rationale_after_the_answer():
    cot = Pair(*chain_of_thought("Is the effect QTOKENX?", "Because RTOKENX held.", "ATOKENX"))
    chain = [("Body.", [QA3[0], cot, QA3[1]])]
    for seed in _seeds_with("fewshot", chain):
        text = render_chain(chain, seed).text
        assert text.index("QTOKENX") < text.index("ATOKENX") < text.index("RTOKENX"), text
    for layout in ("dialogue", "numbered", "next_turn"):  # the other flat layouts reason, then answer
        for seed in _seeds_with(layout, chain, 5):
            text = render_chain(chain, seed).text
            assert text.index("RTOKENX") < text.index("ATOKENX"), text


def test_only_classic_chains_invert():
    layouts = Counter()
    for seed in range(3000):
        doc = render_chain(CHAIN, seed)
        if doc.inverted:
            layouts[doc.layout] += 1
            assert doc.text.index("Which organ makes bile?") < doc.text.index("First abstract about bile.")
    assert set(layouts) == {"classic"} and 0.03 < layouts["classic"] / 3000 < 0.07


def test_answer_maps_to_its_label_under_the_quality_gates_normalization():
    import dataclasses

    a = anatomy(Pair(multiple_choice("Which organ makes bile?", OPTIONS), " LIVER!"))
    style = dataclasses.replace(choose_style(random.Random(0), 1), marker=("upper", "{L}. {o}", "{L}"))
    for seed in range(10):
        block, answer = T._options_and_answer(a, style, random.Random(seed))
        assert block.splitlines()[ord(answer) - ord("A")] == f"{answer}. Liver"
