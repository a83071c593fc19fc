"""The quality gate: synthesized pairs that would teach the wrong thing never enter a corpus.

Each filter can be switched off on its own; every drop is counted by reason. Filters, in order:

- ``degenerate``: an empty response, one with no letter or digit, a looping question or response,
  or a response that only repeats its question;
- ``mc_answer``: a multiple-choice pair's answer must be one of its options (the templates shuffle
  and re-letter options, so an answer given as a letter or as outside text would turn wrong);
- ``cot_answer``: a chain-of-thought pair (its instruction ends with the trigger) needs a question
  before the trigger, a rationale and a final answer;
- ``dedup_text``: a question asked again within one text (normalized: case, punctuation and
  spacing ignored);
- ``dedup_corpus``: a whole pair, question *and* response, repeated from anywhere earlier in the
  corpus: boilerplate. A question alone is bound to its text ("What was the objective of the
  study?" about another abstract is another task with another answer), so it is never a corpus
  duplicate by itself. The corpus keeps 64-bit hashes of the pairs it has kept (8 bytes each, in
  sorted numpy runs);
- ``max_question_share`` (off by default): the pairs of one question beyond that share of the
  pairs kept so far (``question_over_share``).

The gate also counts every kept pair's question, so the report shows how concentrated they are.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megatron_ipt.config import ConfigError
from megatron_ipt.corpora.templates import anatomy
from megatron_ipt.pairs import COT_ANSWER, COT_TRIGGER, OPTIONS_HEADER, Pair, is_degenerate, normalize

DROP_REASONS = ("empty_response", "degenerate", "mc_bad_options", "mc_answer_not_in_options",
                "cot_without_question", "cot_without_final_answer", "cot_without_rationale",
                "duplicate_in_text", "duplicate_in_corpus", "question_over_share")
TOP_QUESTIONS = 10  # the most frequent questions the report lists

_ALNUM = re.compile(r"\w", re.UNICODE)


@dataclass
class QualityConfig:
    enabled: bool = True  # master switch: false keeps every synthesized pair as parsed
    degenerate: bool = True  # drop empty, letterless, looping or question-echoing responses
    mc_answer: bool = True  # drop multiple-choice pairs whose answer is none of their options
    cot_answer: bool = True  # drop chain-of-thought pairs without a question, rationale or final answer
    dedup_text: bool = True  # drop a question asked again within the same text
    dedup_corpus: bool = True  # drop a pair (same question and response, normalized) kept earlier in the corpus
    max_question_share: float = 0.0  # > 0: drop a question's pairs beyond this share of the pairs kept so far (0: off)

    def validate(self) -> None:
        if not 0 <= self.max_question_share <= 1:
            raise ConfigError(f"quality.max_question_share must be in [0, 1] (0: off), got {self.max_question_share}")


def question_hash(instruction: str) -> int:
    """A 64-bit hash of the normalized instruction (options and trigger included: a different task)."""
    return int.from_bytes(hashlib.blake2b(normalize(instruction).encode(), digest_size=8).digest(), "little")


def pair_hash(pair: Pair) -> int:
    """A 64-bit hash of the normalized question and response together."""
    text = normalize(pair.instruction) + "\x00" + normalize(pair.response)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


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


class HashRuns:
    """A growing set of 64-bit hashes held as sorted numpy runs: 8 bytes per hash (a Python set of
    ints takes about 70). Runs of similar size merge, so a lookup probes about log2(n / batch) runs."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.runs)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        for run in self.runs:
            idx = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            found |= run[idx] == hashes
        return found

    def add(self, new: np.ndarray) -> None:
        """Add hashes none of which is held yet."""
        if not len(new):
            return
        self.runs.append(np.unique(new))
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]))


