"""Samples/s of packed 2,048-token samples from a blended dataset, in one process.

Usage::

    .venv/bin/python benchmarks/sample_retrieval.py [--prefix P ...] [--seq-len 2048] [--samples 20000]

Without ``--prefix`` two synthetic datasets (PubMed-like lognormal document lengths, uint16 tokens)
are written to ``--workdir``. Measures: random-order ``BlendedDataset[i]`` (the dataset API), and the
train loader (micro-batches of 8, collated into torch tensors). Goal: >= 10,000 samples/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_ipt.data.blend import BlendedDataset  # noqa: E402
from megatron_ipt.data.indexed import IndexedDatasetWriter, exists  # noqa: E402
from megatron_ipt.data.loader import TrainLoader  # noqa: E402


def synthetic(prefix: Path, tokens: int, seed: int) -> None:
    if exists(prefix):
        return
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        written = 0
        while written < tokens:
            lengths = np.clip(rng.lognormal(5.5, 0.6, 10_000).astype(np.int64), 8, 4000)
            w.add_documents(rng.integers(0, 32000, int(lengths.sum()), dtype=np.uint16), lengths)
            written += int(lengths.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", nargs="*", help="dataset prefixes to blend (equal weights); default: synthetic")
    p.add_argument("--workdir", default="/tmp/megatron_ipt_bench", help="where synthetic data and caches go")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--samples", type=int, default=20_000, help="samples to retrieve per measurement")
    p.add_argument("--micro-batch-size", type=int, default=8)
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    prefixes = args.prefix or []
    if not prefixes:
        for i, n in enumerate((40_000_000, 10_000_000)):
            synthetic(work / f"synthetic{i}", n, seed=i)
            prefixes.append(str(work / f"synthetic{i}"))
    blend = " ".join(f"{1 / len(prefixes):.6f} {pr}" for pr in prefixes)
    t = time.perf_counter()
    ds = BlendedDataset(blend, args.seq_len, args.samples * 2, seed=1, cache_dir=work / "index-cache")
    print(f"blend {blend}: {len(ds)} samples, index build/load {time.perf_counter() - t:.2f}s")
    for r in ds.report():
        print(f"  {r['prefix']}: weight {r['weight']}, {r['samples']} samples, {r['epochs']} epochs")
    order = np.random.default_rng(0).permutation(len(ds))[: args.samples]
    ds[int(order[0])]  # touch the memory maps once
    t = time.perf_counter()
    n_tok = 0
    for i in order:
        n_tok += ds[int(i)]["input_ids"].size
    dt = time.perf_counter() - t
    print(f"random access: {args.samples / dt:,.0f} samples/s ({n_tok / dt / 1e6:,.1f} M tokens/s), seq_len {args.seq_len}")
    loader = TrainLoader(ds, args.micro_batch_size)
    t = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch["input_ids"].shape[0]
        if n >= args.samples:
            break
    dt = time.perf_counter() - t
    print(f"train loader (micro-batch {args.micro_batch_size}, collated torch tensors): {n / dt:,.0f} samples/s")


if __name__ == "__main__":
    main()
