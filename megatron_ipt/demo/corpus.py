"""Stage 2: the biomedical raw corpus, its held-out split, and the tasks mined from structured records.

Records are split by a hash of their PMID (``pubmed.is_held_out``), so nothing held out is ever
trained on. On the training side, unstructured abstracts form the domain corpus (the synthesizer
converts them; the vanilla run trains on them raw) and structured ones are mined into
context-based tasks (the synthesizer's tuning data, and the stand-in for general instructions).
On the held-out side, abstracts measure perplexity and tasks mined from every held-out record
(structured or not) measure answer quality.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from megatron_ipt.demo.paths import DemoPaths
from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.io import atomic_path
from megatron_ipt.synth.format import COT_TRIGGER, OPTIONS_HEADER, Pair
from megatron_ipt.tuning.example import Example
from megatron_ipt.tuning.pubmed import (
    SECTION_QUESTIONS,
    PubmedRecord,
    is_held_out,
    load_pubmed_records,
    mesh_term_pool,
    mine_record,
    shipped_pubmed_files,
    write_raw_corpus,
)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def example_record(ex: Example) -> dict:
    """The plain-JSONL tuning format: ``{context, pairs: [{instruction, response}], dataset}``."""
    return {"context": ex.context, "pairs": [p.to_dict() for p in ex.pairs], "dataset": ex.dataset,
            "source": ex.source}


def instruction_rows(examples: list[Example]) -> list[dict]:
    """Mined tasks as general-instruction records ``{question, response}`` (the context inside the
    question, as in OpenOrca-style data): one record per pair."""
    return [{"question": f"{ex.context}\n\n{p.instruction}", "response": p.response}
            for ex in examples for p in ex.pairs]


def _kind(instruction: str) -> str:
    """The question kind: multiple choice, a held-out abstract section, or the question itself."""
    if OPTIONS_HEADER in instruction:
        return "multiple choice"
    if instruction in SECTION_QUESTIONS.values():
        return "abstract section"
    return instruction


def heldout_task_rows(examples: list[Example], limit: int) -> list[dict]:
    """One question per held-out context, taken round-robin over the question kinds (title,
    keywords, abstract section, MeSH multiple choice) so that every kind is scored; no chain of
    thought, as the greedy answers are short."""
    by_kind: dict[str, list[tuple[int, Pair]]] = {}
    for i, ex in enumerate(examples):
        for p in ex.pairs:
            if not p.instruction.endswith(COT_TRIGGER.strip()):
                by_kind.setdefault(_kind(p.instruction), []).append((i, p))
    queues = [by_kind[k] for k in sorted(by_kind)]
    rows: list[dict] = []
    used: set[int] = set()
    while len(rows) < limit and any(queues):
        for queue in queues:
            while queue and queue[0][0] in used:
                queue.pop(0)
            if not queue or len(rows) >= limit:
                continue
            i, pair = queue.pop(0)
            used.add(i)
            ex = examples[i]
            rows.append({"context": ex.context, "instruction": pair.instruction, "response": pair.response,
                         "dataset": ex.dataset, "source": ex.source})
    return rows


def build_corpus(size: DemoSize, paths: DemoPaths) -> dict:
    # Half the records from each shipped file: the 2021 file has more structured abstracts, the
    # 2020 one (older articles) has MeSH terms on nearly every record (multiple-choice tasks).
    files = shipped_pubmed_files()
    records: list[PubmedRecord] = []
    for f in files:
        cache = paths.corpus / f"pubmed_records_{f.name.split('.')[0]}.jsonl"
        records += load_pubmed_records([f], limit=size.records // len(files), cache=cache)
    # A deterministic shuffle, so every split mixes records of both files.
    records.sort(key=lambda r: hashlib.sha256(f"demo:{r.pmid}".encode()).digest())
    train: list[PubmedRecord] = []
    heldout: list[PubmedRecord] = []
    for rec in records:
        (heldout if is_held_out(rec.pmid, size.heldout_fraction) else train).append(rec)
    unstructured = [r for r in train if not r.structured]
    structured = [r for r in train if r.structured]
    raw_records = unstructured[: size.synth_texts]
    write_raw_corpus(paths.raw, records=raw_records, overwrite=True)
    write_raw_corpus(paths.heldout_texts, records=heldout[: size.eval_texts], overwrite=True)

    pool = mesh_term_pool(records)
    mined = [ex for ex in (mine_record(r, pool, seed=0) for r in structured) if ex is not None]
    mined = mined[: size.tune_examples]
    _write_jsonl(paths.mined, [example_record(ex) for ex in mined])
    _write_jsonl(paths.general_instructions, instruction_rows(mined))
    held_examples = [ex for ex in (mine_record(r, pool, seed=1, cot_share=0.0) for r in heldout) if ex is not None]
    task_rows = heldout_task_rows(held_examples, size.eval_tasks)
    _write_jsonl(paths.heldout_tasks, task_rows)

    if len(raw_records) < size.synth_texts or len(task_rows) < size.eval_tasks or len(mined) < size.tune_examples:
        print(f"note: fewer records than asked: {len(raw_records)} raw texts, {len(mined)} mined examples, "
              f"{len(task_rows)} held-out tasks (read more with a larger size)")
    return {
        "records": len(records),
        "train_records": len(train),
        "heldout_records": len(heldout),
        "structured_train": len(structured),
        "unstructured_train": len(unstructured),
        "raw_texts": len(raw_records),
        "raw_chars": sum(len(r.abstract) for r in raw_records),
        "heldout_texts": min(len(heldout), size.eval_texts),
        "mined_examples": len(mined),
        "mined_pairs": sum(len(ex.pairs) for ex in mined),
        "heldout_tasks": len(task_rows),
        "heldout_task_kinds": dict(Counter(_kind(r["instruction"]) for r in task_rows)),
        "files": [str(f) for f in files],
    }
