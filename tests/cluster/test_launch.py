"""megatron_ipt.cluster.launch: torchrun's exit status mapped back to the requeue status."""

from __future__ import annotations

from megatron_ipt.cluster.launch import launch_status
from megatron_ipt.train.preemption import EXIT_REQUEUE


def test_launch_status_maps_a_preempted_job_to_75() -> None:
    assert launch_status(False, {}, 0) == 0
    assert launch_status(True, {0: 75, 1: 75}, 1) == EXIT_REQUEUE
    assert launch_status(True, {0: 75}, 1) == EXIT_REQUEUE  # rank 1 killed by the agent after rank 0 exited
    assert launch_status(True, {0: 75, 1: 2}, 2) == 2
    assert launch_status(True, {}, 143) == 143  # signalled before any rank recorded a status
    assert launch_status(True, {0: 0, 1: 75}, 1) == 1

