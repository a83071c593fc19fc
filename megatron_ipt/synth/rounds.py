"""Multi-round (M-shot) synthesis: chunking, chains, prompt ids, and turning outputs into pairs.

N texts split into M contiguous chunks of ceil(N/M). In round r, the text in slot i of chunk r is
prompted after the chain of earlier entries in slot i (their text and pairs, in the tuning format)
when the chain is unbroken (the previous entry in the slot produced pairs) and the whole prompt
fits ``max_model_len - sampling.max_new_tokens`` counted in real tokens. Otherwise it is prompted alone.
An entry is ``linked`` when it was prompted after a chain and produced at least one pair: a
linked entry continues the previous entry's document.

Failures are isolated per prompt: a prompt that cannot fit even after truncation, that the engine
rejects or fails on, or whose output cannot be decoded or parsed becomes an entry with no pairs and
a ``failure`` reason (counted in the stats; never a made-up output); the rest of its batch is kept.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from megatron_ipt.log import get_logger
from megatron_ipt.pairs import Pair, context_text, instruction_key, is_degenerate, pairs_text, parse_pairs
from megatron_ipt.synth.engine_types import Engine, Generation, SamplingParams, check_prompt_lengths
from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)

FAILURE_REASONS = ("too_long", "engine_error", "decode_error", "parse_error")


@dataclass
class Entry:
    """One synthesized text: its pairs and where it sits in the M-shot layout."""

    id: str
    text: str
    pairs: list[Pair] = field(default_factory=list)
    round: int = 0
    slot: int = 0
    linked: bool = False
    stats: dict = field(default_factory=dict)  # per-entry counters (not part of the output record)

    @property
    def failure(self) -> str | None:
        """Why this text got no synthesis at all (one of ``FAILURE_REASONS``), else None."""
        return self.stats.get("failure")

    def record(self) -> dict:
        rec = {"id": self.id, "text": self.text, "pairs": [p.to_dict() for p in self.pairs],
               "round": self.round, "linked": self.linked, "slot": self.slot}
        if self.failure:
            rec["failure"] = self.failure  # the text stays raw; no pair was made up for it
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> Entry:
        stats = dict(rec.get("stats", {}))
        if rec.get("failure"):
            stats.setdefault("failure", rec["failure"])
        return cls(str(rec["id"]), rec["text"], [Pair.from_dict(p) for p in rec["pairs"]],
                   int(rec["round"]), int(rec.get("slot", 0)), bool(rec["linked"]), stats)


def chunk_layout(n: int, rounds: int) -> list[list[int]]:
    """Indices of the M contiguous chunks of ceil(n/M) texts (the last ones may be short or empty)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    size = max(1, math.ceil(n / rounds))
    return [list(range(r * size, min(n, (r + 1) * size))) for r in range(rounds)]


def unbroken_chain(slot_history: Sequence[Entry]) -> list[Entry]:
    """The chain a new entry in this slot would follow: the trailing run of linked entries back to
    the one that started it; empty if the last entry produced no pairs."""
    if not slot_history or not slot_history[-1].pairs:
        return []
    start = len(slot_history) - 1
    while start > 0 and slot_history[start].linked:
        start -= 1
    return list(slot_history[start:])


def entry_ids(tokenizer: Tokenizer, text: str, pairs: Sequence[Pair]) -> list[int]:
    """One finished example: BOS + context + pairs + EOS (segments tokenized as in tuning data)."""
    return [tokenizer.bos_id, *tokenizer.encode(context_text(text)), *tokenizer.encode(pairs_text(list(pairs))),
            tokenizer.eos_id]


def _as_text_pairs(entry) -> tuple[str, Sequence[Pair]]:
    if isinstance(entry, tuple):
        return entry
    return entry.text, entry.pairs


def build_prompt_ids(tokenizer: Tokenizer, chain_entries: Sequence, text: str,
                     cache: dict[str, list[int]] | None = None) -> list[int]:
    """BOS + context + pairs + EOS for each earlier entry, then BOS + context of ``text``.

    ``chain_entries`` are ``Entry`` objects or ``(text, pairs)`` tuples; ``cache`` maps an
    ``Entry.id`` to its ids so a long chain is not re-tokenized for every round.
    """
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError(f"tokenizer {tokenizer.name} lacks BOS/EOS, which the synthesizer format needs")
    ids: list[int] = []
    for entry in chain_entries:
        key = getattr(entry, "id", None)
        if cache is not None and key is not None and key in cache:
            ids.extend(cache[key])
            continue
        piece = entry_ids(tokenizer, *_as_text_pairs(entry))
        if cache is not None and key is not None:
            cache[key] = piece
        ids.extend(piece)
    ids.append(tokenizer.bos_id)
    ids.extend(tokenizer.encode(context_text(text)))
    return ids


