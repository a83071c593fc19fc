"""The batch arithmetic is derived once (TrainConfig.batch_plan); the data config builds the stream."""

from __future__ import annotations

import pytest

from megatron_ipt.config import ConfigError, load_config
from megatron_ipt.data.indexed import IndexedDatasetWriter
from megatron_ipt.train.config import TrainConfig
from megatron_ipt.train.ds_config import build_ds_config


def test_batch_plan_and_deepspeed_agree(repo_root, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    cfg = load_config(TrainConfig, "configs/tiny.yaml",
                      ["--data.train=x", "--micro_batch_size=2", "--global_batch_size=12", "--steps=5"])
    plan = cfg.batch_plan(3)
    assert (plan.micro_batch, plan.global_batch, plan.world, plan.grad_accum, plan.steps) == (2, 12, 3, 2, 5)
    assert plan.total_samples == 60
    ds = build_ds_config(cfg, 3)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (12, 2, 2)
    with pytest.raises(ConfigError, match=r"global_batch_size=12 is not divisible by micro_batch_size 2 x 4 ranks"):
        cfg.batch_plan(4)
    with pytest.raises(ConfigError, match="not divisible"):
        build_ds_config(cfg, 5)


def test_data_config_builds_the_train_stream(tmp_path) -> None:
    prefix = str(tmp_path / "docs_text_document")
    writer = IndexedDatasetWriter(prefix, "uint16")
    for i in range(40):
        writer.add_document([1, *range(3, 3 + (i % 9) + 4), 2])
    writer.finalize()
    cfg = load_config(TrainConfig, None, [f"--data.train={prefix}", "--data.seq_len=16", "--micro_batch_size=2",
                                          "--global_batch_size=8", "--steps=3", "--model.vocab_size=64"])
    plan = cfg.batch_plan(2)
    streams = [cfg.data.build_train(plan, rank) for rank in range(2)]
    assert [s.grad_accum for s in streams] == [2, 2]
    steps = [[s.next_step() for _ in range(3)] for s in streams]
    assert all(len(step) == 2 and all(mb["input_ids"].shape == (2, 16) for mb in step) for rs in steps for step in rs)
    assert streams[0].consumed_samples == streams[1].consumed_samples == 24
    resumed = cfg.data.build_train(plan, 0, consumed_samples=8)
    assert [mb["input_ids"].tolist() for mb in resumed.next_step()] == [
        mb["input_ids"].tolist() for mb in steps[0][1]]
