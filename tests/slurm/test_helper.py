"""slurm/common.sh's requeue logic on the real cluster, with a step that is just a shell command."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
ONE_CPU = ["--nodes=1", "--ntasks=1", "--cpus-per-task=1"]

# A stage whose step reports "preempted, requeue me" (exit 75) when $PREEMPT_WHEN holds.
SCRIPT = """#!/bin/bash
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
source "$IPT_ROOT/slurm/common.sh"
ipt_setup helper_test
ipt_srun bash -c 'echo "step: task=${SLURM_ARRAY_TASK_ID:-none} restart=${SLURM_RESTART_COUNT:-0}"; \
if eval "$PREEMPT_WHEN"; then exit 75; fi'
"""


@pytest.fixture(scope="module")
def helper_jobs(slurm_cluster) -> dict[str, tuple[int, list[dict[str, str]], str]]:
    script = slurm_cluster.root / "helper_stage.sh"
    script.write_text(SCRIPT)
    base = {"IPT_ROOT": str(REPO), "RUNS_DIR": str(slurm_cluster.root / "runs")}
    first_run_of_task_1 = '[ "${SLURM_ARRAY_TASK_ID}" = 1 ] && [ "${SLURM_RESTART_COUNT:-0}" = 0 ]'
    specs = {  # name -> (job name, sbatch options, environment)
        # Only task 1 asks for a requeue; task 0 must not be requeued with it.
        "array": ("h_array", ["--array=0-1", "--output=%x-%A_%a.out"], {"PREEMPT_WHEN": first_run_of_task_1}),
        "no_requeue": ("h_norequeue", [], {"PREEMPT_WHEN": "true", "REQUEUE": "0"}),
        "max_requeues": ("h_max", [], {"PREEMPT_WHEN": "true", "MAX_REQUEUES": "1"}),
    }
    jobs = {name: slurm_cluster.sbatch(script, [*ONE_CPU, f"--job-name={job_name}", *opts], env={**base, **env})
            for name, (job_name, opts, env) in specs.items()}
    out = {}
    for name, jid in jobs.items():
        job_name = specs[name][0]
        if name == "array":
            infos = slurm_cluster.wait_array(jid, tasks=2, timeout=120)
            log = "\n".join(slurm_cluster.job_log(job_name, f"{jid}_{t}") for t in (0, 1))
        else:
            infos = [slurm_cluster.wait(jid, timeout=120, restarts=1 if name == "max_requeues" else None)]
            log = slurm_cluster.job_log(job_name, jid)
        out[name] = (jid, infos, log)
    return out


def test_array_task_requeues_alone(helper_jobs) -> None:
    jid, infos, log = helper_jobs["array"]
    by_task = {int(i["ArrayTaskId"]): i for i in infos}
    assert (by_task[0]["JobState"], by_task[0]["Restarts"]) == ("COMPLETED", "0"), log
    assert (by_task[1]["JobState"], by_task[1]["ExitCode"], by_task[1]["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    assert f"requeueing job {jid}_1 (restart 1)" in log
    assert log.count("step: task=1") == 2 and log.count("step: task=0") == 1


def test_requeue_disabled(helper_jobs) -> None:
    _, (info,), log = helper_jobs["no_requeue"]
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "75:0", "0"), log
    assert "REQUEUE=0, not requeueing" in log


def test_requeue_limit(helper_jobs) -> None:
    jid, (info,), log = helper_jobs["max_requeues"]
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "75:0", "1"), log
    assert f"requeueing job {jid} (restart 1)" in log
    assert "after 1 restarts (MAX_REQUEUES): giving up" in log
