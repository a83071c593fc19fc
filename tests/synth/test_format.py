from megatron_ipt.pairs import (
    Pair,
    chain_of_thought,
    example_segments,
    example_string,
    find_marker,
    multiple_choice,
    parse_pairs,
)


def test_golden_example_string():
    pairs = [Pair("What is X?", "Y."), Pair("Is it Z?", "No.")]
    assert example_string("Some text.", pairs) == (
        "<s> <CON> Some text. </CON>\n\n<QUE> What is X? <ANS> Y. </END>\n\n<QUE> Is it Z? <ANS> No. </END></s>"
    )
    segs = example_segments("Some text.", pairs)
    assert [s.get("special") for s in segs] == ["bos", None, None, "eos"]
    assert [s["loss"] for s in segs] == [False, False, True, True]
    assert segs[1]["text"] == " <CON> Some text. </CON>\n\n"


def test_golden_styles():
    assert multiple_choice("Pick one.", ["red", "blue"]) == "Pick one.\nOptions:\n- red\n- blue"
    assert chain_of_thought("Q?", "Because.", "B") == (
        "Q?\nLet's think step by step.",
        "Because.\nTherefore, the answer is B",
    )
    assert find_marker("a <ANS> b") == "<ANS>" and find_marker("plain") is None


def test_parse_rules():
    out = "<QUE> q1 <ANS> a1 </END>\n\n<QUE> Q1 <ANS> dup </END>\n\n<QUE> no answer </END>" \
          "<QUE> q <ANS> a <ANS> b </END>junk</END><QUE> q2 <ANS>  </END><QUE> q3 <ANS> a3 </END>"
    r = parse_pairs(out)
    assert r.pairs == [Pair("q1", "a1"), Pair("q3", "a3")]
    assert (r.duplicates, r.malformed, r.truncated) == (1, 4, False)
    r = parse_pairs("<QUE> q1 <ANS> a1 </END>\n\n<QUE> q2 <ANS> half")
    assert r.pairs == [Pair("q1", "a1")] and r.truncated and r.malformed == 0
    assert parse_pairs("").pairs == [] and not parse_pairs("").truncated
