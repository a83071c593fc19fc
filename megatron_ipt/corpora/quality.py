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
  keeps 64-bit hashes of the questions it has seen (8 bytes each, in sorted numpy runs).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megatron_ipt.corpora.templates import anatomy
from megatron_ipt.pairs import COT_ANSWER, COT_TRIGGER, OPTIONS_HEADER, Pair, is_degenerate, normalize

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


class QualityGate:
    """Filters texts' pairs in order; remembers the corpus's questions for cross-text dedup."""

    def __init__(self, cfg: QualityConfig | None = None) -> None:
        self.cfg = cfg or QualityConfig()
        self.seen = HashRuns()  # hashes of every question kept so far
        self.drops: Counter = Counter()  # reason -> pairs dropped
        self.checked = 0

    def filter(self, pairs: Sequence[Pair]) -> list[Pair]:
        """One text's pairs that pass, in order; ``self.drops[reason]`` counts the rest."""
        return self.filter_texts([pairs])[0]

    def filter_texts(self, texts: Sequence[Sequence[Pair]]) -> list[list[Pair]]:
        """A pair filter for ``chains.synthesized_documents``: many texts, as if one after another.

        A question repeated inside one text is ``dedup_text``'s; one asked in an earlier text (of
        this batch or before it) is ``dedup_corpus``'s.
        """
        if not self.cfg.enabled:
            return [list(p) for p in texts]
        cfg, drops = self.cfg, self.drops
        candidates: list[tuple[int, int, int]] = []  # (text, pair, question hash) past the per-pair filters
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
            h = np.array([c[2] for c in candidates], dtype=np.uint64)
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
        for (ti, pi, _), ok in zip(candidates, keep.tolist(), strict=True):
            if ok:
                kept[ti].append(texts[ti][pi])
        return kept
