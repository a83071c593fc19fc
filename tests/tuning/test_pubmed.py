"""PubMed reader and raw-corpus writer, on a hand-written XML file (tests/tuning/conftest.py) and the shipped baseline."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_ipt.tuning.pubmed import (
    iter_pubmed_records,
    load_pubmed_records,
    shipped_pubmed_files,
    write_raw_corpus,
)


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
