"""The PubMed task miner, on a hand-written XML file (tests/tuning/conftest.py) and the shipped baseline."""

from __future__ import annotations

from pathlib import Path

from megatron_ipt.pairs import COT_ANSWER, COT_TRIGGER, OPTIONS_HEADER
from megatron_ipt.tuning.pubmed import (
    iter_pubmed_records,
    shipped_pubmed_files,
)
from megatron_ipt.tuning.pubmed_mining import (
    KEYWORDS_QUESTION,
    MESH_QUESTION,
    SECTION_QUESTIONS,
    STRUCTURED_DATASET,
    TITLE_QUESTION,
    UNSTRUCTURED_DATASET,
    mesh_term_pool,
    mine_pubmed,
    mine_record,
)


def test_miner_structured_holds_out_answer_section(xml: Path) -> None:
    recs = list(iter_pubmed_records([xml]))
    pool = ["Aspirin", "Mice", "Fever", "Dogs", "Sleep", "Heart", "Liver", "Kidney", "Lung"]
    seen_sections = set()
    cot = 0
    for seed in range(12):
        ex = mine_record(recs[0], pool, seed=seed)
        assert ex.dataset == STRUCTURED_DATASET and ex.source == "pmid:101"
        by_q = {p.instruction.split("\n")[0]: p for p in ex.pairs}
        section_q = [q for q in by_q if q in SECTION_QUESTIONS.values()]
        assert len(section_q) == 1
        answer = by_q[section_q[0]].response
        assert answer not in ex.context  # the answering section is not in the context
        seen_sections.add(section_q[0])
        assert by_q[TITLE_QUESTION].response == "Aspirin and fever in mice."
        assert by_q[KEYWORDS_QUESTION].response == "aspirin, fever"
        mc = by_q[MESH_QUESTION]
        assert OPTIONS_HEADER in mc.instruction
        options = mc.instruction.removesuffix(COT_TRIGGER).split(OPTIONS_HEADER)[1].split("\n")
        assert len(options) == 4 and all(o.startswith("- ") for o in options)
        assert sum(o[2:] in recs[0].mesh_terms for o in options) == 1  # one right answer
        final = mc.response.split(COT_ANSWER)[-1]
        assert final in recs[0].major_mesh_terms
        if mc.instruction.endswith(COT_TRIGGER):
            assert COT_ANSWER in mc.response
            cot += 1
    assert len(seen_sections) >= 3  # the held-out section varies with the seed
    assert 0 < cot < 12  # both plain and chain-of-thought variants occur


def test_miner_is_deterministic_and_order_free(xml: Path) -> None:
    recs = list(iter_pubmed_records([xml]))
    a = list(mine_pubmed(recs, seed=3))
    b = list(mine_pubmed(list(reversed(recs)), seed=3))
    assert sorted(map(repr, a)) == sorted(map(repr, b))
    assert [e.dataset for e in a] == [STRUCTURED_DATASET, UNSTRUCTURED_DATASET]
    unstructured = a[1]
    assert unstructured.context == "Dogs sleep fourteen hours a day."
    assert [e.source for e in mine_pubmed(recs, structured_only=True)] == ["pmid:101"]


def test_diverse_miner_varies_phrasings_and_adds_families() -> None:
    """On real shipped records: many families, several phrasings each, every pair traceable to its
    family, answer styles free-form, multiple choice and chain of thought."""
    from collections import Counter

    from megatron_ipt.tuning.pubmed_mining import TUNING_PHRASINGS, tuning_template_of

    recs = list(iter_pubmed_records([shipped_pubmed_files()[1]], limit=600))
    pool = mesh_term_pool(recs)
    families: Counter = Counter()
    phrasings: dict[str, set[str]] = {}
    styles: Counter = Counter()
    n_examples = n_pairs = 0
    for rec in recs:
        if not rec.structured:
            continue
        ex = mine_record(rec, pool, seed=0, diverse=True)
        if ex is None:
            continue
        n_examples += 1
        for p in ex.pairs:
            n_pairs += 1
            match = tuning_template_of(p.instruction)
            assert match is not None, p.instruction
            families[match[0]] += 1
            phrasings.setdefault(match[0], set()).add(match[1])
            styles["cot" if p.instruction.endswith(COT_TRIGGER) else "mc" if OPTIONS_HEADER in p.instruction
                   else "free"] += 1
            assert p.response.strip()
    assert n_pairs / n_examples >= 3
    assert len(families) >= 10 and set(families) <= set(TUNING_PHRASINGS)
    assert sum(len(v) >= 2 for v in phrasings.values()) >= 8
    assert styles["free"] and styles["mc"] and styles["cot"]
    # The plain miner still asks the original four questions in their original wording.
    plain = mine_record(next(r for r in recs if r.structured), pool, seed=0)
    assert plain is not None and all(tuning_template_of(p.instruction)[1] in (
        *SECTION_QUESTIONS.values(), TITLE_QUESTION, KEYWORDS_QUESTION, MESH_QUESTION) for p in plain.pairs)
