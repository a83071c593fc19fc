"""megatron_ipt.dist_env: Slurm node lists, torchrun-vs-Slurm precedence, ports, array tasks, log ranks."""

from __future__ import annotations

import pytest

from megatron_ipt import dist_env
from megatron_ipt.dist_env import LaunchError, dist_env_from_environ, expand_hostlist, master_port_for_job


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node1", ["node1"]),
        ("node[1-2]", ["node1", "node2"]),
        ("gpu[01-03,7],cpu1", ["gpu01", "gpu02", "gpu03", "gpu7", "cpu1"]),
        ("gpu[098-101]", ["gpu098", "gpu099", "gpu100", "gpu101"]),
        ("a-b.c[9-10]", ["a-b.c9", "a-b.c10"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
        (" x1,y[3] ", ["x1", "y3"]),
    ],
)
def test_expand_hostlist(nodelist: str, hosts: list[str]) -> None:
    assert expand_hostlist(nodelist) == hosts


@pytest.mark.parametrize(
    ("nodelist", "why"),
    [
        ("", "empty"),
        ("node[1-", "unbalanced '['"),
        ("node1]", "unbalanced ']'"),
        ("a,,b", "empty entry"),
        ("node[3-1]", "runs backwards"),
        ("node[a-b]", "bad range"),
        ("node[]", "bad range"),
        ("n[[1]]", "nested"),
        ("node 1", "at 'node 1'"),
        ("node[1-2],", "empty entry"),
    ],
)
def test_expand_hostlist_rejects(nodelist: str, why: str) -> None:
    with pytest.raises(LaunchError, match="cannot parse Slurm node list") as err:
        expand_hostlist(nodelist)
    assert why in str(err.value)


def test_port_from_job_id() -> None:
    ports = {master_port_for_job(j) for j in range(1000, 1100)}
    assert len(ports) == 100  # neighbouring jobs never share a port
    assert all(dist_env.PORT_BASE <= p < 32768 for p in ports)  # below the ephemeral range
    assert master_port_for_job(123456) == master_port_for_job(123456)  # a requeue reuses it
    assert all(dist_env.PORT_BASE <= master_port_for_job(j) < 32768 for j in (0, 19999, 20000, 2**31 - 1))


SLURM_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_JOB_NODELIST": "localhost,otherhost",
    "SLURM_STEP_NODELIST": "localhost,otherhost",
}


def test_slurm_step() -> None:
    env = dist_env_from_environ(SLURM_STEP)
    assert env.source == "slurm"
    assert (env.rank, env.world_size, env.local_rank) == (3, 4, 1)
    assert env.master_addr == "127.0.0.1"  # first node of the list, resolved
    assert env.master_port == master_port_for_job(4242)


def test_step_nodelist_and_tasks_win_over_job_values() -> None:
    # A step on part of the allocation: its own node list and task count count, not the job's.
    env = dist_env_from_environ({**SLURM_STEP, "SLURM_JOB_NODELIST": "nonexistent-node[1-4]",
                                 "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "4"})
    assert env.world_size == 4 and env.master_addr == "127.0.0.1"


def test_exported_master_wins_over_node_list() -> None:
    env = dist_env_from_environ({**SLURM_STEP, "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "23456"})
    assert (env.master_addr, env.master_port) == ("10.1.2.3", 23456)


def test_torchrun_wins_over_slurm() -> None:
    # srun starting one torchrun per node: torchrun's variables describe this process.
    env = dist_env_from_environ({**SLURM_STEP, "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                 "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"})
    assert env.source == "torchrun"
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (
        5, 8, 1, "10.0.0.1", 29400)


def test_batch_shell_is_a_single_process() -> None:
    # The batch shell carries SLURM_PROCID=0 and SLURM_NTASKS=N but is no step: python started
    # there directly is one process and must not wait for N-1 peers.
    batch = {k: v for k, v in SLURM_STEP.items() if not k.startswith("SLURM_STEP")}
    batch["SLURM_PROCID"] = "0"
    env = dist_env_from_environ(batch)
    assert (env.source, env.rank, env.world_size) == ("single", 0, 1)


def test_single_process_defaults() -> None:
    env = dist_env_from_environ({})
    assert (env.source, env.rank, env.world_size, env.master_addr) == ("single", 0, 1, "127.0.0.1")
    assert 0 < env.master_port < 65536


def test_bad_slurm_values_are_named() -> None:
    with pytest.raises(LaunchError, match="SLURM_PROCID='x'"):
        dist_env_from_environ({**SLURM_STEP, "SLURM_PROCID": "x"})
    with pytest.raises(LaunchError, match="cannot parse Slurm node list 'node\\[1-'"):
        dist_env_from_environ({**SLURM_STEP, "SLURM_STEP_NODELIST": "node[1-"})
    with pytest.raises(LaunchError, match="without SLURM_JOB_NODELIST"):
        dist_env_from_environ({k: v for k, v in SLURM_STEP.items() if "NODELIST" not in k})


def test_unresolvable_master(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # No DNS entry and no scontrol to ask for the node's address: a clear error. (The scontrol
    # path is exercised on the real cluster in tests/slurm.)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="cannot resolve master node 'no-such-node-x1'"):
        dist_env_from_environ({**SLURM_STEP, "SLURM_STEP_NODELIST": "no-such-node-x[1-2]"})


@pytest.mark.parametrize(
    ("env", "task"),
    [
        ({}, (0, 1, "single")),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "8"}, (0, 8, "slurm")),
        # --array=3-4: the tasks are 0 and 1 of 2, not 3 and 4 (SLURM_ARRAY_TASK_MIN counts)
        ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "2"}, (1, 2, "slurm")),
        # --array=10-16:2 -> ids 10, 12, 14, 16
        ({"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "2",
          "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4, "slurm")),
    ],
)
def test_array_task_counts_from_the_minimum(env: dict, task: tuple) -> None:
    got = dist_env.array_task(env)
    assert (got.index, got.count, got.source) == task


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"},  # --array=1,3,7
        {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
         "SLURM_ARRAY_TASK_COUNT": "4"},
    ],
)
def test_array_task_rejects_uneven_arrays(env: dict) -> None:
    with pytest.raises(LaunchError, match=r"Slurm array task \d+ \(min \d+, step \d+, count \d+\) is not one of"):
        dist_env.array_task(env)
    with pytest.raises(LaunchError, match="SLURM_ARRAY_TASK_ID='x' is not an integer"):
        dist_env.array_task({"SLURM_ARRAY_TASK_ID": "x"})


def test_process_rank_follows_the_launcher_precedence() -> None:
    assert dist_env.process_rank({}) == 0
    assert dist_env.process_rank({"RANK": "3", "WORLD_SIZE": "4", "SLURM_PROCID": "1", "SLURM_STEP_ID": "0"}) == 3
    assert dist_env.process_rank({"SLURM_PROCID": "5", "SLURM_STEP_ID": "0"}) == 5
    assert dist_env.process_rank({"SLURM_PROCID": "5"}) == 0  # the batch shell: not a step, one process
    assert dist_env.process_rank({"RANK": "x", "WORLD_SIZE": "2"}) == 0


def test_log_prefix_takes_the_rank_from_the_job_environment() -> None:
    import subprocess
    import sys

    code = "from megatron_ipt.log import setup_logging, get_logger; setup_logging(); get_logger('x').warning('hi')"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "SLURM_PROCID": "2", "SLURM_STEP_ID": "0"}
    err = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stderr
    assert "[rank2] WARNING megatron_ipt.x: hi" in err
