"""Real DeepSpeed over gloo, 2 CPU processes, tiny Mistral on tokenized PubMed abstracts."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch

from megatron_ipt.train.checkpoint import CheckpointConfig
from megatron_ipt.train.optim import lr_at

pytestmark = pytest.mark.slow


def _args(run: Path, train: str, *extra: str) -> list[str]:
    return ["--config", "configs/tiny.yaml", f"--data.train={train}", f"--run_dir={run}",
            f"--checkpoint.dir={run}/ckpt", "--logging.interval=1", "--optim.warmup_steps=2", *SMALL, *extra]


SMALL = ["--data.seq_len=128", "--micro_batch_size=2", "--global_batch_size=4"]


def test_zero1_sigterm_saves_and_exits_75(tmp_path, pubmed_prefixes, start_job, metrics, park, wait_for):
    run = tmp_path / "z1"
    parking = park(tmp_path / "park")  # both ranks held after step 10, whatever the machine's speed
    job = start_job(2, _args(run, pubmed_prefixes["train"], "--ds_config=ds_configs/zero1.json", "--steps=400",
                             "--checkpoint.interval=4", "--checkpoint.keep_last=2",
                             "--logging.tensorboard=false"), env=parking.env("train_step:10"))
    parking.wait(2, job.running, job.output)
    assert len(metrics(run)) == 10
    job.procs[1].send_signal(signal.SIGTERM)  # one rank signalled: both must agree, save and exit 75
    wait_for(lambda: "received SIGTERM" in job.output(1), job.running, "rank 1 to take the SIGTERM", job.output)
    parking.release()
    assert job.wait(120) == [75, 75], job.output(0)[-3000:]
    rows = metrics(run)
    last = max(rows)
    assert last == 10  # the step boundary after the signal
    assert rows[last]["loss"] < rows[1]["loss"] - 0.5, "loss did not fall under ZeRO-1"
    from megatron_ipt.train.checkpoint import latest_checkpoint, read_meta
    from megatron_ipt.train.export import export_checkpoint

    tag = latest_checkpoint(run / "ckpt")
    meta = read_meta(tag)
    kept = sorted(p.name for p in (run / "ckpt").glob("step_*"))
    assert len(kept) == 2 and kept[-1] == tag.name, kept  # keep_last=2 pruned the older saves
    assert meta.step == last and meta.consumed_samples == last * 4 and meta.zero_stage == 1
    out = export_checkpoint(run / "ckpt", tmp_path / "hf", dtype="float32")  # loads every shard
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(torch.tensor([[1, 415, 6883]])).logits).all()


def test_zero2_blend_logging_and_schedule(tmp_path, pubmed_prefixes, train_job, metrics):
    run = tmp_path / "z2"
    blend = f"0.7 {pubmed_prefixes['train']} 0.3 {pubmed_prefixes['other']}"
    train_job(2, _args(run, blend, "--ds_config=ds_configs/zero2.json", "--steps=10",
                       f"--data.valid={pubmed_prefixes['valid']}", "--logging.eval_interval=5",
                       "--checkpoint.interval=0", "--checkpoint.save_at_end=false"))
    rows = metrics(run)
    assert sorted(rows) == list(range(1, 11))
    assert rows[10]["loss"] < rows[1]["loss"] - 0.5
    assert rows[1]["loss"] == pytest.approx(math.log(32000), abs=0.2)  # random init ~ uniform
    from megatron_ipt.config import load_config
    from megatron_ipt.train.config import TrainConfig

    cfg = load_config(TrainConfig, "configs/tiny.yaml", ["--data.train=x", "--optim.warmup_steps=2", "--steps=10"])
    for step, row in rows.items():
        assert row["lr"] == pytest.approx(lr_at(step - 1, cfg.optim, 10))
        assert row["grad_norm"] > 0 and row["tokens_per_s"] > 0 and row["tflops_per_device"] > 0
        assert 0 < row["mfu"] and math.isfinite(row["mfu"])  # vs a matmul rate measured under shared load
    per_ds = rows[10]["tokens_per_dataset"]
    assert sum(per_ds.values()) == 10 * 4 * 128
    assert per_ds[pubmed_prefixes["train"]] > per_ds[pubmed_prefixes["other"]] > 0
    evals = metrics(run, "eval")
    assert sorted(evals) == [5, 10] and evals[10]["loss"] < evals[5]["loss"]
    assert evals[10]["perplexity"] == pytest.approx(math.exp(evals[10]["loss"]))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run / "ckpt").exists()


def test_torchrun_launcher_exits_75_after_sigterm(tmp_path, pubmed_prefixes, park, wait_for) -> None:
    """A real 2-rank run under `python -m megatron_ipt.cluster.launch run` (torchrun's agent) gets SIGTERM: the
    ranks checkpoint and exit 75, and so does the launcher (plain torchrun would exit 1)."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from megatron_ipt.train.checkpoint import latest_checkpoint, read_meta

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "megatron_ipt.cluster.launch", "run", "--standalone", "--nproc-per-node", "2",
           "-m", "megatron_ipt.train", "--config", "configs/tiny.yaml", f"--data.train={pubmed_prefixes['train']}",
           f"--run_dir={run}", f"--checkpoint.dir={run}/ckpt", "--logging.interval=1", "--logging.tensorboard=false",
           "--steps=500", "--checkpoint.interval=0", "--data.seq_len=64", "--micro_batch_size=2",
           "--global_batch_size=4", "--ds_config=ds_configs/zero1.json"]
    log = open(tmp_path / "launcher.log", "w")
    parking = park(tmp_path / "park")  # both ranks held after step 2, whatever the machine's speed
    proc = subprocess.Popen(cmd, cwd=root, env={**env, "OMP_NUM_THREADS": "1", **parking.env("train_step:2")},
                            stdout=log, stderr=subprocess.STDOUT)
    metrics = run / "metrics.jsonl"
    launcher_log = (tmp_path / "launcher.log").read_text
    try:
        parking.wait(2, lambda: proc.poll() is None, launcher_log)
        assert metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, "training never started"
        proc.send_signal(signal.SIGTERM)  # what a scheduler sends the job step's launcher
        # The agent forwards it to both ranks; they go on once both have taken it.
        wait_for(lambda: all(f"[rank{r}] WARNING megatron_ipt.train.preemption: received SIGTERM" in launcher_log()
                             for r in (0, 1)), lambda: proc.poll() is None, "both ranks to take the SIGTERM",
                 launcher_log)
        parking.release()
        code = proc.wait(timeout=180)
    finally:
        parking.release()
        if proc.poll() is None:
            proc.kill()
    out = launcher_log()
    assert code == 75, out[-4000:]
    assert "exiting 75 (requeue)" in out
    tag = latest_checkpoint(run / "ckpt")
    assert tag is not None, out[-4000:]
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert read_meta(tag).step == max(logged) < 500
    # The first preemption check after the signal (parked after step 2 of a fresh run; the ranks agree
    # on a signal every checkpoint.signal_check_interval steps).
    every = CheckpointConfig().signal_check_interval
    assert max(logged) == (2 // every + 1) * every

def test_zero0_one_rank_bf16_autocast_trains(tmp_path, pubmed_prefixes, train_job, metrics):
    """The demo's CPU set-up: one process, ZeRO-0, fp32 weights with bf16 autocast matmuls."""
    run = tmp_path / "autocast"
    _, out = train_job(1, _args(run, pubmed_prefixes["train"], "--ds_config=ds_configs/zero0.json",
                                "--precision=bfloat16_autocast", "--micro_batch_size=4", "--steps=8",
                                "--checkpoint.interval=0", "--checkpoint.save_at_end=false"))
    rows = metrics(run)
    assert sorted(rows) == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in rows.values())
    # ZeRO-0 computes no global grad norm: the field is left out, never logged as nan.
    assert all(math.isfinite(r.get("grad_norm", 0.0)) for r in rows.values())
    assert "grad_norm=nan" not in out
    assert rows[8]["loss"] < rows[1]["loss"] - 0.3
    assert sum(rows[8]["tokens_per_dataset"].values()) == 8 * 4 * 128
