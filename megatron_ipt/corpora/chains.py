"""Documents for pre-training: synthesized chains, raw texts, tuning examples, general instructions.

Each source yields plain ``{"id", "text", ...}`` documents (no BOS/EOS: tokenization adds them).
A synthesized shard's entries are regrouped by slot and round; an entry that is ``linked``
continues the document of the previous entry in its slot, every other entry starts a new one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from megatron_ipt.corpora.templates import render_chain, render_instruction
from megatron_ipt.data.readers import DataError, expand_inputs, iter_records
from megatron_ipt.log import get_logger
from megatron_ipt.synth.format import Pair
from megatron_ipt.synth.synthesize import iter_texts

log = get_logger(__name__)

QUESTION_KEYS = ("question", "instruction", "prompt", "input")
RESPONSE_KEYS = ("response", "output", "answer", "completion")


def chain_seed(seed: int, first_id: str) -> int:
    """One seed per chain, from the id of its first entry: the same chain renders the same way."""
    digest = hashlib.blake2b(f"chain:{seed}:{first_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63 - 1)


def _line(where: str) -> str:
    return where.rsplit(":", 1)[1]


def chains_of_shard(records: list[dict]) -> list[list[dict]]:
    """Split one synthesized shard's records into chains, ordered by their first entry.

    A record continues the chain of its slot when it is ``linked`` and the chain's last entry is
    the same slot's previous round; anything else starts a new chain.
    """
    by_slot: dict[int, list[tuple[int, dict]]] = {}
    for pos, rec in enumerate(records):
        by_slot.setdefault(int(rec.get("slot", 0)), []).append((pos, rec))
    chains: list[tuple[int, list[dict]]] = []
    for entries in by_slot.values():
        entries.sort(key=lambda pr: int(pr[1]["round"]))
        current: list[dict] | None = None
        for pos, rec in entries:
            if rec["linked"] and current is not None and int(current[-1]["round"]) == int(rec["round"]) - 1:
                current.append(rec)
            else:
                current = [rec]
                chains.append((pos, current))
    return [c for _, c in sorted(chains, key=lambda pc: pc[0])]


PairFilter = Callable[[list[Pair]], list[Pair]]


def filter_pairs(rec: dict, pair_filters: Sequence[PairFilter]) -> dict:
    """A copy of a synthesized record whose pairs passed every filter (quality, contamination), in order."""
    pairs = [Pair.from_dict(p) for p in rec["pairs"]]
    for keep in pair_filters:
        if not pairs:
            break
        pairs = keep(pairs)
    return {**rec, "pairs": [p.to_dict() for p in pairs]}


def synthesized_documents(inputs: Iterable[str | Path], seed: int, stats: Counter,
                          pair_filters: Sequence[PairFilter] = ()) -> Iterator[dict]:
    """Documents from ``data_tools.synthesize`` outputs; ``stats`` counts layouts and entries.

    ``pair_filters`` see each record's pairs in file order (so cross-text dedup is deterministic);
    an entry left without pairs stays in its chain as raw text.
    """
    for f in expand_inputs(list(inputs)):
        if f.path.name.endswith(".stats.json"):
            continue
        records = []
        for rec, where in iter_records(f):
            missing = [k for k in ("id", "text", "pairs", "round", "linked") if k not in rec]
            if missing:
                raise DataError("a synthesized record needs it", where=where, field=missing[0])
            records.append(filter_pairs(rec, pair_filters) if pair_filters else rec)
        for chain in chains_of_shard(records):
            doc = render_chain(chain, chain_seed(seed, str(chain[0]["id"])))
            stats[f"layout:{doc.layout}{'+inverted' if doc.inverted else ''}"] += 1
            stats["entries"] += len(chain)
            stats["pairs"] += sum(len(r["pairs"]) for r in chain)
            yield {"id": str(chain[0]["id"]), "text": doc.text, "entries": len(chain), "layout": doc.layout}


def raw_documents(inputs: Iterable[str | Path], stats: Counter, exclude: set[str] | None = None,
                  text_key: str = "text", id_key: str = "id", skip_bad_records: bool = False) -> Iterator[dict]:
    """Raw texts as documents, leaving out ids in ``exclude`` (texts that were converted)."""
    for f in expand_inputs(list(inputs)):
        for rid, text in iter_texts(f, stats, text_key, id_key, skip_bad_records):
            if exclude and rid in exclude:
                stats["excluded_converted"] += 1
                continue
            yield {"id": rid, "text": text}


def tuning_documents(inputs: Iterable[str | Path], seed: int, stats: Counter) -> Iterator[dict]:
    """The synthesizer's tuning examples ``{context|text, pairs}``, templated like synthesized chains."""
    for f in expand_inputs(list(inputs)):
        for rec, where in iter_records(f):
            context = rec.get("context", rec.get("text"))
            pairs = rec.get("pairs")
            if not isinstance(context, str) or not isinstance(pairs, list):
                field = "pairs" if isinstance(context, str) else "context"
                raise DataError("a tuning example needs 'context' (or 'text') and 'pairs'", where=where,
                                field=field)
            parsed = [Pair.from_dict(p) for p in pairs]
            rid = str(rec.get("id", f"{f.path.stem}:{_line(where)}"))
            doc = render_chain([(context, parsed)], chain_seed(seed, rid))
            stats[f"layout:{doc.layout}{'+inverted' if doc.inverted else ''}"] += 1
            yield {"id": rid, "text": doc.text, "layout": doc.layout}


def _first(rec: dict, keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if isinstance(rec.get(k), str) and rec[k].strip():
            return rec[k]
    return None


def instruction_documents(inputs: Iterable[str | Path], stats: Counter, skip_bad_records: bool = False) -> Iterator[dict]:
    """General instructions as ``{question} {response}`` (no chat template; system prompts dropped)."""
    for f in expand_inputs(list(inputs)):
        for rec, where in iter_records(f):
            q, a = _first(rec, QUESTION_KEYS), _first(rec, RESPONSE_KEYS)
            if q is None or a is None:
                field = QUESTION_KEYS[0] if q is None else RESPONSE_KEYS[0]
                msg = f"needs one of {QUESTION_KEYS} and one of {RESPONSE_KEYS}"
                if not skip_bad_records:
                    raise DataError(msg + " (skip_bad_records=true counts and skips it)", where=where, field=field)
                stats["bad_records"] += 1
                continue
            yield {"id": str(rec.get("id", f"{f.path.stem}:{_line(where)}")), "text": render_instruction(q, a)}
