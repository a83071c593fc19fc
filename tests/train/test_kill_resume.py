"""Fault injection for the last two long stages: a 2-rank ZeRO-3 job SIGKILLed at seeded random
points resumes to the same loss at every step; an export SIGKILLed at random commit points leaves the
old model or the new one, never neither, and its rerun writes the same bytes."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STEPS = 6


def _args(run: Path, prefixes: dict[str, str]) -> list[str]:
    return ["--config", "configs/tiny.yaml", f"--data.train={prefixes['train']}", f"--run_dir={run}",
            f"--checkpoint.dir={run}/ckpt", "--checkpoint.interval=2", "--logging.interval=1", f"--steps={STEPS}",
            "--optim.warmup_steps=2", "--ds_config=ds_configs/zero3.json", "--logging.tensorboard=false",
            "--data.seq_len=128", "--micro_batch_size=2", "--global_batch_size=4", "--precision=fp32"]


def _steps_logged(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written when the job was killed
            continue
    return [r["step"] for r in rows if r.get("kind") == "train"]


def test_zero3_job_killed_at_random_steps_resumes_to_identical_losses(
        tmp_path, pubmed_prefixes, train_job, start_job, metrics, fault_injector, same_tree):
    ref, run = tmp_path / "ref", tmp_path / "killed"
    train_job(2, _args(ref, pubmed_prefixes))
    reference = metrics(ref)
    assert sorted(reference) == list(range(1, STEPS + 1))

    faults = fault_injector("train (2 ranks, ZeRO-3)")
    pick = random.Random(5)
    for _ in range(2):
        # Kill every rank once the job has logged a seeded random step, a random moment later
        # (inside the next step, or inside a checkpoint save).
        target = pick.randint(1, STEPS - 1)
        job = start_job(2, _args(run, pubmed_prefixes))
        deadline = time.monotonic() + 300
        while (max(_steps_logged(run), default=0) < target and all(p.poll() is None for p in job.procs)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(pick.uniform(0.0, 1.5))
        alive = [p for p in job.procs if p.poll() is None]
        assert alive, f"the job ended before the kill at step {target}:\n{job.output(0)[-3000:]}"
        for p in job.procs:
            p.kill()
        for p in job.procs:
            p.wait()
        faults.killed()
    _, out = train_job(2, _args(run, pubmed_prefixes))
    faults.done()
    # Each step appears once (metrics cut back to the resumed step) with the reference's loss, bit for bit.
    assert _steps_logged(run) == list(range(1, STEPS + 1)), out[-3000:]
    got = metrics(run)
    for step in range(1, STEPS + 1):
        assert got[step]["loss"] == reference[step]["loss"], f"step {step}: {got[step]['loss']} != {reference[step]}"
        assert got[step]["consumed_samples"] == reference[step]["consumed_samples"]

    # Export: a previous export is in place; the new one is killed at seeded random commit points.
    from megatron_ipt.train.export import export_checkpoint

    new_ckpt, old_ckpt = run / "ckpt" / f"step_{STEPS:08d}", run / "ckpt" / f"step_{STEPS - 2:08d}"
    faults = fault_injector("export")
    export_checkpoint(old_ckpt, tmp_path / "old_ref")
    # Count the commit points of the new export replacing the old one (as in the killed runs).
    shutil.copytree(tmp_path / "old_ref", tmp_path / "new_ref")
    points = faults.count_points(export_checkpoint, new_ckpt, tmp_path / "new_ref")
    out_dir = tmp_path / "exported"
    shutil.copytree(tmp_path / "old_ref", out_dir)
    for _ in range(3):
        rc, _ = faults.run("megatron_ipt.train.export", [new_ckpt, out_dir], at=pick.randint(1, points))
        assert rc == -9
        # Never neither: the final name holds the old model or the new one, whole.
        try:
            same_tree(out_dir, tmp_path / "old_ref")
        except AssertionError:
            same_tree(out_dir, tmp_path / "new_ref")
    faults.run("megatron_ipt.train.export", [new_ckpt, out_dir])
    faults.done()
    same_tree(out_dir, tmp_path / "new_ref")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".exported")) == []
