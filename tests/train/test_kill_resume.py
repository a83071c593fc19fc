"""Fault injection for the last two long stages: a 2-rank ZeRO-3 job SIGKILLed at seeded random park
points (step boundaries, inside checkpoint saves) resumes to the same loss at every step; an export
SIGKILLed at random commit points leaves the old model or the new one, never neither, and its rerun
writes the same bytes."""

from __future__ import annotations

import json
import random
import shutil
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
    # Strict: the kills land at park points, after a metrics line is whole, so no line is torn.
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["step"] for r in rows if r.get("kind") == "train"]


# Park points (megatron_ipt.park) a run passes, by kind: each step boundary, and inside each checkpoint
# save: shards without RNG files, every file but the commit, committed but older ones not pruned.
KILL_POINTS = {"train_step": range(1, STEPS + 1), "save_shards": range(2, STEPS + 1, 2),
               "save_commit": range(2, STEPS + 1, 2),
               "save_committed": range(2, STEPS, 2)}  # after the last commit nothing would be left to redo


def test_zero3_job_killed_at_random_steps_resumes_to_identical_losses(
        tmp_path, pubmed_prefixes, train_job, start_job, metrics, fault_injector, same_tree, park):
    from megatron_ipt.train.checkpoint import list_checkpoints

    ref, run = tmp_path / "ref", tmp_path / "killed"
    train_job(2, _args(ref, pubmed_prefixes))
    reference = metrics(ref)
    assert sorted(reference) == list(range(1, STEPS + 1))

    faults = fault_injector("train (2 ranks, ZeRO-3)")
    parking = park(tmp_path / "park")
    pick = random.Random(5)
    # One kill at each kind of point, at a seeded random step that the run passes (it resumes from the
    # newest committed checkpoint): a commit first, then the other kinds in a seeded order.
    kinds = ["save_committed", *pick.sample(["train_step", "save_shards", "save_commit"], 3)]
    for where in kinds:
        resumed = max((step for step, _ in list_checkpoints(run / "ckpt")), default=0)
        step = pick.choice([s for s in KILL_POINTS[where] if s > resumed])
        # Every rank parks there, then is killed; at a rank-0 point rank 1 waits in the save's last barrier.
        job = start_job(2, _args(run, pubmed_prefixes), env=parking.env(f"{where}:{step}"))
        parking.wait(1 if where == "save_committed" else 2, job.running, job.output)
        for p in job.procs:
            p.kill()
        for p in job.procs:
            p.wait()
        faults.killed()
        print(f"killed at {where}:{step} (resumed from step {resumed})")
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
