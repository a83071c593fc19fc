"""The demo's evaluation families (set (c)), built from held-out PubMed records the way real benchmarks are.

- ``rct_sentence_role``: PubMed 200k RCT's task. That dataset was built by splitting structured
  abstracts into sentences and labelling each sentence with the NLM category of its section
  (BACKGROUND, OBJECTIVE, METHODS, RESULTS, CONCLUSIONS); a model classifies a sentence. Here:
  one sentence per held-out structured abstract, labels balanced round-robin (chance is 1/5).
- ``abstract_next_sentence``: a continuation task in the style of HellaSwag / SWAG: up to
  ``CONTEXT_SENTENCES`` consecutive sentences of a held-out unstructured abstract, and four
  candidate next sentences (the true one and three from other held-out abstracts); the model picks
  by log-likelihood.

Both are scored as log-likelihood multiple choice through lm-evaluation-harness (acc, acc_norm;
``megatron_ipt.eval.suite``). Items are ``{id, query, choices, gold}``. Neither family's wording or
answer format appears in any training input of either arm (``MANIFEST``); an item whose text shares
a 13-gram with a training corpus is dropped and counted (``drop_contaminated``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

from megatron_ipt.corpora.decontaminate import NgramHasher
from megatron_ipt.tuning.pubmed import PubmedRecord

ROLES = ("BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS", "CONCLUSIONS")
RCT_QUERY = "Abstract sentence: {sentence}\nRole:"
NGRAM = 13  # the decontamination window of lm-evaluation-harness and GPT-3
# Sentences of context before the candidates (SWAG gives one, HellaSwag about two). lm-eval scores
# every choice with its whole context (no prefix sharing), and on 2 CPU cores it is compute-bound
# (~380 tokens/s): the abstract's full opening made this family 85% of the suite's tokens, two
# sentences still 2/3 of them (69 context tokens per choice against 33 of continuation). One sentence,
# as in SWAG, keeps the medium demo's seven suite runs inside its time budget.
CONTEXT_SENTENCES = 1

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[])")


def split_sentences(text: str) -> list[str]:
    """Sentences of an abstract section (a full stop, ! or ? followed by a capital)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.split()) >= 4]


def _rng(family: str, key: str) -> random.Random:
    return random.Random(f"eval:{family}:{key}")


def rct_items(records: Iterable[PubmedRecord], limit: int) -> list[dict]:
    """Sentence-role items, one sentence per structured abstract, balanced over the five roles."""
    by_role: dict[str, list[dict]] = {r: [] for r in ROLES}
    for rec in records:
        if not rec.structured:
            continue
        roles = [s for s in rec.sections if s.category in ROLES]
        if len({s.category for s in roles}) < 2:
            continue
        rng = _rng("rct", rec.pmid)
        section = rng.choice(roles)
        sentences = split_sentences(section.text)
        if not sentences:
            continue
        sentence = rng.choice(sentences)
        by_role[section.category].append({
            "id": f"pmid:{rec.pmid}", "query": RCT_QUERY.format(sentence=sentence),
            "choices": [f" {r.lower()}" for r in ROLES], "gold": ROLES.index(section.category),
            "text": sentence})
    items: list[dict] = []
    queues = [by_role[r] for r in ROLES]
    while len(items) < limit and any(queues):
        for q in queues:
            if q and len(items) < limit:
                items.append(q.pop(0))
    return items


def next_sentence_items(records: Iterable[PubmedRecord], limit: int, n_choices: int = 4) -> list[dict]:
    """Continuation items from unstructured abstracts (distractors: sentences of other abstracts)."""
    docs = [(rec.pmid, split_sentences(rec.abstract)) for rec in records if not rec.structured]
    docs = [(pmid, sents) for pmid, sents in docs if len(sents) >= 4]
    pool = [(pmid, s) for pmid, sents in docs for s in sents[1:]]
    items: list[dict] = []
    for pmid, sents in docs:
        if len(items) >= limit or len(pool) < 4 * n_choices:
            break
        rng = _rng("next", pmid)
        k = rng.randint(2, len(sents) - 1)
        gold = sents[k]
        distractors: list[str] = []
        while len(distractors) < n_choices - 1:
            other_pmid, s = pool[rng.randrange(len(pool))]
            if other_pmid != pmid and s not in distractors:
                distractors.append(s)
        choices = [gold, *distractors]
        rng.shuffle(choices)
        context = " ".join(sents[max(0, k - CONTEXT_SENTENCES):k])
        items.append({"id": f"pmid:{pmid}", "query": context, "choices": [f" {c}" for c in choices],
                      "gold": choices.index(gold), "text": " ".join([context, *choices])})
    return items


FAMILY_BUILDERS = {"rct_sentence_role": rct_items, "abstract_next_sentence": next_sentence_items}


# ----------------------------------------------------------------------------------- 13-grams


def ngram_hashes(text: str, n: int = NGRAM) -> set[int]:
    """Hashed word n-grams of ``text`` with the contamination gate's normalization and hash
    (``corpora/decontaminate.py``: lm-eval's, stable across processes)."""
    return set(NgramHasher(n).hashes([text])[0].tolist())


def ngram_set(texts: Iterable[str], n: int = NGRAM) -> set[int]:
    return set(NgramHasher(n).hashes(list(texts))[0].tolist())


def drop_contaminated(items: Sequence[dict], training: set[int]) -> tuple[list[dict], int]:
    """Items whose text shares no 13-gram with ``training``, and how many were dropped."""
    kept = [it for it in items if not (ngram_hashes(it["text"]) & training)]
    return kept, len(items) - len(kept)


# ----------------------------------------------------------------------------------- manifest


def family_manifest(tuning_families: dict[str, dict], general_families: dict[str, dict],
                    instruction_families: dict[str, dict]) -> dict[str, dict]:
    """The family sets the demo's design rests on: (a) synthesizer tuning, (b) general instructions of
    the domain recipe, (c) evaluation, disjoint from both and from (d) instruction tuning after
    pre-training (the families of (a) on other records)."""
    evaluation = {
        "rct_sentence_role": {"wordings": [RCT_QUERY.split("{")[0], "Role:"],
                              "answer_format": "one of five role words, log-likelihood multiple choice",
                              "source": "held-out structured PubMed abstracts (PubMed 200k RCT's construction)"},
        "abstract_next_sentence": {"wordings": [],
                                   "answer_format": "continuation sentence, log-likelihood multiple choice of 4",
                                   "source": "held-out unstructured PubMed abstracts"},
    }
    return {"a_tuning": tuning_families, "b_general": general_families, "c_evaluation": evaluation,
            "d_instruction_tuning": instruction_families}
