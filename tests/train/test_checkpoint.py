"""Checkpoint trust and integrity: no code runs from a checkpoint, corrupt ones are refused or skipped,
redone steps are not logged twice. Real single-rank DeepSpeed runs (a few seconds each)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ipt.train import checkpoint as ckpt
from megatron_ipt.train.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[2]


class _RunsShell:
    """Unpickling this runs a shell command: the hostile probe's RNG file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def train(run: Path, prefix: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """One rank of ``python -m megatron_ipt.train`` on the tiny config (ZeRO-1 unless overridden)."""
    args = ["--config", "configs/tiny.yaml", f"--data.train={prefix}", f"--run_dir={run}",
            f"--checkpoint.dir={run}/ckpt", "--logging.interval=1", "--logging.tensorboard=false",
            "--ds_config=ds_configs/zero1.json", "--data.seq_len=64", "--micro_batch_size=2",
            "--global_batch_size=2", "--checkpoint.keep_last=5", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "megatron_ipt.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**env, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, pubmed_prefixes) -> Path:
    """A finished 4-step run with complete checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("saved") / "run"
    proc = train(run, pubmed_prefixes["train"], "--steps=4", "--checkpoint.interval=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s for s, _ in ckpt.list_checkpoints(run / "ckpt")] == [2, 4]
    return run


def _copy_run(saved: Path, dst: Path) -> Path:
    shutil.copytree(saved / "ckpt", dst / "ckpt")
    return dst


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_rng_state_round_trip_is_tensors_only(tmp_path) -> None:
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    path = tmp_path / "rng_rank0.pt"
    torch.save(ckpt.rng_state(), path)
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert ckpt.unsafe_globals(path) == []
    ckpt.set_rng_state(ckpt.load_rng_file(path))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def test_crafted_rng_pickle_is_refused_not_run(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "rng_rank0.pt"
    torch.save({"python": _RunsShell(marker), "numpy": 0, "torch": 0}, path)
    with pytest.raises(CheckpointError, match=r"rng_rank0\.pt: refused to load the RNG state"):
        ckpt.load_rng_file(path)
    assert "system" in " ".join(ckpt.unsafe_globals(path))
    assert not marker.exists()


def test_hostile_probe_resume_refuses_crafted_rng_file(tmp_path, saved_run, pubmed_prefixes) -> None:
    """The probe: replace rng_rank0.pt of the latest checkpoint and resume. Nothing runs; exit 2."""
    run = _copy_run(saved_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    for step in (2, 4):
        torch.save({"python": _RunsShell(marker), "numpy": 0, "torch": 0},
                   run / "ckpt" / f"step_{step:08d}" / "rng_rank0.pt")
    proc = train(run, pubmed_prefixes["train"], "--steps=6", "--checkpoint.interval=2")
    line = _one_error_line(proc)
    assert "no intact checkpoint" in line and "rng_rank0.pt: refused to load" in line and "system" in line
    assert not marker.exists()
    assert not (run / "metrics.jsonl").exists()
    # An explicit --checkpoint.resume of the same tag is refused the same way.
    proc = train(run, pubmed_prefixes["train"], "--steps=6", f"--checkpoint.resume={run}/ckpt/step_00000004")
    assert "refused to load" in _one_error_line(proc)
    assert not marker.exists()


def test_zero0_export_loads_weights_only(tmp_path) -> None:
    from megatron_ipt.train.export import consolidated_state_dict

    marker = tmp_path / "pwned"
    torch.save({"module": {"w": torch.ones(2)}, "extra": _RunsShell(marker)}, tmp_path / "mp_rank_00_model_states.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        consolidated_state_dict(tmp_path, 0)
    assert not marker.exists()
    torch.save({"module": {"w": torch.ones(2, dtype=torch.bfloat16)}}, tmp_path / "mp_rank_00_model_states.pt")
    assert consolidated_state_dict(tmp_path, 0)["w"].dtype == torch.float32


def _tag(run: Path, step: int) -> Path:
    return run / "ckpt" / f"step_{step:08d}"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


CORRUPTIONS = {
    "empty meta.json": (lambda t: (t / "meta.json").write_text(""), "meta.json: empty, truncated or corrupt"),
    "truncated meta.json": (lambda t: _truncate(t / "meta.json"), "meta.json: empty, truncated or corrupt"),
    "meta without step": (lambda t: (t / "meta.json").write_text('{"world_size": 1}'), "key 'step' missing"),
    "missing model shard": (lambda t: (t / "mp_rank_00_model_states.pt").unlink(),
                            "model shard mp_rank_00_model_states.pt is missing"),
    "missing optimizer shard": (lambda t: next(t.glob("*optim_states.pt")).unlink(),
                                "optim shard of rank 0 is missing"),
    "truncated optimizer file": (lambda t: _truncate(next(t.glob("*optim_states.pt"))),
                                 "optim_states.pt: truncated or corrupt checkpoint file"),
    "missing RNG file": (lambda t: (t / "rng_rank0.pt").unlink(), "per-rank RNG file rng_rank0.pt is missing"),
    "truncated RNG file": (lambda t: _truncate(t / "rng_rank0.pt"), "rng_rank0.pt: truncated or corrupt"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_is_named(kind, tmp_path, saved_run) -> None:
    run = _copy_run(saved_run, tmp_path / "run")
    damage, message = CORRUPTIONS[kind]
    damage(_tag(run, 4))
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.").replace("(", r"\(")):
        tag = _tag(run, 4)
        ckpt.check_checkpoint(tag, ckpt.read_meta(tag))
    # resume=auto skips it with a warning and falls back to step 2
    found = ckpt.resumable_checkpoint(run / "ckpt")
    assert found is not None and found[0].name == "step_00000002" and found[1].step == 2


def test_resume_falls_back_past_a_corrupt_latest_checkpoint(tmp_path, saved_run, pubmed_prefixes, metrics) -> None:
    run = _copy_run(saved_run, tmp_path / "run")
    _truncate(next(_tag(run, 4).glob("*optim_states.pt")))
    proc = train(run, pubmed_prefixes["train"], "--steps=4", "--checkpoint.interval=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "skipping step_00000004" in out and "truncated or corrupt" in out
    assert "resumed from" in out and "step_00000002" in out
    assert sorted(metrics(run)) == [3, 4]
    ref = metrics(saved_run)
    assert metrics(run)[3]["loss"] == ref[3]["loss"] and metrics(run)[4]["loss"] == ref[4]["loss"]


def test_every_checkpoint_corrupt_is_an_error(tmp_path, saved_run) -> None:
    run = _copy_run(saved_run, tmp_path / "run")
    for step in (2, 4):
        (_tag(run, step) / "rng_rank0.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no intact checkpoint to resume from .*checkpoint\.resume=none"):
        ckpt.resumable_checkpoint(run / "ckpt")


def test_resume_cuts_metrics_back_to_the_checkpoint(tmp_path, pubmed_prefixes, metrics) -> None:
    """A run that dies after logging steps 5-6 past its step-4 checkpoint: the resume redoes 5-6 once."""
    run = tmp_path / "run"
    proc = train(run, pubmed_prefixes["train"], "--steps=6", "--checkpoint.interval=4",
                 "--checkpoint.save_at_end=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = metrics(run)
    assert sorted(first) == [1, 2, 3, 4, 5, 6]
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 7, "kind": "tra')  # a line torn by kill -9
    proc = train(run, pubmed_prefixes["train"], "--steps=6", "--checkpoint.interval=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6], steps
    again = metrics(run)
    for step in (5, 6):
        assert again[step]["loss"] == first[step]["loss"]


def test_second_job_into_one_checkpoint_dir_is_refused(tmp_path, pubmed_prefixes) -> None:
    from megatron_ipt.io import output_lock

    run = tmp_path / "run"
    with output_lock(run / "ckpt"):  # a first job is writing these checkpoints
        proc = train(run, pubmed_prefixes["train"], "--steps=2")
    line = _one_error_line(proc)
    assert "checkpoint.dir:" in line and f"another run (pid {os.getpid()}) is writing this output now" in line
    assert not (run / "metrics.jsonl").exists()


def test_checkpoint_meta_round_trips_through_json(tmp_path) -> None:
    meta = ckpt.CheckpointMeta(step=4, global_batch_size=8, world_size=2, consumed_samples=32, zero_stage=3,
                               model_shape={"hidden_size": 32}, tokens_per_dataset={"a": 10}, tag="step_00000004")
    assert ckpt.CheckpointMeta.from_json(json.loads(json.dumps(meta.to_json())), tmp_path) == meta
    newer = {**meta.to_json(), "written_by_a_later_version": 1}
    assert ckpt.CheckpointMeta.from_json(newer, tmp_path) == meta
    with pytest.raises(CheckpointError, match="key 'world_size' missing or not an integer"):
        ckpt.CheckpointMeta.from_json({"step": 1, "global_batch_size": 2}, tmp_path / "meta.json")
