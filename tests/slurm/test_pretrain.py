"""`sbatch slurm/pretrain_500M.sh` on the two-node cluster: ZeRO-3 over gloo, then a preemption."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from megatron_ipt.dist_env import master_port_for_job
from megatron_ipt.train.checkpoint import CheckpointConfig

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "pretrain_500M.sh"
STEPS = 24


def train_steps(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "train"]


def test_preprocess_job_tokenized_both_shards(pubmed_prefix) -> None:
    info, log = pubmed_prefix["info"], pubmed_prefix["log"]
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    summary = json.loads(Path(pubmed_prefix["prefix"] + ".summary.json").read_text())
    assert summary["read"] == summary["written"] == 200 and summary["tokens"] > 20_000, summary
    assert "launch: srun" in log and "--append-eod" in log


@pytest.fixture(scope="module")
def preempted_run(slurm_cluster, pubmed_prefix, park) -> dict:
    """One `sbatch slurm/pretrain_500M.sh` on both nodes, signalled mid-run like a time limit would.

    (One job serves both tests below: each trainer start costs ~20 s of the suite's budget.)
    """
    runs = slurm_cluster.root / "runs"
    # The data comes as a blend YAML laid over the config, the way data_tools.build_corpora writes it.
    blend = slurm_cluster.root / "data" / "blend.yaml"
    blend.write_text(f"data:\n  train: [[1.0, {pubmed_prefix['prefix']}]]\n")
    # Both ranks park after step 3 until signalled, whatever the machine's speed (the requeued run
    # resumes after step 3 and does not stop there again).
    parking = park(slurm_cluster.root / "park")
    env = {"CONFIG": "configs/tiny.yaml", "BLEND": str(blend), "STEPS": str(STEPS),
           "RUNS_DIR": str(runs), "RUN_NAME": "pretrain", **parking.env("train_step:3")}
    # Submitted from outside the checkout with no IPT_ROOT: the script finds the repo itself.
    jid = slurm_cluster.sbatch(SCRIPT, slurm_cluster.two_nodes, slurm_cluster.tiny_train, env=env)
    job_dir = runs / "pretrain" / "jobs" / str(jid)
    try:
        slurm_cluster.wait_for(lambda: len(parking.parked()) == 2, "both ranks parked after step 3",
                               timeout=180, job_id=jid)
        assert len(train_steps(job_dir / "metrics.jsonl")) == 3
        # What Slurm does at `--signal=B:USR1@120`: signal the batch shell, which forwards to the step.
        slurm_cluster.run(["scancel", "--batch", "--signal=USR1", str(jid)])
        slurm_cluster.wait_for(lambda: slurm_cluster.job_log("pretrain_500M", jid).count("received SIGUSR1") >= 2,
                               "both ranks to take the USR1", timeout=120, job_id=jid)
    finally:
        parking.release()
    info = slurm_cluster.wait(jid, timeout=240, restarts=1)
    return {"job": jid, "info": info, "log": slurm_cluster.job_log("pretrain_500M", jid),
            "job_dir": job_dir, "ckpt_dir": runs / "pretrain" / "checkpoints"}


def test_pretrain_two_nodes_zero3(slurm_cluster, pubmed_prefix, preempted_run) -> None:
    jid, info, log = preempted_run["job"], preempted_run["info"], preempted_run["log"]
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log + slurm_cluster.daemon_logs()
    assert info["NodeList"] == "node[1-2]" and info["NumTasks"] == "2"
    # The rendezvous is node1's address (resolved through scontrol: "node1" has no DNS entry) on
    # the port derived from the job id; one rank per node.
    port = master_port_for_job(jid)
    assert f"master 127.0.0.2:{port}" in log
    assert f"distributed: 2 ranks via slurm, master 127.0.0.2:{port}, backend gloo" in log, log

    config = yaml.safe_load((preempted_run["job_dir"] / "config.yaml").read_text())  # what the trainer ran
    assert config["data"]["train"] == [[1.0, pubmed_prefix["prefix"]]] and config["steps"] == STEPS
    assert config["data"]["seq_len"] == 64 and config["ds_config"] == "ds_configs/zero3.json"

    ckpt = preempted_run["ckpt_dir"] / f"step_{STEPS:08d}"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert (meta["step"], meta["world_size"], meta["zero_stage"]) == (STEPS, 2, 3)
    assert sorted(p.name for p in ckpt.glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    tb_dir = preempted_run["job_dir"] / "tensorboard"
    assert list(tb_dir.glob("events.out.tfevents.*")), f"no TensorBoard events in {tb_dir}"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = set()
    for events in tb_dir.glob("events.out.tfevents.*"):  # one file per run of the job
        acc = EventAccumulator(str(events))
        acc.Reload()
        steps |= {e.step for e in acc.Scalars("train/loss")}
    assert steps == set(range(1, STEPS + 1))


def test_preemption_checkpoints_requeues_and_resumes(preempted_run) -> None:
    jid, info, log = preempted_run["job"], preempted_run["info"], preempted_run["log"]
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log

    assert "caught SIGUSR1: forwarding it to the running step" in log
    saved = re.search(r"preempted at step (\d+): checkpoint saved, exiting 75", log)
    assert saved, log
    k = int(saved.group(1))
    assert 3 <= k < STEPS
    # The first preemption check after the signal: the ranks were parked after step 3 of a fresh run, and
    # they agree on a signal every checkpoint.signal_check_interval steps.
    every = CheckpointConfig().signal_check_interval
    assert k == (3 // every + 1) * every
    assert "step exited with status 75" in log
    assert f"requeueing job {jid} (restart 1)" in log
    assert "restart=1" in log  # the second run of the same script
    assert re.search(rf"checkpoint: resumed from \S+/pretrain/checkpoints/step_{k:08d}", log), log

    # One metrics stream over both runs: steps 1..k, then k+1..STEPS; nothing repeated or restarted.
    rows = train_steps(preempted_run["job_dir"] / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["consumed_samples"] for r in rows] == [2 * s for s in range(1, STEPS + 1)]
    assert rows[k]["time"] > rows[k - 1]["time"] + 5  # a real gap: exit, requeue, restart
    ckpts = sorted(p.name for p in preempted_run["ckpt_dir"].glob("step_*"))
    assert ckpts == [f"step_{k:08d}", f"step_{STEPS:08d}"]
