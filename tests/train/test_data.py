"""megatron_ipt.train.data: the training stream over a blend."""

from __future__ import annotations

import logging

from megatron_ipt.data.indexed import IndexedDatasetWriter
from megatron_ipt.train.data import BatchPlan, DataConfig


def _dataset(prefix: str, n_docs: int, base: int) -> str:
    with IndexedDatasetWriter(prefix, "int32") as w:
        for d in range(n_docs):
            w.add_document([base + (d + t) % 50 for t in range(20)])
    return prefix


def test_the_train_stream_logs_the_epochs_each_dataset_supplies(tmp_path, caplog) -> None:
    big = _dataset(str(tmp_path / "big"), 200, 1)
    small = _dataset(str(tmp_path / "small"), 10, 100)
    cfg = DataConfig(train=f"0.5 {big} 0.5 {small}", seq_len=16, cache_dir=str(tmp_path / "cache"))
    plan = BatchPlan(micro_batch=2, global_batch=4, world=2, grad_accum=1, steps=50)
    with caplog.at_level(logging.INFO, logger="megatron_ipt"):
        stream = cfg.build_train(plan, rank=0)
    report = {r["prefix"]: r for r in stream.loader.dataset.report()}
    for prefix in (big, small):
        r = report[prefix]
        line = f"blend {prefix}: weight 0.500, {r['samples']} samples, {r['epochs']:.2f} epochs"
        assert line in caplog.text, caplog.text
    assert report[small]["epochs"] > 1 > report[big]["epochs"]  # the small dataset repeats; the log says so
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="megatron_ipt"):
        cfg.build_train(plan, rank=1)
    assert "epochs" not in caplog.text  # said once, by rank 0
