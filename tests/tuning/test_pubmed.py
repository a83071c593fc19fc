"""PubMed reader, raw-corpus writer and task miner, on a hand-written XML file and the shipped baseline."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from megatron_ipt.pairs import COT_ANSWER, COT_TRIGGER, OPTIONS_HEADER
from megatron_ipt.tuning.pubmed import (
    KEYWORDS_QUESTION,
    MESH_QUESTION,
    SECTION_QUESTIONS,
    STRUCTURED_DATASET,
    TITLE_QUESTION,
    UNSTRUCTURED_DATASET,
    iter_pubmed_records,
    load_pubmed_records,
    mesh_term_pool,
    mine_pubmed,
    mine_record,
    shipped_pubmed_files,
    write_raw_corpus,
)

ARTICLE = """
  <PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM">
    <PMID Version="1">{pmid}</PMID>
    <Article PubModel="Print">
      <Journal><JournalIssue><PubDate>{date}</PubDate></JournalIssue><Title>{journal}</Title></Journal>
      <ArticleTitle>{title}</ArticleTitle>
      {abstract}
    </Article>
    <MeshHeadingList>{mesh}</MeshHeadingList>
    {keywords}
  </MedlineCitation></PubmedArticle>"""

STRUCTURED_ABSTRACT = """<Abstract>
  <AbstractText Label="BACKGROUND" NlmCategory="BACKGROUND">Aspirin may lower <i>fever</i>  in mice.</AbstractText>
  <AbstractText Label="METHODS" NlmCategory="METHODS">We gave aspirin to 20 mice.</AbstractText>
  <AbstractText Label="RESULTS" NlmCategory="RESULTS">Fever fell by 2 degrees.</AbstractText>
  <AbstractText Label="CONCLUSIONS" NlmCategory="CONCLUSIONS">Aspirin lowers fever in mice.</AbstractText>
  <AbstractText Label="BENTHAM SCIENCE DISCLAIMER">It is a condition of publication that...</AbstractText>
</Abstract>"""


def _mesh(*terms: tuple[str, str]) -> str:
    return "".join(
        f'<MeshHeading><DescriptorName UI="D1" MajorTopicYN="{yn}">{t}</DescriptorName></MeshHeading>'
        for t, yn in terms
    )


def write_xml(path: Path) -> Path:
    arts = [
        ARTICLE.format(
            pmid="101",
            date="<Year>2001</Year>",
            journal="J Mice",
            title="Aspirin and fever in mice.",
            abstract=STRUCTURED_ABSTRACT,
            mesh=_mesh(("Aspirin", "Y"), ("Mice", "N"), ("Fever", "Y")),
            keywords="<KeywordList><Keyword>aspirin</Keyword><Keyword>fever</Keyword></KeywordList>",
        ),
        ARTICLE.format(
            pmid="102",
            date="<MedlineDate>1980 Jan-Feb</MedlineDate>",
            journal="J Dogs",
            title="Dogs sleep a lot.",
            abstract="<Abstract><AbstractText>Dogs sleep fourteen hours a day.</AbstractText></Abstract>",
            mesh=_mesh(("Dogs", "N"), ("Sleep", "Y")),
            keywords="",
        ),
        ARTICLE.format(
            pmid="103",
            date="<Year>1999</Year>",
            journal="J X",
            title="No abstract here.",
            abstract="",
            mesh=_mesh(("Heart", "N"), ("Liver", "N"), ("Kidney", "N"), ("Lung", "N")),
            keywords="",
        ),
    ]
    text = '<?xml version="1.0"?>\n<PubmedArticleSet>' + "".join(arts) + "\n</PubmedArticleSet>\n"
    with gzip.open(path, "wt") as fh:
        fh.write(text)
    return path


@pytest.fixture
def xml(tmp_path: Path) -> Path:
    return write_xml(tmp_path / "mini.xml.gz")


def test_reader_keeps_sections_mesh_keywords(xml: Path) -> None:
    recs = list(iter_pubmed_records([xml]))
    assert [r.pmid for r in recs] == ["101", "102"]  # 103 has no abstract
    a, b = recs
    assert [s.label for s in a.sections] == [
        "BACKGROUND",
        "METHODS",
        "RESULTS",
        "CONCLUSIONS",
    ]  # disclaimer dropped
    assert a.sections[0].text == "Aspirin may lower fever in mice."  # inline markup and spaces flattened
    assert a.mesh_terms == ["Aspirin", "Mice", "Fever"] and a.major_mesh_terms == ["Aspirin", "Fever"]
    assert a.keywords == ["aspirin", "fever"] and a.journal == "J Mice" and a.year == "2001"
    assert a.structured and not b.structured
    assert a.abstract.splitlines()[1] == "METHODS: We gave aspirin to 20 mice."
    assert b.abstract == "Dogs sleep fourteen hours a day." and b.year == "1980"
    assert [r.pmid for r in iter_pubmed_records([xml], with_abstract=False)] == ["101", "102", "103"]
    assert len(list(iter_pubmed_records([xml], limit=1))) == 1


def test_reader_on_shipped_baseline() -> None:
    files = shipped_pubmed_files()
    assert [f.name for f in files] == ["pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz"]
    recs = list(iter_pubmed_records([files[1]], limit=200))
    assert len(recs) == 200 and all(r.pmid.isdigit() and r.sections for r in recs)
    structured = [r for r in recs if r.structured]
    assert structured, "the 2021 baseline has structured abstracts"
    cats = {s.category for r in structured for s in r.sections}
    assert {"METHODS", "RESULTS", "CONCLUSIONS"} <= cats


def test_record_cache_roundtrip(xml: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "records.jsonl"
    first = load_pubmed_records([xml], cache=cache)
    assert cache.exists()
    cache.write_text(cache.read_text().replace("Dogs sleep", "Cats sleep"))  # prove the cache is read
    second = load_pubmed_records([xml], cache=cache)
    assert second[1].abstract.startswith("Cats sleep") and second[0] == first[0]
    assert load_pubmed_records([xml], cache=cache, limit=1)[0].pmid == "101"  # other args: re-read


def test_raw_corpus_is_written_atomically_as_id_and_text(tmp_path: Path) -> None:
    recs = list(iter_pubmed_records([shipped_pubmed_files()[1]], limit=300))
    out = tmp_path / "raw.jsonl"
    assert write_raw_corpus(out, recs) == 300
    docs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [d["id"] for d in docs] == [f"pmid:{r.pmid}" for r in recs]
    assert set(docs[0]) == {"id", "text"} and docs[0]["text"] == recs[0].abstract
    assert not list(tmp_path.glob(".*tmp*"))
    assert write_raw_corpus(out, recs[:5]) == 5 and len(out.read_text().splitlines()) == 5


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

    from megatron_ipt.tuning.pubmed import TUNING_PHRASINGS, tuning_template_of

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
