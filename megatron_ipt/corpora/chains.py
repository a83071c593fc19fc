"""Documents for pre-training: synthesized chains, raw texts, tuning examples, general instructions.

Each source yields plain ``{"id", "text", ...}`` documents (no BOS/EOS: tokenization adds them).
A synthesized shard's entries are regrouped by slot and round; an entry that is ``linked``
continues the document of the previous entry in its slot, every other entry starts a new one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_ipt.corpora.templates import render_chain, render_instruction
from megatron_ipt.data.inputs import DataError, expand_inputs
from megatron_ipt.data.readers import iter_records, lone_surrogate
from megatron_ipt.log import get_logger
from megatron_ipt.pairs import Pair
from megatron_ipt.synth.units import iter_texts, synthesis_outputs

log = get_logger(__name__)

def chain_seed(seed: int, first_id: str) -> int:
    """One seed per chain, from the id of its first entry: the same chain renders the same way."""
    digest = hashlib.blake2b(f"chain:{seed}:{first_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63 - 1)


def _line(where: str) -> str:
    return where.rsplit(":", 1)[1]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_pairs(value: object, where: str, field: str = "pairs", stats: Counter | None = None) -> list[Pair]:
    """``[{instruction, response}, ...]`` as pairs, or a :class:`DataError` naming the bad entry; a
    pair's other keys are not part of it, and are counted in ``stats`` as ``dropped_pair_key:<key>``."""
    if not isinstance(value, list):
        raise DataError(f"must be a list of {{instruction, response}} objects, got a {type(value).__name__}",
                        where=where, field=field)
    pairs = []
    for i, p in enumerate(value):
        if not isinstance(p, dict):
            raise DataError(f"must be an {{instruction, response}} object, got a {type(p).__name__}", where=where,
                            field=f"{field}[{i}]")
        for key in ("instruction", "response"):
            if not isinstance(p.get(key), str) or lone_surrogate(p[key]) is not None:
                raise DataError(f"{key!r} missing, not a string or not valid Unicode", where=where,
                                field=f"{field}[{i}]")
        if stats is not None:
            for key in p.keys() - {"instruction", "response"}:
                stats[f"dropped_pair_key:{key}"] += 1
        pairs.append(Pair.from_dict(p))
    return pairs


def check_synthesized(rec: dict, where: str, stats: Counter | None = None) -> dict:
    """A synthesized record with the types ``data_tools.synthesize`` writes, else a :class:`DataError`
    (a ``text: null`` would render as "None", a ``linked: "no"`` would link); extra pair keys are
    counted in ``stats``."""
    missing = [k for k in ("id", "text", "pairs", "round", "linked") if k not in rec]
    if missing:
        raise DataError("a synthesized record needs it", where=where, field=missing[0])
    if not isinstance(rec["id"], str | int) or isinstance(rec["id"], bool):
        raise DataError("must be a string or an integer", where=where, field="id")
    if not isinstance(rec["text"], str) or lone_surrogate(rec["text"]) is not None:
        raise DataError(f"must be a string of valid Unicode, got {type(rec['text']).__name__}", where=where,
                        field="text")
    if not _is_int(rec["round"]) or rec["round"] < 0:
        raise DataError(f"must be a round number >= 0, got {rec['round']!r}", where=where, field="round")
    if not _is_int(rec.get("slot", 0)):
        raise DataError(f"must be an integer, got {rec['slot']!r}", where=where, field="slot")
    if not isinstance(rec["linked"], bool):
        raise DataError(f"must be true or false, got {rec['linked']!r}", where=where, field="linked")
    check_pairs(rec["pairs"], where, stats=stats)
    return rec


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


PairFilter = Callable[[list[list[Pair]]], list[list[Pair]]]  # the pairs of many texts -> those kept
FILTER_BATCH = 4096  # texts handed to a pair filter at once (vectorized filters amortize their overhead)


def filter_pairs(records: list[dict], pair_filters: Sequence[PairFilter]) -> list[dict]:
    """Copies of synthesized records whose pairs passed every filter (contamination, quality), in order."""
    out: list[dict] = []
    for start in range(0, len(records), FILTER_BATCH):
        batch = records[start : start + FILTER_BATCH]
        texts = [[Pair.from_dict(p) for p in rec["pairs"]] for rec in batch]
        for keep in pair_filters:
            texts = keep(texts)
        out += [{**rec, "pairs": [p.to_dict() for p in pairs]} for rec, pairs in zip(batch, texts, strict=True)]
    return out