def fit_text(tokenizer: Tokenizer, text: str, budget: int) -> tuple[list[int], bool]:
    """Prompt ids for ``text`` alone, its text cut (in tokens) to fit ``budget``; and whether cut."""
    ids = build_prompt_ids(tokenizer, [], text)
    if len(ids) <= budget:
        return ids, False
    text_ids = tokenizer.encode(text)
    keep = len(text_ids) - (len(ids) - budget)
    while keep > 0:
        ids = build_prompt_ids(tokenizer, [], tokenizer.decode(text_ids[:keep]))
        if len(ids) <= budget:
            return ids, True
        keep -= max(1, len(ids) - budget)  # re-tokenizing the cut text can shift a few tokens
    raise ValueError(f"a prompt budget of {budget} tokens leaves no room for any text")


NEXT_EXAMPLE = ("<CON>", "</CON>")  # stop strings: the model started a new example


def synthesis_sampling(**changes: Any) -> SamplingParams:
    """Synthesis's decoding settings: ``SamplingParams``'s defaults, stopping at ``NEXT_EXAMPLE``, with ``changes``."""
    return replace(SamplingParams(stop=NEXT_EXAMPLE), **changes)


@dataclass(frozen=True)
class RoundsConfig:
    rounds: int = 2
    max_pairs: int = 0  # 0: no cap
    sampling: SamplingParams = field(default_factory=synthesis_sampling)  # a text samples with text_seed(seed, its id)


