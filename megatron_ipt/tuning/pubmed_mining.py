"""Context-based tuning tasks mined from PubMed records (:mod:`megatron_ipt.tuning.pubmed`).

The miner turns a record into one tuning :class:`~megatron_ipt.tuning.example.Example`: the
context is the abstract with the answering section held out (structured abstracts) or the whole
abstract (unstructured), and the pairs ask for the held-out section, a title, keywords and MeSH
terms (multiple choice, some with a chain of thought). Every choice is seeded per PMID, so the
output does not depend on record order.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator

from megatron_ipt.log import get_logger
from megatron_ipt.pairs import COT_TRIGGER, OPTIONS_HEADER, Pair, chain_of_thought, multiple_choice
from megatron_ipt.tuning.example import Example
from megatron_ipt.tuning.pubmed import PubmedRecord, Section, iter_pubmed_records, sections_text

log = get_logger(__name__)

STRUCTURED_DATASET = "pubmed_structured"
UNSTRUCTURED_DATASET = "pubmed_unstructured"
# NlmCategory of the held-out section -> the question it answers.
SECTION_QUESTIONS = {
    "CONCLUSIONS": "What did the study conclude?",
    "RESULTS": "What were the main results of the study?",
    "METHODS": "What methods were used?",
    "OBJECTIVE": "What was the objective of the study?",
}
TITLE_QUESTION = "Suggest a title for this abstract."
KEYWORDS_QUESTION = "List keywords that describe this abstract."
MESH_QUESTION = "Which of the following MeSH terms is assigned to this article?"


# ----------------------------------------------------------------------------------------- mining


def _rng(seed: int, pmid: str) -> random.Random:
    return random.Random(f"{seed}:{pmid}")


def _mesh_pair(
    rec: PubmedRecord, context: str, pool: list[str], rng: random.Random, n_options: int, cot_share: float,
    question: str = MESH_QUESTION,
) -> Pair | None:
    """A multiple-choice question over MeSH terms; a chain-of-thought variant when the abstract names the answer."""
    own = set(rec.mesh_terms)
    candidates = [m for m in (rec.major_mesh_terms or rec.mesh_terms) if len(m) > 2]
    distractors = [m for m in pool if m not in own]
    if not candidates or len(distractors) < n_options - 1:
        return None
    answer = rng.choice(candidates)
    options = [answer] + rng.sample(distractors, n_options - 1)
    rng.shuffle(options)
    question = multiple_choice(question, options)
    if answer.lower() in context.lower() and rng.random() < cot_share:
        others = ", ".join(o for o in options if o != answer)
        rationale = f"The abstract discusses {answer}, while it does not deal with {others}."
        return Pair(*chain_of_thought(question, rationale, answer))
    return Pair(question, answer)


def mine_record(
    rec: PubmedRecord, mesh_pool: list[str], seed: int = 0, n_options: int = 4, cot_share: float = 0.5,
    diverse: bool = False,
) -> Example | None:
    """One tuning example for a record, or None when nothing can be asked about it.

    ``diverse`` varies each question's phrasing and adds the families beyond the original four
    (``TUNING_PHRASINGS``).
    """
    rng = _rng(seed, rec.pmid)
    pairs: list[Pair] = []
    by_cat: dict[str, list[Section]] = {}
    for s in rec.sections:
        by_cat.setdefault(s.category, []).append(s)
    askable = [c for c in SECTION_QUESTIONS if c in by_cat]
    if rec.structured and askable:
        dataset = STRUCTURED_DATASET
        held = rng.choice(askable)
        context_sections = [s for s in rec.sections if s.category != held]
        if not context_sections:
            return None
        context = sections_text(context_sections)
        question = rng.choice(SECTION_PHRASINGS[held]) if diverse else SECTION_QUESTIONS[held]
        pairs.append(Pair(question, " ".join(s.text for s in by_cat[held])))
    else:
        dataset = UNSTRUCTURED_DATASET
        context = rec.abstract
    if rec.title:
        pairs.append(Pair(_phrase("title", rng, diverse), rec.title))
    if rec.keywords:
        pairs.append(Pair(_phrase("keywords", rng, diverse), ", ".join(rec.keywords)))
    mesh = _mesh_pair(rec, context, mesh_pool, rng, n_options, cot_share, _phrase("mesh_choice", rng, diverse))
    if mesh is not None:
        pairs.append(mesh)
    if diverse:
        pairs += _extra_pairs(rec, context, mesh_pool, rng, cot_share)
    if not pairs or not context:
        return None
    rng.shuffle(pairs)
    return Example(dataset, context, pairs, source=f"pmid:{rec.pmid}")


def mesh_term_pool(records: Iterable[PubmedRecord]) -> list[str]:
    """All MeSH descriptor names seen, sorted (distractors are drawn from it deterministically)."""
    return sorted({m for r in records for m in r.mesh_terms})


def mine_pubmed(
    records: Iterable[PubmedRecord] | None = None,
    seed: int = 0,
    structured_only: bool = False,
    limit: int | None = None,
    n_options: int = 4,
    cot_share: float = 0.5,
) -> Iterator[Example]:
    """Context-based tasks mined from PubMed records (default: the shipped files, cached in memory)."""
    recs = list(records) if records is not None else list(iter_pubmed_records())
    pool = mesh_term_pool(recs)
    n = 0
    for rec in recs:
        if structured_only and not rec.structured:
            continue
        ex = mine_record(rec, pool, seed=seed, n_options=n_options, cot_share=cot_share)
        if ex is None:
            continue
        yield ex
        n += 1
        if limit is not None and n >= limit:
            return


# ------------------------------------------------------------------------------ diverse mining
# The synthesizer's tuning families (set (a) of the demo's design). Each family has several
# phrasings; ``mine_record(..., diverse=True)`` draws one per pair and adds the families below the
# first four, with free-form, multiple-choice and chain-of-thought answers. The first phrasing of
# each of the original families is the wording ``diverse=False`` uses.
SECTION_PHRASINGS = {
    "CONCLUSIONS": (SECTION_QUESTIONS["CONCLUSIONS"], "What do the authors conclude?",
                    "State the conclusion this study reached.", "What is the take-home message of this work?"),
    "RESULTS": (SECTION_QUESTIONS["RESULTS"], "What did the study find?", "Summarize the findings.",
                "Which results were reported?"),
    "METHODS": (SECTION_QUESTIONS["METHODS"], "How was the study carried out?", "Describe the study design.",
                "What approach did the investigators take?"),
    "OBJECTIVE": (SECTION_QUESTIONS["OBJECTIVE"], "What was the aim of this research?",
                  "What question did the authors set out to answer?", "Why was this study done?"),
}
TUNING_PHRASINGS: dict[str, tuple[str, ...]] = {
    **{f"section_{cat.lower()}": p for cat, p in SECTION_PHRASINGS.items()},
    "title": (TITLE_QUESTION, "Write a title for this text.", "Give this abstract a headline.",
              "What would be a good title for this paper?"),
    "keywords": (KEYWORDS_QUESTION, "Which key terms capture this text?", "Give some keywords for this paper.",
                 "Tag this abstract with keywords."),
    "mesh_choice": (MESH_QUESTION, "Pick the MeSH heading that applies to this paper.",
                    "Which of these subject headings fits the article?"),
    "topic": ("What is the main topic of this abstract?", "What is this paper mainly about?",
              "Name the central subject of the text."),
    "mentions": ("Does the text mention {term}?", "Is {term} discussed in this abstract?",
                 "Does this paper deal with {term}?"),
    "abbreviation": ("What does {abbr} stand for here?", "Expand the abbreviation {abbr} as used in the text.",
                     "In this abstract, what is {abbr} short for?"),
    "count": ("How many {noun} were included?", "What was the number of {noun}?", "How many {noun} took part?"),
}
_ABBR = re.compile(r"\(([A-Z][A-Za-z0-9-]{1,9}s?)\)")
_COUNT = re.compile(r"\b(\d{2,6}) (patients|participants|subjects|children|women|men|adults|mice|rats|cases)\b")


def tuning_families() -> dict[str, dict]:
    """Family name -> its phrasings and answer styles (the demo's manifest, set (a))."""
    styles = {"mesh_choice": "multiple choice (some with chain of thought)",
              "mentions": "yes/no, free-form or chain of thought"}
    return {name: {"wordings": list(p), "answer_format": styles.get(name, "free-form"),
                   "source": "structured training-side PubMed records"} for name, p in TUNING_PHRASINGS.items()}


def _phrase(family: str, rng: random.Random, diverse: bool, **fmt: str) -> str:
    options = TUNING_PHRASINGS[family]
    return (rng.choice(options) if diverse else options[0]).format(**fmt)


def _abbreviation(text: str) -> tuple[str, str] | None:
    """(abbreviation, long form) from the first ``long form (ABBR)`` whose initials match."""
    for m in _ABBR.finditer(text):
        abbr = m.group(1).rstrip("s")
        letters = [c for c in abbr if c.isalpha() and c.isupper()]
        words = text[: m.start()].split()[-len(letters) - 2:]
        for k in range(len(letters), len(letters) + 3):
            span = words[-k:] if k <= len(words) else []
            if span and "".join(w[0].upper() for w in span if w[0].isalpha())[: len(letters)] == "".join(letters) \
                    and span[0][0].upper() == letters[0]:
                return abbr, " ".join(span).strip(",;:")
    return None


def _extra_pairs(rec: PubmedRecord, context: str, pool: list[str], rng: random.Random,
                 cot_share: float) -> list[Pair]:
    """The families beyond the original four (``diverse=True``), every answer grounded in the record.

    No family asks to pick the paper's title or journal among other papers': those distractors
    cannot be read off the text, and SmolLM2-135M tuned on them opened every output with such a
    question and looped on invented options (0.08 pairs per text in the small demo).
    """
    pairs: list[Pair] = []
    if rec.major_mesh_terms:
        pairs.append(Pair(_phrase("topic", rng, True), ", ".join(rec.major_mesh_terms[:3])))
    present = [m for m in rec.mesh_terms if len(m) > 3 and m.lower() in context.lower()]
    absent = [m for m in pool if m not in rec.mesh_terms and m.lower() not in context.lower()]
    if present and absent:
        yes = rng.random() < 0.5
        term = rng.choice(present if yes else absent)
        question = _phrase("mentions", rng, True, term=term)
        answer = "Yes" if yes else "No"
        if rng.random() < cot_share:
            why = (f"The text refers to {term}." if yes else f"The text does not refer to {term} anywhere.")
            pairs.append(Pair(*chain_of_thought(question, why, answer)))
        else:
            pairs.append(Pair(question, answer))
    abbr = _abbreviation(context)
    if abbr is not None:
        pairs.append(Pair(_phrase("abbreviation", rng, True, abbr=abbr[0]), abbr[1]))
    count = _COUNT.search(context)
    if count is not None:
        pairs.append(Pair(_phrase("count", rng, True, noun=count.group(2)), count.group(1)))
    return pairs


def tuning_template_of(instruction: str) -> tuple[str, str] | None:
    """``(family, phrasing)`` when an instruction copies a tuning phrasing verbatim (options and a
    chain-of-thought trigger aside; ``{slot}`` phrasings match with any filler), else None."""
    head = instruction.split(OPTIONS_HEADER, 1)[0].removesuffix(COT_TRIGGER).strip()
    for family, phrasings in TUNING_PHRASINGS.items():
        for p in phrasings:
            if "{" not in p:
                if head == p:
                    return family, p
            else:
                before, _, rest = p.partition("{")
                after = rest.partition("}")[2]
                if head.startswith(before) and head.endswith(after) and len(head) > len(before) + len(after):
                    return family, p
    return None
