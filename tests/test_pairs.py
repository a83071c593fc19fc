"""megatron_ipt.pairs: fuzzing `parse_pairs` (it never crashes and never loses a pair from well-formed output), the identity rule and the degenerate-text check."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_ipt.pairs import (
    ANS,
    END,
    MARKERS,
    QUE,
    Pair,
    exact_match,
    instruction_key,
    is_degenerate,
    normalize_answer,
    pair_text,
    pairs_text,
    parse_pairs,
    token_f1,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that is mostly markers and separators, to hit the parser's corners.
marker_soup = st.lists(
    st.one_of(st.sampled_from([*MARKERS, "\n\n", " ", "\n", "<", ">", "END>", "<QUE", "x"]), st.text(max_size=5)),
    max_size=40,
).map("".join)

clean_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40
).map(str.strip).filter(lambda s: s and not any(m in s for m in MARKERS))


@st.composite
def well_formed(draw):
    """Distinct (case-insensitively) pairs and the joiner between them."""
    instructions = draw(st.lists(clean_text, min_size=0, max_size=6, unique_by=instruction_key))
    pairs = [Pair(q, draw(clean_text)) for q in instructions]
    joiner = draw(st.sampled_from(["\n\n", "\n", " ", "", "\n\n\n"]))
    return pairs, joiner


@FUZZ
@given(st.one_of(st.text(max_size=200), marker_soup))
def test_never_crashes_and_counts_are_consistent(output):
    result = parse_pairs(output)
    pieces = output.split(END)
    finished = len(pieces) - 1
    assert len(result.pairs) + result.malformed + result.duplicates == finished
    assert result.truncated == bool(pieces[-1].strip())
    for p in result.pairs:
        assert p.instruction and p.response
        assert p.instruction == p.instruction.strip() and p.response == p.response.strip()
        assert QUE not in p.instruction and ANS not in p.instruction and ANS not in p.response
    assert len({instruction_key(p.instruction) for p in result.pairs}) == len(result.pairs)


@FUZZ
@given(well_formed(), st.sampled_from(["", "\n\n<QUE> cut off <ANS> hal", "\n\n<QUE> only a question", "  "]))
def test_no_pair_lost_from_well_formed_output(case, tail):
    pairs, joiner = case
    output = joiner.join(pair_text(p) for p in pairs) + tail
    result = parse_pairs(output)
    assert result.pairs == pairs
    assert result.malformed == 0 and result.duplicates == 0
    assert result.truncated == bool(tail.strip())


@FUZZ
@given(well_formed())
def test_repeated_instructions_keep_the_first(case):
    pairs, _ = case
    repeated = [Pair(p.instruction.upper(), p.response + " again") for p in pairs]
    result = parse_pairs(pairs_text(pairs + repeated))
    assert result.pairs == pairs
    assert result.duplicates == len(pairs)


def test_degenerate_detection():
    assert is_degenerate("<QUE> What is it? <ANS> Q3: Q3: Q3: Q3: Q3: Q3: Q3: Q3:")
    assert is_degenerate("ok " + "the cell the cell the cell the cell the cell ")
    assert not is_degenerate("<QUE> What is the role of insulin? <ANS> It lowers blood glucose. </END>")
    assert not is_degenerate("very very good")  # short emphasis is not a loop


def test_one_identity_rule_for_instructions():
    assert instruction_key("What is the objective?") == instruction_key("what is the OBJECTIVE")
    assert instruction_key("Straße?") == instruction_key("STRASSE")
    assert instruction_key("Ｗhat  is  it?") == instruction_key("what is it")  # NFKC, spacing
    assert instruction_key("What is it?") != instruction_key("What is this?")


def test_answer_scores() -> None:
    assert normalize_answer("The  Sky, is BLUE!") == "sky is blue"
    assert exact_match("the blue sky.", "Blue sky") == 1.0
    assert exact_match("blue", "red") == 0.0
    assert token_f1("blue sky today", "the blue sky") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("red", "blue") == 0.0


def test_normalisation_and_f1():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert token_f1("the cat sat", "Cat sat.") == 1.0
    assert token_f1("cat", "cat sat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0