def synthesis_files(inputs: Iterable[str | Path], stats: Counter | None = None) -> list[Path]:
    """The synthesis output files to read, finished work units in plan order (a deterministic merge);
    units not finished yet (or torn) and unit files that a folder's ``units.plan`` does not list are
    left out, warned about and counted as ``units_unfinished`` and ``units_unlisted``."""
    found = synthesis_outputs([str(p) for p in inputs])
    if found.unfinished:
        log.warning("%d planned synthesis units are not finished, their texts left out: %s%s", len(found.unfinished),
                    ", ".join(found.unfinished[:3]), " ..." if len(found.unfinished) > 3 else "")
    if found.unlisted:
        log.warning("%d unit files are not in their folder's units.plan (from another run?), left out: %s%s",
                    len(found.unlisted), ", ".join(str(p) for p in found.unlisted[:3]),
                    " ..." if len(found.unlisted) > 3 else "")
    if stats is not None:
        stats["units_unfinished"] += len(found.unfinished)
        stats["units_unlisted"] += len(found.unlisted)
    return [f for f in found.files if not f.name.endswith(".stats.json")]


def synthesized_documents(inputs: Iterable[str | Path], seed: int, stats: Counter,
                          pair_filters: Sequence[PairFilter] = ()) -> Iterator[dict]:
    """Documents from ``data_tools.synthesize`` outputs; ``stats`` counts layouts and entries.

    ``pair_filters`` see the records' pairs in file order (so cross-text dedup is deterministic);
    an entry left without pairs stays in its chain as raw text.
    """
    for path in synthesis_files(inputs, stats):
        records = []
        seen: dict[tuple[int, int], str] = {}  # (slot, round) -> its line: two would chain arbitrarily
        for rec, where in iter_records(path):
            check_synthesized(rec, where, stats)
            key = (int(rec.get("slot", 0)), int(rec["round"]))
            if key in seen:
                raise DataError(f"repeats slot {key[0]}, round {key[1]} of line {_line(seen[key])} (a unit holds "
                                "one entry per slot and round)", where=where, field="slot")
            seen[key] = where
            records.append(rec)
        if pair_filters:
            records = filter_pairs(records, pair_filters)
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
            if lone_surrogate(context) is not None:
                raise DataError("holds a lone surrogate (not valid Unicode)", where=where, field="context")
            parsed = check_pairs(pairs, where)
            rid = str(rec.get("id", f"{f.path.stem}:{_line(where)}"))
            doc = render_chain([(context, parsed)], chain_seed(seed, rid))
            stats[f"layout:{doc.layout}{'+inverted' if doc.inverted else ''}"] += 1
            yield {"id": rid, "text": doc.text, "layout": doc.layout}


# Single-turn records: the question (one of these keys), an optional input/context appended to it,
# and the response. Alpaca: instruction + input -> output; Dolly: instruction + context -> response;
# OpenOrca: (system_prompt dropped) question -> response.
QUESTION_KEYS = ("question", "instruction", "prompt")
INPUT_KEYS = ("input", "context")
RESPONSE_KEYS = ("response", "output", "answer", "completion")
# Dropped on purpose and counted in pre-training (the method writes general instructions without
# system prompts); instruction tuning may keep them (``keep_system``).
SYSTEM_KEYS = ("system_prompt", "system")
# Labels, not text: never part of a document, never counted as lost.
METADATA_KEYS = ("id", "category", "source", "dataset", "task", "lang", "language", "url", "split", "type")
# Multi-turn records: ShareGPT ``conversations: [{from, value}]`` or ``messages: [{role, content}]``.
TURN_KEYS = ("conversations", "messages")
USER_ROLES = ("human", "user", "prompter")
ASSISTANT_ROLES = ("gpt", "assistant", "model", "chatgpt", "bing", "bard")


class InstructionError(ValueError):
    """A record with no usable (question, response); ``field`` names what is missing."""

    def __init__(self, msg: str, field: str) -> None:
        super().__init__(msg)
        self.field = field


def _text(rec: dict, key: str) -> str | None:
    v = rec.get(key)
    return v if isinstance(v, str) and v.strip() else None


