"""Converters: the published collection layout, SQuAD JSON, plain JSONL, PubMed XML; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_ipt.pairs import Pair
from megatron_ipt.tuning.collections import detect_format, read_examples
from megatron_ipt.tuning.example import ConvertError, ConvertStats, Example


def write_lines(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def make_collection(root: Path) -> Path:
    write_lines(
        root / "squad" / "shard" / "00000.jsonl",
        [
            {
                "context": "Paris is in France.",
                "QA_list": [{"Q": "Where is Paris?", "A": "France"}],
                "QA_type": "free-form",
                "rc_name": "squad",
            },
            {
                "context": "Ice is cold.",
                "QA_list": [{"Q": "Is ice cold?", "A": "yes"}, {"Q": "What is cold?", "A": "Ice"}],
                "QA_type": "free-form",
                "rc_name": "squad",
            },
        ],
    )
    write_lines(
        root / "race" / "shard" / "00000.jsonl",
        [{"context": "Tom has a dog.", "QA_list": [["What does Tom have?", "a dog"]], "QA_type": "mc"}],
    )
    (root / "race" / "json").mkdir()
    (root / "race" / "json" / "valid.json").write_text('[{"source": "shard/00000.jsonl"}]')
    return root


def test_collection_layout(tmp_path: Path) -> None:
    root = make_collection(tmp_path / "coll")
    assert detect_format(root) == "collection"
    stats = ConvertStats()
    exs = list(read_examples(root, "auto", stats))
    assert [(e.dataset, e.context) for e in exs] == [
        ("race", "Tom has a dog."),  # no rc_name: the dataset folder's name
        ("squad", "Paris is in France."),
        ("squad", "Ice is cold."),
    ]
    assert exs[0].pairs == [Pair("What does Tom have?", "a dog")]
    assert exs[2].pairs[1] == Pair("What is cold?", "Ice")
    assert exs[1].source.endswith("squad/shard/00000.jsonl:1")
    assert stats.records == 3 and stats.examples == 3 and not stats.skipped
    # one dataset folder, or one shard file, works too
    assert len(list(read_examples(root / "squad", "collection"))) == 2
    assert detect_format(root / "race" / "shard" / "00000.jsonl") == "collection"


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ("{not json", None, "bad_json"),
        ('{"QA_list": []}', "context", "missing_field"),
        ('{"context": "c", "QA_list": "x"}', "QA_list", "missing_field"),
        ('{"context": "c", "QA_list": [{"foo": 1}]}', "QA_list", "bad_field"),
        ('{"context": 3, "QA_list": []}', "context", "bad_field"),
        ("[1, 2]", None, "bad_json"),
    ],
)
def test_collection_bad_lines(tmp_path: Path, line: str, field: str | None, reason: str) -> None:
    f = write_lines(
        tmp_path / "d" / "shard" / "00000.jsonl", [{"context": "ok", "QA_list": [["q", "a"]]}, line]
    )
    with pytest.raises(ConvertError) as err:
        list(read_examples(f, "collection"))
    assert f"{f}:2" in str(err.value)
    if field:
        assert f"field '{field}'" in str(err.value)
    stats = ConvertStats()
    exs = list(read_examples(f, "collection", stats, skip_bad=True))
    assert len(exs) == 1 and stats.skipped == {reason: 1} and stats.records == 2
    assert f"{f}:2" in stats.first_errors[0]


def test_squad(tmp_path: Path) -> None:
    doc = {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "The sky is blue.",
                        "qas": [
                            {
                                "question": "What colour is the sky?",
                                "answers": [{"text": "blue", "answer_start": 11}],
                                "is_impossible": False,
                            },
                            {
                                "question": "Why?",
                                "answers": [],
                                "is_impossible": True,
                                "plausible_answers": [],
                            },
                        ],
                    },
                    {
                        "context": "Nothing to ask.",
                        "qas": [{"question": "Q?", "answers": [], "is_impossible": True}],
                    },
                ],
            }
        ],
    }
    f = tmp_path / "dev-v2.0.json"
    f.write_text(json.dumps(doc))
    assert detect_format(f) == "squad"
    stats = ConvertStats()
    exs = list(read_examples(f, "auto", stats, dataset="squad2"))
    assert [e.dataset for e in exs] == ["squad2", "squad2"]
    assert exs[0].pairs == [Pair("What colour is the sky?", "blue")]
    assert exs[1].pairs == []  # the builder counts it as "no_pairs"
    assert stats.skipped["unanswerable_question"] == 2
    assert list(read_examples(f, "squad"))[0].dataset == "dev-v2.0"  # default: file stem
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"] = [{"start": 1}]
    f.write_text(json.dumps(doc))
    with pytest.raises(ConvertError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: field 'text'"):
        list(read_examples(f, "squad"))
    f.write_text('{"data": [')
    with pytest.raises(ConvertError, match="invalid JSON"):
        list(read_examples(f, "squad"))


def test_plain_jsonl(tmp_path: Path) -> None:
    f = write_lines(
        tmp_path / "tasks.jsonl",
        [
            {"context": "c1", "pairs": [{"instruction": "i1", "response": "r1"}], "dataset": "mine"},
            {"context": "c2", "pairs": [{"instruction": "i2", "response": "r2"}]},
            "",
            {"context": "c3", "pairs": [{"instruction": "i3"}]},
        ],
    )
    assert detect_format(f) == "jsonl"
    with pytest.raises(ConvertError, match=r"tasks.jsonl:4: field 'response': missing"):
        list(read_examples(f))
    stats = ConvertStats()
    exs = list(read_examples(f, "jsonl", stats, skip_bad=True))
    assert [(e.dataset, e.context) for e in exs] == [("mine", "c1"), ("tasks", "c2")]
    assert stats.skipped == {"missing_field": 1}
    ex = exs[0]
    assert Example.from_dict(ex.to_dict()) == ex


PUBMED_XML = """<?xml version="1.0"?>
<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>7</PMID><Article>
<Journal><JournalIssue><PubDate><Year>2020</Year></PubDate></JournalIssue><Title>J</Title></Journal>
<ArticleTitle>Seven.</ArticleTitle><Abstract>
<AbstractText Label="METHODS" NlmCategory="METHODS">We counted.</AbstractText>
<AbstractText Label="CONCLUSIONS" NlmCategory="CONCLUSIONS">Seven is odd.</AbstractText>
</Abstract></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>
"""


def test_pubmed_input_and_detection(tmp_path: Path) -> None:
    f = tmp_path / "mini.xml"
    f.write_text(PUBMED_XML)
    assert detect_format(f) == "pubmed" and detect_format(tmp_path) == "pubmed"
    stats = ConvertStats()
    exs = list(read_examples(f, "auto", stats))
    assert len(exs) == 1 and exs[0].dataset == "pubmed_structured" and stats.records == 1
    assert any(p.instruction == "Suggest a title for this abstract." for p in exs[0].pairs)


def test_unknown_inputs(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConvertError, match="pass --format"):
        detect_format(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="pass --format"):
        detect_format(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown format"):
        list(read_examples(tmp_path / "x.txt", "csv"))
