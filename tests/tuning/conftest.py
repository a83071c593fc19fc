"""A hand-written MEDLINE XML file for the PubMed reader and miner tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

ARTICLE = """
  <PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM">
    <PMID Version="1">{pmid}</PMID>
    <Article PubModel="Print">
      <Journal><JournalIssue><PubDate>{date}</PubDate></JournalIssue><Title>{journal}</Title></Journal>
      <ArticleTitle>{title}</ArticleTitle>
      {abstract}
    </Article>
    <MeshHeadingList>{mesh}</MeshHeadingList>
    {keywords}
  </MedlineCitation></PubmedArticle>"""

STRUCTURED_ABSTRACT = """<Abstract>
  <AbstractText Label="BACKGROUND" NlmCategory="BACKGROUND">Aspirin may lower <i>fever</i>  in mice.</AbstractText>
  <AbstractText Label="METHODS" NlmCategory="METHODS">We gave aspirin to 20 mice.</AbstractText>
  <AbstractText Label="RESULTS" NlmCategory="RESULTS">Fever fell by 2 degrees.</AbstractText>
  <AbstractText Label="CONCLUSIONS" NlmCategory="CONCLUSIONS">Aspirin lowers fever in mice.</AbstractText>
  <AbstractText Label="BENTHAM SCIENCE DISCLAIMER">It is a condition of publication that...</AbstractText>
</Abstract>"""


def _mesh(*terms: tuple[str, str]) -> str:
    return "".join(
        f'<MeshHeading><DescriptorName UI="D1" MajorTopicYN="{yn}">{t}</DescriptorName></MeshHeading>'
        for t, yn in terms
    )


def write_xml(path: Path) -> Path:
    arts = [
        ARTICLE.format(
            pmid="101",
            date="<Year>2001</Year>",
            journal="J Mice",
            title="Aspirin and fever in mice.",
            abstract=STRUCTURED_ABSTRACT,
            mesh=_mesh(("Aspirin", "Y"), ("Mice", "N"), ("Fever", "Y")),
            keywords="<KeywordList><Keyword>aspirin</Keyword><Keyword>fever</Keyword></KeywordList>",
        ),
        ARTICLE.format(
            pmid="102",
            date="<MedlineDate>1980 Jan-Feb</MedlineDate>",
            journal="J Dogs",
            title="Dogs sleep a lot.",
            abstract="<Abstract><AbstractText>Dogs sleep fourteen hours a day.</AbstractText></Abstract>",
            mesh=_mesh(("Dogs", "N"), ("Sleep", "Y")),
            keywords="",
        ),
        ARTICLE.format(
            pmid="103",
            date="<Year>1999</Year>",
            journal="J X",
            title="No abstract here.",
            abstract="",
            mesh=_mesh(("Heart", "N"), ("Liver", "N"), ("Kidney", "N"), ("Lung", "N")),
            keywords="",
        ),
    ]
    text = '<?xml version="1.0"?>\n<PubmedArticleSet>' + "".join(arts) + "\n</PubmedArticleSet>\n"
    with gzip.open(path, "wt") as fh:
        fh.write(text)
    return path


@pytest.fixture
def xml(tmp_path: Path) -> Path:
    return write_xml(tmp_path / "mini.xml.gz")
