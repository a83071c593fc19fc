"""The demo's training set-ups vs a plain PyTorch loop: same model, threads, data and batch, one run.

Arms (each reports median tokens/s over its timed steps; the first ``--warmup`` steps are not timed):

- ``plain fp32`` / ``plain bf16-autocast``: an AdamW loop over the data core's packed samples, the
  HF model loaded from the start-model directory, ``torch.set_num_threads(THREADS)``, one process;
- ``trainer zero0 x1``: ``megatron_ipt.train`` under torchrun, 1 process x THREADS threads, ZeRO-0
  (``ds_configs/zero0.json``) — the demo's set-up;
- ``trainer zero3 x2``: 2 processes x THREADS/2 threads, ZeRO-3 (ds_configs/zero3.json) — the
  multi-process alternative;

each trainer arm in fp32 and DeepSpeed bf16, and ZeRO-0 also in ``bfloat16_autocast`` (fp32 weights and
optimizer, bf16 autocast forward: the plain loop's fastest mode). The ratio printed last is best trainer arm / best plain
arm; the demo should reach >= 0.9x. The real run (SmolLM2-135M, as the demo trains it; run it alone)::

    .venv/bin/python benchmarks/demo_train_speed.py --steps 8 --warmup 2 --seq-len 512 --micro-batch 2

``--tiny`` runs a tiny random model for a few steps (the tested form; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_model(work: Path, tiny: bool) -> Path:
    from megatron_ipt.model.hf_import import smollm2_hf_dir

    if not tiny:
        return smollm2_hf_dir()
    from megatron_ipt.demo.start_model import build_tiny_model

    out = work / "tiny_model"
    if not (out / "config.json").is_file():
        build_tiny_model(out)
    return out


def corpus(work: Path, model: Path, docs: int) -> str:
    from megatron_ipt.data.preprocess import preprocess
    from megatron_ipt.tuning.pubmed import iter_pubmed_records

    prefix = work / "pubmed"
    if not Path(f"{prefix}.idx").is_file():
        jsonl = work / "pubmed.jsonl"
        with open(jsonl, "w") as fh:
            for rec in iter_pubmed_records(limit=docs):
                fh.write(json.dumps({"text": rec.abstract}) + "\n")
        preprocess(jsonl, prefix, str(model), workers=0, prepend_bos=True, append_eod=True, dataset_suffix=False,
                   progress=False)
    return str(prefix)


def plain_loop(model_dir: Path, prefix: str, seq: int, rows: int, steps: int, warmup: int, threads: int,
               bf16: bool) -> list[float]:
    """tokens/s of each timed step of a bare AdamW loop (rows = the trainer's global batch)."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from megatron_ipt.data.loader import build_train_loader

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    loader = build_train_loader(prefix, seq, rows, (steps + warmup) * rows, seed=1)
    rates = []
    for i, batch in enumerate(loader):
        if i >= steps + warmup:
            break
        start = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                                 reduction="none")
        mask = batch["loss_mask"].flatten().float()
        ((loss * mask).sum() / mask.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            rates.append(batch["input_ids"].numel() / (time.perf_counter() - start))
    return rates


def trainer_run(model_dir: Path, prefix: str, seq: int, micro: int, nproc: int, threads: int, steps: int,
                warmup: int, precision: str, ds_config: str, work: Path) -> list[float]:
    """tokens/s (all ranks) of the trainer's timed steps, read from its metrics.jsonl."""
    run = Path(tempfile.mkdtemp(dir=work, prefix=f"run_{nproc}x{threads}_{precision}_"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "megatron_ipt.train", "--config", str(REPO / "configs/demo/continual.yaml"),
           f"--model.init_from={model_dir}", f"--data.tokenizer={model_dir}", f"--data.train={prefix}",
           f"--data.seq_len={seq}", f"--steps={steps + warmup}", f"--micro_batch_size={micro}",
           f"--global_batch_size={micro * nproc}", f"--precision={precision}", f"--ds_config={ds_config}",
           f"--run_dir={run}", f"--checkpoint.dir={run / 'ckpt'}", "--checkpoint.interval=0",
           "--logging.tensorboard=false"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"trainer arm failed ({' '.join(cmd[-8:])}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["tokens_per_s"] for r in rows if r.get("kind") == "train" and r["step"] > warmup and "tokens_per_s" in r]


def _slug(arm: str) -> str:
    return arm.replace(" ", "-")


ARMS = tuple(_slug(a) for a in (
    "plain fp32", "plain bf16-autocast", "trainer zero0 x1 float32", "trainer zero3 x2 float32",
    "trainer zero0 x1 bfloat16", "trainer zero3 x2 bfloat16", "trainer zero0 x1 bfloat16_autocast"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model, few steps (the tested form)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per rank and step (demo: 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in total, every arm")
    parser.add_argument("--docs", type=int, default=600, help="PubMed abstracts tokenized")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--arms", default="all", help="comma-separated subset of the arms to run, named as "
                        f"printed with '-' for spaces (e.g. plain-fp32,trainer-zero0-x1-float32); all: {', '.join(ARMS)}")
    args = parser.parse_args(argv)
    wanted = ARMS if args.arms == "all" else tuple(a.strip() for a in args.arms.split(","))
    unknown = [a for a in wanted if a not in ARMS]
    if unknown or not any(a.startswith("plain") for a in wanted) or not any(a.startswith("trainer") for a in wanted):
        parser.error(f"--arms: {', '.join(unknown) or 'need at least one plain and one trainer arm'}; "
                     f"choose from {', '.join(ARMS)}")
    if args.tiny:
        args.steps, args.warmup, args.seq_len, args.docs = min(args.steps, 3), 1, 128, 60
    work = Path(args.work or tempfile.mkdtemp(prefix="demo_train_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    model = start_model(work, args.tiny)
    prefix = corpus(work, model, args.docs)
    rows = args.micro_batch * 2  # the global batch of every arm: the demo's 2 x micro sequences
    zero0 = REPO / "ds_configs" / "zero0.json"
    results: dict[str, float] = {}
    for bf16 in (False, True):
        name = f"plain {'bf16-autocast' if bf16 else 'fp32'}"
        if _slug(name) in wanted:
            rates = plain_loop(model, prefix, args.seq_len, rows, args.steps, args.warmup, args.threads, bf16)
            results[name] = statistics.median(rates)
    for precision in ("float32", "bfloat16", "bfloat16_autocast"):
        name = f"trainer zero0 x1 {precision}"
        if _slug(name) in wanted:
            results[name] = statistics.median(trainer_run(
                model, prefix, args.seq_len, rows, 1, args.threads, args.steps, args.warmup, precision, str(zero0),
                work))
        name = f"trainer zero3 x2 {precision}"  # the multi-process alternative the ZeRO-0 set-up is measured against
        if _slug(name) in wanted:
            results[name] = statistics.median(trainer_run(
                model, prefix, args.seq_len, args.micro_batch, 2, max(args.threads // 2, 1), args.steps,
                args.warmup, precision, str(REPO / "ds_configs/zero3.json"), work))
    print(f"{'arm':28} {'tokens/s':>10}")
    for name, rate in results.items():
        print(f"{name:28} {rate:10.1f}")
    best_plain = max(v for k, v in results.items() if k.startswith("plain"))
    best_trainer = max(results.items(), key=lambda kv: kv[1] if kv[0].startswith("trainer") else -1)
    ratio = best_trainer[1] / best_plain
    print(f"best trainer ({best_trainer[0]}) / best plain loop: {ratio:.2f}x (goal >= 0.90x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens_per_s": results, "ratio": ratio, "best": best_trainer[0],
                                               "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
