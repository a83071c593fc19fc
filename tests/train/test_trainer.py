"""The trainer's forward path: the loader's document boundaries reach the model once per micro-batch."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from megatron_ipt.data.loader import collate
from megatron_ipt.model.attention import PackedDocuments
from megatron_ipt.train.trainer import Trainer


def _micro_batch() -> dict:
    samples = []
    for lengths in ([5, 3], [8]):
        pos = np.concatenate([np.arange(n) for n in lengths])
        samples.append({"input_ids": np.arange(8), "labels": np.arange(8), "loss_mask": np.ones(8, np.float32),
                        "position_ids": pos, "cu_seqlens": np.cumsum([0, *lengths]).astype(np.int32),
                        "dataset_id": 0})
    return collate(samples)


def test_model_inputs_carry_the_loaders_boundaries() -> None:
    mb = _micro_batch()
    fake = SimpleNamespace(device=torch.device("cpu"), attention="doc_sdpa")
    inputs = Trainer._model_inputs(fake, mb)
    docs = inputs["packed_documents"]
    assert isinstance(docs, PackedDocuments) and docs.backend == "doc_sdpa"
    assert docs.cu_seqlens.tolist() == mb["cu_seqlens"].tolist() == [0, 5, 8, 16]
    assert docs.max_seqlen == mb["max_seqlen"] == 8 and docs.restarts
    assert docs.mask[0, 0, 5].tolist() == [False] * 5 + [True] + [False] * 2
    plain = Trainer._model_inputs(SimpleNamespace(device=torch.device("cpu"), attention="sdpa"), mb)
    assert "packed_documents" not in plain  # transformers' own attention derives its mask itself


class _Engine:
    """A DeepSpeed engine's training surface over one weight: the loss sum and grad norm stay tensors."""

    def __init__(self) -> None:
        self.w = torch.ones((), requires_grad=True)

    def __call__(self, input_ids, labels, loss_mask, **kwargs):  # noqa: ANN001, ANN204
        return self.w * loss_mask.sum()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        with torch.no_grad():
            self.w -= 1e-3 * self.w.grad
        self.w.grad = None

    def get_lr(self) -> list[float]:
        return [1e-3]

    def get_global_grad_norm(self) -> torch.Tensor:
        return self.w.detach() * 16.0  # d(w * 16 tokens)/dw, scaled like a real norm


class _LoopOnly(Trainer):
    """The real train_step and fit around a stand-in engine, data stream and config (no DeepSpeed)."""

    def __init__(self, tmp_path, steps: int, log_every: int) -> None:  # noqa: ANN001
        from megatron_ipt.train.config import TrainConfig
        from megatron_ipt.train.metrics import MetricsWriter, StepRecorder

        self.cfg = TrainConfig(steps=steps)
        self.cfg.logging.interval, self.cfg.logging.eval_interval = log_every, 0
        self.cfg.checkpoint.interval, self.cfg.checkpoint.save_at_end = 0, False
        self.plan = SimpleNamespace(resume_from=None, valid=None)
        self.engine, self.device, self.attention, self.autocast = _Engine(), torch.device("cpu"), "sdpa", False
        self.grad_accum, self.world, self.step, self.tokens_per_dataset = 2, 1, 0, {}
        self.data = SimpleNamespace(next_step=lambda: [_micro_batch(), _micro_batch()], dataset_names=["a"],
                                    consumed_samples=0)
        self.metrics, self.callbacks = MetricsWriter(tmp_path, True, False), []
        self.recorder = StepRecorder(self.metrics, 1.0, 1.0, self.world, self.device, steps)


def test_loss_and_grad_norm_are_read_on_the_host_only_at_logging_steps(tmp_path, metrics) -> None:
    from torch.overrides import TorchFunctionMode

    trainer = _LoopOnly(tmp_path, steps=7, log_every=3)
    reads: list[int] = []
    blocking_copies: list[int] = []

    class HostReads(TorchFunctionMode):
        """Records the step of every host read of a floating-point tensor (the loader's int ids are host
        data), and of every copy to a device that waits for the device's queued work (non_blocking unset)."""

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            name = getattr(func, "__name__", "")
            kwargs = kwargs or {}
            if name in ("item", "tolist", "__float__", "__bool__", "numpy") and args[0].is_floating_point():
                reads.append(trainer.step)
            to_device = "device" in kwargs or any(isinstance(a, torch.device) for a in args[1:])
            if name == "to" and to_device and not kwargs.get("non_blocking"):
                blocking_copies.append(trainer.step)
            return func(*args, **kwargs)

    never = SimpleNamespace(any_rank=lambda: False)
    with HostReads():
        assert trainer.fit(never) == 0
    assert reads == [3, 6, 7]  # one read per metrics line, none on the steps between
    assert set(blocking_copies) <= {3, 6, 7}, blocking_copies  # inputs go to the device without waiting
    rows = metrics(tmp_path)
    assert sorted(rows) == [3, 6, 7]
    assert 0.99 < rows[3]["loss"] < 1.0  # the weight, which each micro-batch lowers by 1e-3
    assert rows[3]["grad_norm"] > 0 and rows[7]["loss"] < rows[3]["loss"]


def test_weights_are_built_in_bf16_only_where_deepspeed_trains_bf16_weights() -> None:
    from megatron_ipt.train.trainer import weights_dtype

    assert weights_dtype("bfloat16") == torch.bfloat16
    assert weights_dtype("bfloat16_autocast") == weights_dtype("float32") == torch.float32  # fp32 master weights
