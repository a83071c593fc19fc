"""Pairs/s of the contamination gate, and the memory of its n-gram set: sorted array with a directory vs Python set.

Usage::

    .venv/bin/python benchmarks/decontaminate.py [--eval-items 100000] [--pairs 200000] [--tiny]

An evaluation set of ``--eval-items`` items (``--item-words`` words each, Zipf-distributed over a
50,000-word vocabulary) is written as JSON lines and indexed through the gate's reader; then
``--pairs`` synthesized pairs (about 40 words each, 5 per text as the paper reports) go through
``ContaminationGate.filter_texts`` in batches of 4,096 texts, as ``build_corpora`` calls it. 1 % of the
pairs carry a 13-word span of an evaluation item and must all be removed. The same hashes are then
probed in a Python ``set`` of ints, to compare both memory layouts at equal work.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_ipt.corpora.chains import FILTER_BATCH  # noqa: E402
from megatron_ipt.corpora.decontaminate import ContaminationConfig, ContaminationGate  # noqa: E402
from megatron_ipt.pairs import Pair  # noqa: E402

VOCAB = 50_000


def zipf_words(rng: np.random.Generator, n: int) -> list[str]:
    ids = np.minimum(rng.zipf(1.15, n), VOCAB)
    return [f"w{i}" for i in ids.tolist()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-items", type=int, default=100_000)
    ap.add_argument("--item-words", type=int, default=60)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="2,000 items and 2,000 pairs: a seconds-long check")
    args = ap.parse_args(argv)
    if args.tiny:
        args.eval_items, args.pairs = 2_000, 2_000
    rng = np.random.default_rng(args.seed)
    items = [zipf_words(rng, args.item_words) for _ in range(args.eval_items)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        with open(path, "w") as fh:
            for i, words in enumerate(items):
                fh.write(json.dumps({"id": i, "question": " ".join(words)}) + "\n")
        t0 = time.perf_counter()
        gate = ContaminationGate(ContaminationConfig(eval_sets=[str(path)], ngram=args.ngram))
        build_s = time.perf_counter() - t0
    ngrams = gate.sets[0].ngrams
    array_bytes = gate.sets[0].nbytes

    texts: list[list[Pair]] = []
    planted = 0
    for k in range(0, args.pairs, 5):
        pairs = []
        for j in range(min(5, args.pairs - k)):
            q, a = zipf_words(rng, 15), zipf_words(rng, 25)
            if (k + j) % 100 == 0:  # 1 %: a benchmark span inside the question
                src = items[int(rng.integers(len(items)))]
                s = int(rng.integers(len(src) - args.ngram + 1))
                q = q[:2] + src[s : s + args.ngram]
                planted += 1
            pairs.append(Pair(" ".join(q), " ".join(a)))
        texts.append(pairs)

    t0 = time.perf_counter()
    kept = sum(len(p) for start in range(0, len(texts), FILTER_BATCH)
               for p in gate.filter_texts(texts[start : start + FILTER_BATCH]))
    array_s = time.perf_counter() - t0
    removed = args.pairs - kept

    tracemalloc.start()
    as_set = set(ngrams.tolist())
    set_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    hasher = gate.hasher
    t0 = time.perf_counter()
    removed_set = 0
    for start in range(0, len(texts), FILTER_BATCH):
        flat = [f"{p.instruction} {p.response}" for pairs in texts[start : start + FILTER_BATCH] for p in pairs]
        hashes, owner, _ = hasher.hashes(flat)
        removed_set += len({o for h, o in zip(hashes.tolist(), owner.tolist(), strict=True) if h in as_set})
    set_s = time.perf_counter() - t0

    print(f"evaluation set: {args.eval_items:,} items x {args.item_words} words -> {len(ngrams):,} distinct "
          f"{args.ngram}-grams, indexed in {build_s:.2f}s ({args.eval_items / build_s:,.0f} items/s)")
    print(f"pairs: {args.pairs:,} ({planted:,} planted), removed {removed:,} (set lookup: {removed_set:,})")
    print(f"sorted array + directory: {args.pairs / array_s:,.0f} pairs/s, {array_bytes / 1e6:.1f} MB "
          f"({array_bytes / max(len(ngrams), 1):.1f} B per n-gram)")
    print(f"python set of ints:      {args.pairs / set_s:,.0f} pairs/s, {set_bytes / 1e6:.1f} MB "
          f"({set_bytes / max(len(ngrams), 1):.1f} B per n-gram)")
    print(f"ratio array/set: speed {set_s / array_s:.2f}x, memory {array_bytes / max(set_bytes, 1):.3f}x")
    if removed < planted or removed != removed_set:
        print("error: the gate missed planted items or the two lookups disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
