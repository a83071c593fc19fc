"""Stage 2: the biomedical raw corpus, its held-out split, and the task-family sets.

Records are split by a hash of their PMID (``pubmed.is_held_out``), so nothing held out is ever
trained on. On the training side, unstructured abstracts form the domain corpus (the synthesizer
converts them; the vanilla run trains on them raw) and structured ones are mined into
context-based tasks: (a) the synthesizer's tuning families. (b) The domain recipe's general
instructions come from a non-biomedical source (``demo/general_instructions.py``). (d) Instruction
tuning after pre-training (stage 7) takes further mined examples, records (a) does not use. On the held-out
side, unstructured abstracts measure perplexity (the distribution both arms train on) and (c) the
evaluation families (``demo/evalsets.py``), disjoint from (a), (b) and (d), become an
lm-evaluation-harness suite, every item checked for 13-gram overlap with the training inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from megatron_ipt.demo.evalsets import FAMILY_BUILDERS, drop_contaminated, family_manifest, ngram_set
from megatron_ipt.demo.general_instructions import general_family_manifest, general_instructions
from megatron_ipt.demo.paths import DemoPaths
from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.eval.suite import write_suite
from megatron_ipt.io import atomic_write_jsonl
from megatron_ipt.tuning.example import Example
from megatron_ipt.tuning.pubmed import (
    PubmedRecord,
    is_held_out,
    load_pubmed_records,
    shipped_pubmed_files,
    write_raw_corpus,
)
from megatron_ipt.tuning.pubmed_mining import mesh_term_pool, mine_record, tuning_families


def example_record(ex: Example) -> dict:
    """The plain-JSONL tuning format: ``{context, pairs: [{instruction, response}], dataset}``."""
    return {"context": ex.context, "pairs": [p.to_dict() for p in ex.pairs], "dataset": ex.dataset,
            "source": ex.source}


def chat_record(ex: Example) -> dict:
    """An example as a chat: the context with the first question, then every pair as a turn (the
    loss falls on every answer)."""
    turns = []
    for k, p in enumerate(ex.pairs):
        turns += [{"role": "user", "content": f"{ex.context}\n\n{p.instruction}" if k == 0 else p.instruction},
                  {"role": "assistant", "content": p.response}]
    return {"id": ex.source, "messages": turns}


def instruction_families() -> dict[str, dict]:
    """Set (d): the families of (a), mined from records (a) does not use, rendered as chats."""
    return {name: {**f, "source": "structured training-side PubMed records not in (a); chat turns, loss on answers"}
            for name, f in tuning_families().items()}


def training_texts(paths: DemoPaths) -> list[str]:
    """Every text the corpus stage hands to training (either arm, the synthesizer or instruction tuning)."""
    texts: list[str] = []
    for path in (paths.raw, paths.mined, paths.general_instructions, paths.instruction_records):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            texts += [row[k] for k in ("text", "context", "question", "response") if k in row]
            texts += [f"{p['instruction']} {p['response']}" for p in row.get("pairs", [])]
            texts += [m["content"] for m in row.get("messages", [])]
    return texts


def _load_records(size: DemoSize, paths: DemoPaths) -> tuple[list[Path], list[PubmedRecord]]:
    """(the shipped files, their records in a deterministic shuffle)."""
    # Half the records from each shipped file: the 2021 file has more structured abstracts, the
    # 2020 one (older articles) has MeSH terms on nearly every record (multiple-choice tasks).
    files = shipped_pubmed_files()
    records: list[PubmedRecord] = []
    for f in files:
        cache = paths.corpus / f"pubmed_records_{f.name.split('.')[0]}.jsonl"
        records += load_pubmed_records([f], limit=size.records // len(files), cache=cache)
    # A deterministic shuffle, so every split mixes records of both files.
    records.sort(key=lambda r: hashlib.sha256(f"demo:{r.pmid}".encode()).digest())
    return files, records


def _split_heldout(records: list[PubmedRecord], fraction: float) -> tuple[list[PubmedRecord], list[PubmedRecord]]:
    """(training side, held-out side) by :func:`~megatron_ipt.tuning.pubmed.is_held_out`."""
    train: list[PubmedRecord] = []
    heldout: list[PubmedRecord] = []
    for rec in records:
        (heldout if is_held_out(rec.pmid, fraction) else train).append(rec)
    return train, heldout


def _write_eval_suite(size: DemoSize, paths: DemoPaths, heldout: list[PubmedRecord]) -> tuple[dict, dict]:
    """(c) evaluation families from held-out records, decontaminated against (a), (b) and the raw
    corpus: (items per family, items dropped per family)."""
    training = ngram_set(training_texts(paths))
    suite: dict[str, list[dict]] = {}
    dropped: dict[str, int] = {}
    for family, build in FAMILY_BUILDERS.items():
        # Built from extra candidates so that dropping contaminated items still leaves the count asked.
        items, dropped[family] = drop_contaminated(build(heldout, 2 * size.eval_items), training)
        suite[family] = items[: size.eval_items]
    atomic_write_jsonl(paths.eval_items, [{"family": f, **it} for f, items in suite.items() for it in items])
    write_suite(suite, paths.eval_suite)
    return suite, dropped


def build_corpus(size: DemoSize, paths: DemoPaths) -> dict:
    files, records = _load_records(size, paths)
    train, heldout = _split_heldout(records, size.heldout_fraction)
    unstructured = [r for r in train if not r.structured]
    structured = [r for r in train if r.structured]
    raw_records = unstructured[: size.synth_texts]
    write_raw_corpus(paths.raw, raw_records)
    # Perplexity on the distribution both arms train on: held-out *unstructured* abstracts (the
    # domain corpus is unstructured; structured "LABEL: text" abstracts reach no arm's training).
    held_unstructured = [r for r in heldout if not r.structured]
    write_raw_corpus(paths.heldout_texts, held_unstructured[: size.eval_texts])
    # (a) the synthesizer's tuning families, mined from structured training-side records.
    pool = mesh_term_pool(records)
    mined = [ex for ex in (mine_record(r, pool, seed=0, diverse=True) for r in structured)
             if ex is not None]
    # (d) instruction tuning after pre-training (stage 7): the mined examples after those of (a).
    instruction = mined[size.tune_examples: size.tune_examples + size.instruction_examples]
    mined = mined[: size.tune_examples]
    atomic_write_jsonl(paths.mined, [example_record(ex) for ex in mined])
    atomic_write_jsonl(paths.instruction_records, [chat_record(ex) for ex in instruction])
    # (b) general instructions for the domain recipe: not biomedical (Python's standard library).
    general = list(general_instructions(size.general_instructions))
    # The family is in the id (``family:k``); the recipe reads only id, question and response.
    atomic_write_jsonl(paths.general_instructions,
                       [{k: r[k] for k in ("id", "question", "response")} for r in general])
    suite, dropped = _write_eval_suite(size, paths, heldout)
    short = {f: len(v) for f, v in suite.items() if len(v) < size.eval_items}
    if len(raw_records) < size.synth_texts or len(mined) < size.tune_examples or short \
            or len(instruction) < size.instruction_examples:
        print(f"note: fewer records than asked: {len(raw_records)} raw texts, {len(mined)} mined examples, "
              f"{len(instruction)} instruction-tuning examples, "
              f"evaluation items {short or 'as asked'} (read more with a larger size)")
    return {
        "records": len(records),
        "train_records": len(train),
        "heldout_records": len(heldout),
        "structured_train": len(structured),
        "unstructured_train": len(unstructured),
        "raw_texts": len(raw_records),
        "raw_chars": sum(len(r.abstract) for r in raw_records),
        "heldout_texts": min(len(held_unstructured), size.eval_texts),
        "mined_examples": len(mined),
        "mined_pairs": sum(len(ex.pairs) for ex in mined),
        "instruction_examples": len(instruction),
        "instruction_pairs": sum(len(ex.pairs) for ex in instruction),
        "general_instructions": len(general),
        "general_families": dict(Counter(r["family"] for r in general)),
        "eval_items": {f: len(v) for f, v in suite.items()},
        "eval_dropped_13gram": dropped,
        "manifest": family_manifest(tuning_families(), general_family_manifest(), instruction_families()),
        "files": [str(f) for f in files],
    }