def _turn_pairs(turns: object, stats: Counter, key: str, systems: list[str] | None = None) -> list[tuple[str, str]]:
    """(question, response) pairs of a conversation: consecutive turns of one side are joined, system
    turns collected into ``systems`` (None: dropped); each dropped turn is counted by why."""
    if not isinstance(turns, list):
        raise InstructionError(f"{key!r} must be a list of turns", key)
    sides: list[tuple[str, str]] = []  # ("user" | "assistant", text), same-side runs joined
    for turn in turns:
        role = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
        text = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        role = str(role).lower() if role is not None else None
        if role == "system":
            if systems is not None and isinstance(text, str) and text.strip():
                systems.append(text.strip())
                stats["kept_system_turns"] += 1
            else:
                stats["dropped_system_turns"] += 1
            continue
        side = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else None
        if side is None:
            stats[f"dropped_turns_role:{role}"] += 1
            continue
        if not isinstance(text, str) or not text.strip():
            stats["dropped_empty_turns"] += 1
            continue
        if sides and sides[-1][0] == side:
            sides[-1] = (side, f"{sides[-1][1].rstrip()}\n\n{text.strip()}")
        else:
            sides.append((side, text))
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(sides):
        if sides[i][0] == "assistant":  # an answer to no question (the conversation starts with it)
            stats["dropped_unprompted_responses"] += 1
            i += 1
        elif i + 1 < len(sides):
            pairs.append((sides[i][1], sides[i + 1][1]))
            i += 2
        else:  # the last question has no answer
            stats["dropped_unanswered_turns"] += 1
            i += 1
    stats["conversation_turns"] += 2 * len(pairs)
    return pairs


@dataclass(frozen=True)
class Conversation:
    """One instruction record read: its system prompt (None: none, or dropped) and its turns."""

    system: str | None
    pairs: list[tuple[str, str]]


def instruction_pairs(rec: dict, stats: Counter) -> list[tuple[str, str]]:
    """The (question, response) pairs of one general-instruction record, system prompts dropped and
    counted (see :func:`instruction_conversation`)."""
    return instruction_conversation(rec, stats).pairs


def instruction_conversation(rec: dict, stats: Counter, keep_system: bool = False) -> Conversation:
    """One instruction record (OpenOrca, Alpaca, Dolly, ShareGPT ``conversations``, chat ``messages``)
    read with every text field of the documented formats. System prompts are kept (``keep_system``)
    or dropped; kept, dropped and any other text field left unused are counted in ``stats``. Raises
    :class:`InstructionError` when nothing usable is there."""
    used: set[str] = set()
    systems: list[str] | None = [] if keep_system else None
    turn_key = next((k for k in TURN_KEYS if k in rec), None)
    if turn_key is not None:
        pairs = _turn_pairs(rec[turn_key], stats, turn_key, systems)
        if not pairs:
            raise InstructionError(f"{turn_key!r} holds no question followed by an answer", turn_key)
        used.add(turn_key)
    else:
        questions = [k for k in QUESTION_KEYS if _text(rec, k)]
        inputs = [k for k in INPUT_KEYS if _text(rec, k)]
        responses = [k for k in RESPONSE_KEYS if _text(rec, k)]
        if not questions and inputs:  # {input, output}: the input is the question
            questions, inputs = inputs[:1], inputs[1:]
        if not questions or not responses:
            field = QUESTION_KEYS[0] if not questions else RESPONSE_KEYS[0]
            raise InstructionError(f"needs one of {QUESTION_KEYS + INPUT_KEYS} and one of {RESPONSE_KEYS}", field)
        question = rec[questions[0]].strip()
        for k in inputs:  # Alpaca's input, Dolly's context: part of the question
            question += "\n\n" + rec[k].strip()
            stats[f"appended_{k}"] += 1
        pairs = [(question, rec[responses[0]])]
        used.update([questions[0], *inputs, responses[0]])
    for k in SYSTEM_KEYS:
        if _text(rec, k):
            if systems is not None:
                systems.insert(0, rec[k].strip())
                stats[f"kept_{k}"] += 1
            else:
                stats[f"dropped_{k}"] += 1
            used.add(k)
    for k, v in rec.items():  # any other text: counted, so a new format's field is never lost unseen
        if k not in used and k not in METADATA_KEYS and isinstance(v, str) and v.strip():
            stats[f"unused_field:{k}"] += 1
    return Conversation("\n\n".join(systems) if systems else None, pairs)


def instruction_documents(inputs: Iterable[str | Path], stats: Counter, skip_bad_records: bool = False) -> Iterator[dict]:
    """General instructions as ``{question} {response}`` (no chat template; system prompts dropped and
    counted); a conversation's pairs are joined by blank lines into one document."""
    for f in expand_inputs(list(inputs)):
        for rec, where in iter_records(f):
            try:
                pairs = instruction_pairs(rec, stats)
            except InstructionError as err:
                if not skip_bad_records:
                    raise DataError(f"{err} (skip_bad_records=true counts and skips it)", where=where,
                                    field=err.field) from None
                stats["bad_records"] += 1
                continue
            text = "\n\n".join(render_instruction(q, a) for q, a in pairs)
            yield {"id": str(rec.get("id", f"{f.path.stem}:{_line(where)}")), "text": text}
