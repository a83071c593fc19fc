"""Converters from context-based task collections into tuning examples.

Every converter yields :class:`Example` ``(dataset, context, pairs)``; the tuning-data builder
(:mod:`megatron_ipt.tuning.tuning_data`) cleans, renders, groups and tokenizes them. Formats:

- ``collection``: the published tuning collection (``instruction-pretrain/ft-instruction-synthesizer-
  collection``): one folder per dataset with ``shard/*.jsonl`` files (layout confirmed from the
  dataset card) whose lines carry ``context``, ``QA_list``, ``QA_type`` and ``rc_name`` (column
  names seen in public loaders of it). ``QA_list`` items are ``{"Q", "A"}`` as in the release's own
  code (``read_compre.py`` formats ``qa_entry['Q']`` / ``qa_entry['A']``); the shard contents
  themselves could not be inspected offline, so ``question``/``answer``, ``instruction``/
  ``response`` and ``[question, answer]`` items are accepted too.
- ``squad``: SQuAD-style JSON: ``data -> paragraphs -> context, qas[question, answers[text],
  is_impossible]``.
- ``jsonl``: ``{"context", "pairs": [{"instruction", "response"}], "dataset"}`` per line.
- ``pubmed``: tasks mined from MEDLINE XML (:mod:`megatron_ipt.tuning.pubmed`).

Bad input raises :class:`ConvertError` naming file, line and field; with ``skip_bad`` the record
is skipped and counted in the :class:`ConvertStats` instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megatron_ipt.data.inputs import InputFile
from megatron_ipt.data.readers import scan_records
from megatron_ipt.pairs import Pair
from megatron_ipt.tuning.example import ConvertError, ConvertStats, Example
from megatron_ipt.tuning.pubmed import iter_pubmed_records
from megatron_ipt.tuning.pubmed_mining import mine_pubmed

FORMATS = ("auto", "collection", "squad", "jsonl", "pubmed")
# Spellings of a QA_list item's question/answer keys (see the module docstring).
_QA_KEYS = (
    ("Q", "A"),
    ("question", "answer"),
    ("instruction", "response"),
    ("q", "a"),
    ("Question", "Answer"),
)


def _need_str(obj: dict, key: str, where: str) -> str:
    if key not in obj:
        raise ConvertError(where, key, "missing", "missing_field")
    val = obj[key]
    if not isinstance(val, str):
        raise ConvertError(where, key, f"expected a string, got {type(val).__name__}", "bad_field")
    return val


def _qa_item(item: Any, where: str) -> Pair:
    if isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return Pair(item[0], item[1])
    if isinstance(item, dict):
        for qk, ak in _QA_KEYS:
            if qk in item and ak in item:
                q, a = item[qk], item[ak]
                if isinstance(a, list) and a and all(isinstance(x, str) for x in a):
                    a = a[0]  # several gold answers: the first one is the target
                if isinstance(q, str) and isinstance(a, str):
                    return Pair(q, a)
                raise ConvertError(where, f"QA_list.{qk}", "question and answer must be strings", "bad_field")
    raise ConvertError(where, "QA_list", f"unrecognised item {str(item)[:80]!r}", "bad_field")


def _jsonl_lines(path: Path, stats: ConvertStats, skip_bad: bool) -> Iterator[tuple[str, dict]]:
    for where, obj, bad in scan_records(InputFile(path, "jsonl")):
        stats.records += 1
        if bad is not None:
            err = ConvertError(where, None, f"invalid JSON: {bad.detail}", "bad_json")
            if not skip_bad:
                raise err
            stats.skip(err)
            continue
        assert obj is not None
        yield where, obj


def _guarded(make, where: str, stats: ConvertStats, skip_bad: bool) -> Example | None:
    try:
        return make()
    except ConvertError as err:
        if not skip_bad:
            raise
        stats.skip(err)
        return None


def _collection_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("**/shard/*.jsonl")) or sorted(path.glob("**/*.jsonl"))
    if not files:
        raise ConvertError(str(path), None, "no shard/*.jsonl files found", "no_input")
    return files


def _collection_dataset_name(path: Path) -> str:
    return path.parent.parent.name if path.parent.name == "shard" else path.stem


def read_collection(path: str | Path, stats: ConvertStats, skip_bad: bool = False) -> Iterator[Example]:
    """The published collection: a root folder, one dataset's folder, or a single shard file."""
    for file in _collection_files(Path(path)):
        default_name = _collection_dataset_name(file)
        for where, obj in _jsonl_lines(file, stats, skip_bad):

            def make(obj=obj, where=where, default_name=default_name) -> Example:
                context = _need_str(obj, "context", where)
                qa = obj.get("QA_list")
                if not isinstance(qa, list):
                    raise ConvertError(where, "QA_list", "missing or not a list", "missing_field")
                name = (
                    obj.get("rc_name")
                    if isinstance(obj.get("rc_name"), str) and obj["rc_name"]
                    else default_name
                )
                return Example(name, context, [_qa_item(it, where) for it in qa], where)

            ex = _guarded(make, where, stats, skip_bad)
            if ex is not None:
                yield ex