class QuestionCounts:
    """How often each question was kept: exact counts held as a sorted numpy table (16 bytes per
    distinct question) plus a small dict of recent ones, and the wording of the most frequent."""

    COMPACT_AT = 1 << 18  # recent distinct questions before they merge into the table

    def __init__(self) -> None:
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.recent: Counter = Counter()
        self.names: dict[int, str] = {}  # hash -> one wording, for the current leaders and recent questions
        self.total = 0

    def count(self, h: int) -> int:
        held = 0
        if len(self.hashes):
            i = int(np.searchsorted(self.hashes, np.uint64(h)))
            if i < len(self.hashes) and int(self.hashes[i]) == h:
                held = int(self.counts[i])
        return held + self.recent.get(h, 0)

    def add(self, h: int, question: str) -> None:
        self.recent[h] += 1
        self.names.setdefault(h, question)
        self.total += 1
        if len(self.recent) >= self.COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        if not self.recent:
            return
        new_h = np.fromiter(self.recent.keys(), dtype=np.uint64, count=len(self.recent))
        new_c = np.fromiter(self.recent.values(), dtype=np.int64, count=len(self.recent))
        self.hashes, inverse = np.unique(np.concatenate([self.hashes, new_h]), return_inverse=True)
        self.counts = np.bincount(inverse, weights=np.concatenate([self.counts, new_c]),
                                  minlength=len(self.hashes)).astype(np.int64)
        self.recent.clear()
        leaders = {int(h) for h in self.hashes[np.argsort(-self.counts, kind="stable")[:TOP_QUESTIONS]]}
        self.names = {h: q for h, q in self.names.items() if h in leaders}

    def distinct(self) -> int:
        self._compact()
        return len(self.hashes)

    def top(self, k: int = TOP_QUESTIONS) -> list[dict]:
        """The ``k`` most frequent questions: wording, pairs and share of all kept pairs."""
        self._compact()
        order = np.argsort(-self.counts, kind="stable")[:k]
        return [{"question": self.names.get(int(self.hashes[i]), ""), "pairs": int(self.counts[i]),
                 "share": round(int(self.counts[i]) / self.total, 4)} for i in order]


class QualityGate:
    """Filters texts' pairs in order; remembers the corpus's kept pairs for cross-text dedup and
    counts their questions."""

    def __init__(self, cfg: QualityConfig | None = None) -> None:
        self.cfg = cfg or QualityConfig()
        self.cfg.validate()
        self.seen = HashRuns()  # hashes of every pair (question and response) kept so far
        self.questions = QuestionCounts()
        self.drops: Counter = Counter()  # reason -> pairs dropped
        self.checked = 0

    def filter(self, pairs: Sequence[Pair]) -> list[Pair]:
        """One text's pairs that pass, in order; ``self.drops[reason]`` counts the rest."""
        return self.filter_texts([pairs])[0]

    def filter_texts(self, texts: Sequence[Sequence[Pair]]) -> list[list[Pair]]:
        """A pair filter for ``chains.synthesized_documents``: many texts, as if one after another.

        A question repeated inside one text is ``dedup_text``'s; a whole pair kept in an earlier
        text (of this batch or before it) is ``dedup_corpus``'s.
        """
        if not self.cfg.enabled:
            return [list(p) for p in texts]
        cfg, drops = self.cfg, self.drops
        candidates: list[tuple[int, int, int]] = []  # (text, pair, question hash) past the per-text filters
        for ti, pairs in enumerate(texts):
            self.checked += len(pairs)
            in_text: set[int] = set()
            for pi, pair in enumerate(pairs):
                reason = drop_reason(pair, cfg)
                if reason is None:
                    h = question_hash(pair.instruction)
                    if not (cfg.dedup_text and h in in_text):
                        in_text.add(h)
                        candidates.append((ti, pi, h))
                        continue
                    reason = "duplicate_in_text"
                drops[reason] += 1
        keep = np.ones(len(candidates), dtype=bool)
        if cfg.dedup_corpus and candidates:
            h = np.array([pair_hash(texts[ti][pi]) for ti, pi, _ in candidates], dtype=np.uint64)
            t = np.array([c[0] for c in candidates], dtype=np.int64)
            order = np.argsort(h, kind="stable")  # equal hashes stay in text order
            hs, ts = h[order], t[order]
            group_start = np.concatenate(([True], hs[1:] != hs[:-1]))
            first_text = ts[group_start][np.cumsum(group_start) - 1]
            earlier = np.empty(len(h), dtype=bool)
            earlier[order] = first_text < ts
            keep = ~(earlier | self.seen.contains(h))
            if n_dup := int((~keep).sum()):
                drops["duplicate_in_corpus"] += n_dup
            self.seen.add(h[keep])
        kept: list[list[Pair]] = [[] for _ in texts]
        share, questions = cfg.max_question_share, self.questions
        for (ti, pi, qh), ok in zip(candidates, keep.tolist(), strict=True):
            if not ok:
                continue
            pair = texts[ti][pi]
            # A question's first pair always passes; later ones while its count stays within the share
            # of everything kept (this pair included), so the kept share never exceeds the cap by more
            # than one pair's worth.
            if share and (n := questions.count(qh)) and n + 1 > share * (questions.total + 1):
                drops["question_over_share"] += 1
                continue
            questions.add(qh, pair.instruction)
            kept[ti].append(pair)
        return kept

    def report(self) -> dict:
        """What the gate checked and dropped, and how concentrated the kept questions are."""
        return {"pairs_checked": self.checked, "pairs_dropped": sum(self.drops.values()),
                "dropped": dict(sorted(self.drops.items(), key=lambda kv: -kv[1])),
                "pairs_kept": self.questions.total, "distinct_questions": self.questions.distinct(),
                "top_questions": self.questions.top()}
