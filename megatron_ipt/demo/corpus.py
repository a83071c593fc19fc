"""Stage 2: the biomedical raw corpus, its held-out split, and the tasks mined from structured records.

Records are split by a hash of their PMID (``pubmed.is_held_out``), so nothing held out is ever
trained on. On the training side, unstructured abstracts form the domain corpus (the synthesizer
converts them; the vanilla run trains on them raw) and structured ones are mined into
context-based tasks (the synthesizer's tuning data, and the stand-in for general instructions).
On the held-out side, abstracts measure perplexity and mined tasks measure answer quality.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from megatron_ipt.demo.paths import DemoPaths
from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.io import atomic_path
from megatron_ipt.synth.collections import Example
from megatron_ipt.synth.format import COT_TRIGGER
from megatron_ipt.synth.pubmed import (
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


def heldout_task_rows(examples: list[Example], limit: int) -> list[dict]:
    """One question per held-out context, rotating over the question kinds (no chain-of-thought:
    the greedy answers are short)."""
    rows: list[dict] = []
    for i, ex in enumerate(examples):
        pairs = [p for p in ex.pairs if not p.instruction.endswith(COT_TRIGGER.strip())]
        if not pairs:
            continue
        pair = sorted(pairs, key=lambda p: p.instruction)[i % len(pairs)]
        rows.append({"context": ex.context, "instruction": pair.instruction, "response": pair.response,
                     "dataset": ex.dataset, "source": ex.source})
        if len(rows) >= limit:
            break
    return rows


def build_corpus(size: DemoSize, paths: DemoPaths) -> dict:
    # Newest baseline file first: it has more structured abstracts.
    files = list(reversed(shipped_pubmed_files()))
    records = load_pubmed_records(files, limit=size.records, cache=paths.records_cache)
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
    held_structured = [r for r in heldout if r.structured]
    held_examples = [ex for ex in (mine_record(r, pool, seed=1) for r in held_structured) if ex is not None]
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
        "heldout_task_kinds": dict(Counter(r["instruction"].split("\n")[0] for r in task_rows)),
        "files": [str(f) for f in files],
    }
