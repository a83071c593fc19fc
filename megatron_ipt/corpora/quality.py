"""The quality gate: synthesized pairs that would teach the wrong thing never enter a corpus.

Each filter can be switched off on its own; every drop is counted by reason. Filters, in order:

- ``degenerate``: an empty response, one with no letter or digit, a looping question or response,
  or a response that only repeats its question;
- ``mc_answer``: a multiple-choice pair's answer must be one of its options (the templates shuffle
  and re-letter options, so an answer given as a letter or as outside text would turn wrong);
- ``cot_answer``: a chain-of-thought pair (its instruction ends with the trigger) needs a question
  before the trigger, a rationale and a final answer;
- ``dedup_text`` / ``dedup_corpus``: a question asked again, within one text or anywhere earlier
  in the corpus, compared after normalization (case, punctuation and spacing ignored); the corpus
  keeps 64-bit hashes of the questions it has seen.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_ipt.corpora.templates import anatomy, normalize
from megatron_ipt.synth.format import COT_ANSWER, COT_TRIGGER, OPTIONS_HEADER, Pair
from megatron_ipt.synth.rounds import is_degenerate

DROP_REASONS = ("empty_response", "degenerate", "mc_bad_options", "mc_answer_not_in_options",
                "cot_without_question", "cot_without_final_answer", "cot_without_rationale",
                "duplicate_in_text", "duplicate_in_corpus")

_ALNUM = re.compile(r"\w", re.UNICODE)


@dataclass
class QualityConfig:
    enabled: bool = True  # master switch: false keeps every synthesized pair as parsed
    degenerate: bool = True  # drop empty, letterless, looping or question-echoing responses
    mc_answer: bool = True  # drop multiple-choice pairs whose answer is none of their options
    cot_answer: bool = True  # drop chain-of-thought pairs without a question, rationale or final answer
    dedup_text: bool = True  # drop a question asked again within the same text
    dedup_corpus: bool = True  # drop a question already asked anywhere earlier in the corpus (normalized hash)


def question_hash(instruction: str) -> int:
    """A 64-bit hash of the normalized instruction (options and trigger included: a different task)."""
    return int.from_bytes(hashlib.blake2b(normalize(instruction).encode(), digest_size=8).digest(), "little")


def drop_reason(pair: Pair, cfg: QualityConfig) -> str | None:
    """Why a pair fails the per-pair filters, or None when it passes them."""
    q, a = pair.instruction, pair.response
    if cfg.degenerate:
        if not a.strip():
            return "empty_response"
        if not _ALNUM.search(a) or is_degenerate(a) or is_degenerate(q):
            return "degenerate"
        if normalize(a) == normalize(q):
            return "degenerate"
    parts = anatomy(pair)
    if cfg.cot_answer and q.rstrip().endswith(COT_TRIGGER.strip()):
        stem = q.rstrip()[: -len(COT_TRIGGER.strip())].strip()
        if OPTIONS_HEADER.strip() in stem:
            stem = stem.split(OPTIONS_HEADER.strip(), 1)[0].strip()
        if not stem:
            return "cot_without_question"
        if COT_ANSWER.strip() not in a or not a.rsplit(COT_ANSWER.strip(), 1)[1].strip(" .\n"):
            return "cot_without_final_answer"
        if not a.rsplit(COT_ANSWER.strip(), 1)[0].strip():
            return "cot_without_rationale"
    if cfg.mc_answer and OPTIONS_HEADER in q.removesuffix(COT_TRIGGER):
        if not parts.options:
            return "mc_bad_options"
        if normalize(parts.answer) not in {normalize(o) for o in parts.options}:
            return "mc_answer_not_in_options"
    return None


class QualityGate:
    """Filters one text's pairs at a time; remembers the corpus's questions for cross-text dedup."""

    def __init__(self, cfg: QualityConfig | None = None) -> None:
        self.cfg = cfg or QualityConfig()
        self.seen: set[int] = set()  # a Python set of ints: ~60 bytes per question held
        self.drops: Counter = Counter()  # reason -> pairs dropped
        self.checked = 0

    def filter_texts(self, texts: Sequence[Sequence[Pair]]) -> list[list[Pair]]:
        """A pair filter for ``chains.synthesized_documents``: each text in turn, in order."""
        return [self.filter(pairs) for pairs in texts]

    def filter(self, pairs: Sequence[Pair]) -> list[Pair]:
        """The pairs that pass, in order; ``self.drops[reason]`` counts the rest."""
        if not self.cfg.enabled:
            return list(pairs)
        drops = self.drops
        self.checked += len(pairs)
        kept: list[Pair] = []
        in_text: set[int] = set()
        for pair in pairs:
            reason = drop_reason(pair, self.cfg)
            h = question_hash(pair.instruction) if reason is None else 0
            if reason is None and self.cfg.dedup_text and h in in_text:
                reason = "duplicate_in_text"
            elif reason is None and self.cfg.dedup_corpus and h in self.seen:
                reason = "duplicate_in_corpus"
            if reason is not None:
                drops[reason] += 1
                continue
            in_text.add(h)
            kept.append(pair)
        if self.cfg.dedup_corpus:  # after the text: repeats within it are dedup_text's business
            self.seen.update(in_text)
        return kept
