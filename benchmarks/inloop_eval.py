"""In-loop downstream evaluation's overhead as a share of training time: one training run with
``eval.downstream_interval`` over a suite, one without, same model, data, steps and threads.

Prints, for the run with it, the seconds its ``downstream`` records took, the rest of the run's wall
time, and their ratio; and the wall-time ratio of the two runs (start-up included). The suite is
PubMed next-sentence items (the true second sentence of an abstract against three from others),
written with :func:`megatron_ipt.eval.suite.write_suite`. The real run (SmolLM2-135M; run it alone)::

    .venv/bin/python benchmarks/inloop_eval.py --steps 40 --interval 10 --items 50

``--tiny`` runs a tiny random model for a few steps (the tested form; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

from benchmarks.demo_train_speed import start_model  # noqa: E402


def material(work: Path, model: Path, docs: int, items: int) -> tuple[str, Path]:
    """(training prefix, suite folder) from the shipped PubMed abstracts."""
    from megatron_ipt.data.preprocess import preprocess
    from megatron_ipt.eval.suite import write_suite
    from megatron_ipt.tuning.pubmed import iter_pubmed_records

    abstracts = [r.abstract for r in iter_pubmed_records(limit=docs + items)]
    prefix = work / "pubmed"
    if not Path(f"{prefix}.idx").is_file():
        jsonl = work / "pubmed.jsonl"
        jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in abstracts[:docs]))
        preprocess(jsonl, prefix, str(model), workers=0, prepend_bos=True, append_eod=True, dataset_suffix=False,
                   progress=False)
    sentences = [t.split(". ")[:2] for t in abstracts[docs:] if t.count(". ") >= 2]
    suite_items = []
    for i, (first, second) in enumerate(sentences):
        others = [sentences[(i + k) % len(sentences)][1] for k in (1, 2, 3)]
        suite_items.append({"id": f"n{i}", "query": first + ".", "choices": [f" {s}." for s in (second, *others)],
                            "gold": 0})
    suite = work / "suite"
    write_suite({"next_sentence": suite_items}, suite)
    return str(prefix), suite


def train(model: Path, prefix: str, suite: Path | None, args: argparse.Namespace, work: Path) -> tuple[float, float]:
    """(wall seconds of the run, seconds of its downstream evaluations)."""
    run = Path(tempfile.mkdtemp(dir=work, prefix="run_"))
    cmd = [sys.executable, "-m", "megatron_ipt.train", "--config", str(REPO / "configs/instruction_tune_tiny.yaml"),
           f"--model.init_from={model}", f"--data.tokenizer={model}", "--model.expected_parameters=null",
           f"--data.train={prefix}", f"--data.seq_len={args.seq_len}", f"--steps={args.steps}",
           "--micro_batch_size=2", "--global_batch_size=2", "--ds_config=ds_configs/zero0.json",
           f"--run_dir={run}", f"--checkpoint.dir={run / 'ckpt'}", "--checkpoint.interval=0",
           "--checkpoint.save_at_end=false", "--logging.tensorboard=false"]
    if suite is not None:
        cmd += [f"--eval.downstream_interval={args.interval}", f"--eval.downstream_tasks=[{suite}]"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"training run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return wall, sum(r["seconds"] for r in rows if r.get("kind") == "downstream")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random model, few steps (the tested form)")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps of each run")
    ap.add_argument("--interval", type=int, default=10, help="eval.downstream_interval of the run with it")
    ap.add_argument("--items", type=int, default=50, help="suite items (PubMed next-sentence)")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per training sample")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the one process")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.tiny:
        args.steps, args.interval, args.items, args.seq_len = 4, 2, 8, 128
    if args.steps < 1 or args.interval < 1 or args.items < 4:
        ap.error("--steps and --interval must be positive and --items at least 4")
    work = args.work or Path(tempfile.mkdtemp(prefix="inloop_eval_"))
    work.mkdir(parents=True, exist_ok=True)
    model = start_model(work, args.tiny)
    prefix, suite = material(work, model, docs=200, items=args.items)
    wall_on, eval_s = train(model, prefix, suite, args, work)
    wall_off, _ = train(model, prefix, None, args, work)
    share = eval_s / max(wall_on - eval_s, 1e-9)
    res = {"steps": args.steps, "interval": args.interval, "items": args.items, "evaluations": eval_s,
           "wall_with": wall_on, "wall_without": wall_off, "share_of_training": share,
           "wall_ratio": wall_on / max(wall_off, 1e-9)}
    print(f"in-loop evaluation: {eval_s:.1f} s over {args.steps // args.interval + (args.steps % args.interval > 0)} "
          f"evaluations of {args.items} items; the rest of the run {wall_on - eval_s:.1f} s "
          f"-> {share:.1%} of training time")
    print(f"wall time with it {wall_on:.1f} s, without {wall_off:.1f} s ({res['wall_ratio']:.2f}x, start-up included)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
