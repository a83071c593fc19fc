"""megatron_ipt.train.distributed: the rank's GPU, the collective timeout and the wait for rank 0."""

from __future__ import annotations

import pytest

from megatron_ipt.dist_env import LaunchError
from megatron_ipt.train import distributed


@pytest.mark.parametrize("visible", [1, 2, 8])
def test_cuda_device_is_the_local_rank_modulo_the_visible_devices(visible: int) -> None:
    """One GPU per task (--gpus-per-task=1) sees device 0 only; a task seeing the whole node takes its local rank."""
    got = [distributed.cuda_device_index(local, visible) for local in range(8)]
    want = {1: [0] * 8, 2: [0, 1] * 4, 8: list(range(8))}[visible]
    assert got == want
    assert all(0 <= i < visible for i in got)


def test_no_visible_cuda_device_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(LaunchError, match="local rank 3: no CUDA device is visible"):
        distributed.cuda_device_index(3, 0)


def test_init_distributed_on_a_one_gpu_task(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Local rank 3 bound to one GPU: set_device(0), the mapping logged, the configured timeout passed on,
    and DeepSpeed's op table left alone (touching it makes every rank probe every op builder on CUDA)."""
    import logging
    from datetime import timedelta

    import deepspeed
    import deepspeed.ops
    import torch
    import torch.distributed as td

    calls: dict = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: calls.setdefault("init", kw))
    monkeypatch.setattr(td, "new_group", lambda **kw: calls.setdefault("group", kw))
    monkeypatch.setattr(distributed, "_rank0_wait_group", None)  # restored after the test
    ops_before = dict(deepspeed.ops.__compatible_ops__)
    for key, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29999", "CUDA_VISIBLE_DEVICES": "5"}.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level(logging.INFO, logger="megatron_ipt.train.distributed"):
        distributed.init_distributed(timeout_minutes=0.5, rank0_wait_minutes=90)
    assert calls["device"] == 0
    assert calls["init"]["dist_backend"] == "nccl" and calls["init"]["timeout"] == timedelta(seconds=30)
    assert calls["group"] == {"backend": "gloo", "timeout": timedelta(minutes=90)}
    assert "rank 3 (local rank 3) on cuda:0 of 1 visible (CUDA_VISIBLE_DEVICES=5)" in caplog.text
    assert dict(deepspeed.ops.__compatible_ops__) == ops_before