def text_seed(seed: int, text_id: str) -> int:
    """A stable per-text seed: the same text samples the same way in any unit, batch or rerun."""
    digest = hashlib.blake2b(f"{seed}:{text_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)


def pairs_from_generations(gens: Sequence[Generation], max_pairs: int) -> tuple[list[Pair], dict]:
    """Parse each generation, drop degenerate pairs, merge samples (first instruction wins)."""
    stats = {"malformed": 0, "duplicates": 0, "unfinished": 0, "degenerate": 0, "degenerate_pairs": 0,
             "output_tokens": 0, "finish": {}}
    pairs: list[Pair] = []
    seen: set[str] = set()
    for g in gens:
        stats["output_tokens"] += len(g.token_ids)
        stats["finish"][g.finish_reason] = stats["finish"].get(g.finish_reason, 0) + 1
        stats["degenerate"] += is_degenerate(g.text)
        parsed = parse_pairs(g.text)
        stats["malformed"] += parsed.malformed
        stats["duplicates"] += parsed.duplicates
        stats["unfinished"] += parsed.truncated
        for p in parsed.pairs:
            if is_degenerate(p.instruction) or is_degenerate(p.response):
                stats["degenerate_pairs"] += 1
            elif instruction_key(p.instruction) in seen:
                stats["duplicates"] += 1
            else:
                seen.add(instruction_key(p.instruction))
                pairs.append(p)
    if max_pairs and len(pairs) > max_pairs:
        stats["capped"] = len(pairs) - max_pairs
        pairs = pairs[:max_pairs]
    return pairs, stats


@dataclass(frozen=True)
class PromptFailure:
    """A prompt that produced no generation: ``reason`` is one of ``FAILURE_REASONS``."""

    reason: str
    message: str


def _failure_of(err: Exception) -> PromptFailure:
    if isinstance(err, UnicodeError):
        reason = "decode_error"
    elif isinstance(err, ValueError) and any(s in str(err) for s in ("max_model_len", "maximum model length")):
        reason = "too_long"  # the engine's own length check (vLLM's wording or ours)
    else:
        reason = "engine_error"
    return PromptFailure(reason, f"{type(err).__name__}: {err}"[:500])


def generate_isolated(engine: Engine, prompts: Sequence[Sequence[int]],
                      params: Sequence[SamplingParams]) -> list[list[Generation] | PromptFailure]:
    """``engine.generate`` with failures kept to the prompt that caused them.

    Prompts too long for the engine are failed up front (the engine would reject the whole batch);
    if the batch call raises, each prompt is retried alone and only those that fail alone are
    failed. When every prompt of a batch of two or more fails alone, the engine itself is broken
    (out of memory, a dead device): that error is raised rather than recorded for every text.
    """
    results: list[list[Generation] | PromptFailure | None] = [None] * len(prompts)
    ok: list[int] = []
    for i, (ids, p) in enumerate(zip(prompts, params, strict=True)):
        try:
            check_prompt_lengths([ids], engine.max_model_len, [p])
            ok.append(i)
        except ValueError as err:
            results[i] = PromptFailure("too_long", str(err).replace("prompt 0", "the prompt"))
    if ok:
        try:
            outs = engine.generate([prompts[i] for i in ok], [params[i] for i in ok])
            for i, gens in zip(ok, outs, strict=True):
                results[i] = gens
        except Exception as batch_err:  # noqa: BLE001 - any engine fault is isolated per prompt below
            log.warning("a batch of %d prompts failed (%s); retrying each prompt alone", len(ok), batch_err)
            errors: list[Exception] = []
            for i in ok:
                try:
                    results[i] = engine.generate([prompts[i]], [params[i]])[0]
                except Exception as err:  # noqa: BLE001
                    errors.append(err)
                    results[i] = _failure_of(err)
            if len(ok) >= 2 and len(errors) == len(ok):
                raise errors[0] from batch_err
    return [r for r in results if r is not None]


def synthesize_batch(engine: Engine, cfg: RoundsConfig, items: Sequence[tuple[str, str, int, int]],
                     histories: dict[int, list[Entry]], cache: dict[str, list[int]]) -> list[Entry]:
    """Prompt one batch of ``(id, text, round, slot)`` and return their entries (failed ones included)."""
    tok = engine.tokenizer
    budget = engine.max_model_len - cfg.sampling.max_new_tokens
    prompts: list[list[int] | PromptFailure] = []
    chained, cut, own = [], [], []  # own: the prompt's tokens of this text (BOS + context): raw input
    for _, text, _, slot in items:
        chain = unbroken_chain(histories.get(slot, []))
        ids = build_prompt_ids(tok, chain, text, cache) if chain else None
        if ids is not None and len(ids) <= budget:
            prompts.append(ids)
            chained.append(True)
            cut.append(False)
            own.append(len(ids) - sum(len(cache[e.id]) for e in chain))
            continue
        chained.append(False)
        try:
            alone, was_cut = fit_text(tok, text, budget)
        except ValueError as err:
            prompts.append(PromptFailure("too_long", str(err)))
            cut.append(False)
            own.append(0)
            continue
        prompts.append(alone)
        cut.append(was_cut)
        own.append(len(alone))
    params = [replace(cfg.sampling, seed=text_seed(cfg.sampling.seed, text_id)) for text_id, *_ in items]
    live = [j for j, ids in enumerate(prompts) if not isinstance(ids, PromptFailure)]
    outputs: list[list[Generation] | PromptFailure] = list(prompts)  # failures stay as they are
    for j, out in zip(live, generate_isolated(engine, [prompts[j] for j in live], [params[j] for j in live]),
                      strict=True):
        outputs[j] = out
    entries = []
    for (text_id, text, rnd, slot), ids, was_chained, was_cut, text_tokens, out in zip(
        items, prompts, chained, cut, own, outputs, strict=True
    ):
        if not isinstance(out, PromptFailure):
            try:
                pairs, stats = pairs_from_generations(out, cfg.max_pairs)
            except Exception as err:  # noqa: BLE001 - a parser bug must not take the batch down
                out = PromptFailure("parse_error", f"{type(err).__name__}: {err}"[:500])
        if isinstance(out, PromptFailure):
            log.warning("text %r (round %d): %s: %s; kept raw, no pairs", text_id, rnd, out.reason, out.message)
            stats = {"failure": out.reason, "error": out.message}
            pairs = []
        stats.update(prompt_tokens=0 if isinstance(out, PromptFailure) else len(ids), text_tokens=text_tokens,
                     text_truncated=was_cut,
                     chained=was_chained, cached_tokens=0 if isinstance(out, PromptFailure) else out[0].cached_tokens)
        entries.append(Entry(text_id, text, pairs, rnd, slot, was_chained and bool(pairs), stats))
    return entries


SCHEDULES = ("chain", "round")


def run_rounds(
    engine: Engine,
    texts: Sequence[tuple[str, str]],
    cfg: RoundsConfig,
    batch_texts: int = 64,
    done: dict[tuple[int, int], list[Entry]] | None = None,
    on_batch: Callable[[int, int, list[Entry]], None] | None = None,
    schedule: str = "chain",
) -> list[Entry]:
    """Run all M rounds over ``(id, text)`` pairs; entries come back in input order.

    Batch ``b`` of round ``r`` holds the texts of slots ``b*batch_texts ..`` of chunk ``r``. With
    ``schedule="chain"`` a batch of slots goes through all M rounds before the next batch, so each
    chain's next prompt follows its previous one while that prefix is still in the engine's cache;
    ``"round"`` runs round by round (the reference's order). A slot's prompt depends only on its own
    history, so both give the same prompts, hence the same greedy output. ``done`` maps
    ``(round, batch)`` to entries already produced (a resumed run), reused instead of generated;
    ``on_batch(round, batch, entries)`` is called after each newly generated batch (checkpointing).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    done = done or {}
    layout = chunk_layout(len(texts), cfg.rounds)
    histories: dict[int, list[Entry]] = {}
    cache: dict[str, list[int]] = {}
    by_index: dict[int, Entry] = {}
    n_batches = math.ceil(len(layout[0]) / batch_texts) if layout[0] else 0
    if schedule == "chain":
        steps = [(rnd, b) for b in range(n_batches) for rnd in range(cfg.rounds)]
    else:
        steps = [(rnd, b) for rnd in range(cfg.rounds) for b in range(n_batches)]
    for rnd, b in steps:
        idx = layout[rnd][b * batch_texts : (b + 1) * batch_texts]
        if not idx:
            continue
        if (rnd, b) in done:
            entries = done[(rnd, b)]
        else:
            start = b * batch_texts
            items = [(texts[i][0], texts[i][1], rnd, slot) for slot, i in enumerate(idx, start)]
            entries = synthesize_batch(engine, cfg, items, histories, cache)
            if on_batch is not None:
                on_batch(rnd, b, entries)
        # Only this batch's own slots read these histories later, so either order sees round r-1.
        for i, e in zip(idx, entries, strict=True):
            by_index[i] = e
            histories.setdefault(e.slot, []).append(e)
    return [by_index[i] for i in range(len(texts))]