def read_jsonl(
    path: str | Path, stats: ConvertStats, skip_bad: bool = False, dataset: str | None = None
) -> Iterator[Example]:
    """Plain JSONL ``{context, pairs: [{instruction, response}], dataset}``; ``dataset`` is the default name."""
    path = Path(path)
    for where, obj in _jsonl_lines(path, stats, skip_bad):

        def make(obj=obj, where=where) -> Example:
            context = _need_str(obj, "context", where)
            pairs = obj.get("pairs")
            if not isinstance(pairs, list):
                raise ConvertError(where, "pairs", "missing or not a list", "missing_field")
            out = []
            for i, p in enumerate(pairs):
                if not isinstance(p, dict):
                    raise ConvertError(where, f"pairs[{i}]", "must be an object", "bad_field")
                out.append(Pair(_need_str(p, "instruction", where), _need_str(p, "response", where)))
            name = obj.get("dataset") or dataset or path.stem
            if not isinstance(name, str):
                raise ConvertError(where, "dataset", "must be a string", "bad_field")
            return Example(name, context, out, where)

        ex = _guarded(make, where, stats, skip_bad)
        if ex is not None:
            yield ex


def read_squad(
    path: str | Path, stats: ConvertStats, skip_bad: bool = False, dataset: str | None = None
) -> Iterator[Example]:
    """SQuAD-style JSON; unanswerable questions (``is_impossible``) are skipped and counted."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}:{e.lineno}", None, f"invalid JSON: {e.msg}", "bad_json") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ConvertError(
            str(path), "data", "expected a top-level object with a 'data' list", "missing_field"
        )
    name = dataset or path.stem
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            err = ConvertError(f"{path}: data[{a}]", "paragraphs", "missing or not a list", "missing_field")
            if not skip_bad:
                raise err
            stats.skip(err)
            continue
        for p, para in enumerate(paragraphs):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            stats.records += 1

            def make(para=para, where=where) -> Example:
                if not isinstance(para, dict):
                    raise ConvertError(where, None, "must be an object", "bad_field")
                context = _need_str(para, "context", where)
                qas = para.get("qas")
                if not isinstance(qas, list):
                    raise ConvertError(where, "qas", "missing or not a list", "missing_field")
                pairs = []
                for q, qa in enumerate(qas):
                    qwhere = f"{where}.qas[{q}]"
                    if not isinstance(qa, dict):
                        raise ConvertError(qwhere, None, "must be an object", "bad_field")
                    question = _need_str(qa, "question", qwhere)
                    answers = qa.get("answers") or []
                    if qa.get("is_impossible") or not answers:
                        stats.skipped["unanswerable_question"] += 1
                        continue
                    if not isinstance(answers, list) or not isinstance(answers[0], dict):
                        raise ConvertError(qwhere, "answers", "must be a list of objects", "bad_field")
                    pairs.append(Pair(question, _need_str(answers[0], "text", qwhere)))
                return Example(name, context, pairs, where)

            ex = _guarded(make, where, stats, skip_bad)
            if ex is not None:
                yield ex


def read_pubmed(path: str | Path | None, stats: ConvertStats, seed: int = 0) -> Iterator[Example]:
    """Tasks mined from MEDLINE XML; ``path`` a file or folder of them, None for the shipped files."""

    paths = None
    if path is not None:
        p = Path(path)
        paths = sorted(p.glob("*.xml*")) if p.is_dir() else [p]
        if not paths:
            raise ConvertError(str(p), None, "no .xml or .xml.gz files found", "no_input")
    records = list(iter_pubmed_records(paths, progress=True))
    stats.records += len(records)
    mined = 0
    for ex in mine_pubmed(records, seed=seed):
        mined += 1
        yield ex
    stats.skipped["pubmed_nothing_to_ask"] += len(records) - mined


def detect_format(path: str | Path) -> str:
    """Guess the input format from the path and, for JSONL, the first record's keys."""
    p = Path(path)
    if p.is_dir():
        if any(p.glob("**/shard/*.jsonl")):
            return "collection"
        if any(p.glob("*.xml*")):
            return "pubmed"
        raise ConvertError(str(p), None, "cannot tell the format of this folder; pass --format", "no_input")
    name = p.name.lower()
    if name.endswith((".xml", ".xml.gz")):
        return "pubmed"
    if name.endswith(".json"):
        return "squad"
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        for where, obj, bad in scan_records(InputFile(p, "jsonl")):
            if bad is not None or obj is None:
                raise ConvertError(where, None, f"cannot detect format: {bad.detail if bad else ''}", "bad_json")
            return "collection" if "QA_list" in obj else "jsonl"
        raise ConvertError(str(p), None, "empty file", "no_input")
    raise ConvertError(str(p), None, "unknown file type; pass --format", "no_input")


def read_examples(
    path: str | Path | None,
    fmt: str = "auto",
    stats: ConvertStats | None = None,
    skip_bad: bool = False,
    dataset: str | None = None,
    seed: int = 0,
) -> Iterator[Example]:
    """Examples from one input in any supported format (``path`` None: the shipped PubMed files)."""
    stats = stats if stats is not None else ConvertStats()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    if path is None:
        if fmt not in ("auto", "pubmed"):
            raise ValueError(f"format {fmt} needs an input path")
        fmt = "pubmed"
    elif fmt == "auto":
        fmt = detect_format(path)
    if fmt == "collection":
        it = read_collection(path, stats, skip_bad)
    elif fmt == "squad":
        it = read_squad(path, stats, skip_bad, dataset)
    elif fmt == "jsonl":
        it = read_jsonl(path, stats, skip_bad, dataset)
    else:
        it = read_pubmed(path, stats, seed)
    for ex in it:
        stats.examples += 1
        yield ex
