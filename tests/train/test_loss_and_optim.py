"""Token-weighted loss under accumulation and data parallelism; decay groups; LR schedule."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_ipt.model.build import ModelConfig, build_model
from megatron_ipt.train import optim
from megatron_ipt.train.loss import (
    CHUNK_LOGITS_BYTES,
    attach_chunked_loss,
    backward_scale,
    chunk_tokens_for,
    linear_cross_entropy_sum,
    masked_loss_sum,
)
from megatron_ipt.train.optim import OptimConfig, build_optimizer, choose_optimizer, lr_at, param_groups


def _tiny(checkpointing: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                                   num_kv_heads=2, max_position_embeddings=64, activation_checkpointing=checkpointing))


def _batch(gen: torch.Generator, keep: float) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 300, (2, 17), generator=gen)
    mask = (torch.rand(2, 16, generator=gen) < keep).float()
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": mask,
            "position_ids": torch.arange(16).expand(2, 16)}


def _grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_token_weighted_loss_matches_one_big_batch() -> None:
    """2 ranks x 2 micro-batches with very different mask counts == one batch of all loss tokens."""
    gen = torch.Generator().manual_seed(3)
    micro = {(r, m): _batch(gen, keep) for r, m, keep in [(0, 0, 0.9), (0, 1, 0.1), (1, 0, 0.5), (1, 1, 0.3)]}
    n_total = sum(mb["loss_mask"].sum() for mb in micro.values())
    model = _tiny()

    def loss_sum(mb):
        logits = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"]).logits
        return masked_loss_sum(logits, mb["labels"], mb["loss_mask"])

    reference = sum(loss_sum(mb) for mb in micro.values()) / n_total
    reference.backward()
    expected = _grads(model).clone()
    # What the trainer does, with DeepSpeed's averaging (1/grad_accum per micro-batch, mean over ranks).
    grad_accum, world = 2, 2
    per_rank = []
    for r in range(world):
        model.zero_grad()
        for m in range(grad_accum):
            (loss_sum(micro[(r, m)]) / n_total * backward_scale(grad_accum, world) / grad_accum).backward()
        per_rank.append(_grads(model).clone())
    averaged = sum(per_rank) / world
    assert torch.allclose(averaged, expected, atol=1e-6, rtol=1e-5)
    # A plain mean of per-micro-batch means would weight the 10%-mask micro-batch like the 90% one.
    with torch.no_grad():
        mean_of_means = sum(loss_sum(mb) / mb["loss_mask"].sum() for mb in micro.values()) / 4
    assert not math.isclose(float(reference.detach()), float(mean_of_means), rel_tol=1e-3)


def test_no_decay_on_norms_and_biases() -> None:
    model = _tiny()
    decay, skip = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and skip["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in skip["params"]}
    assert skipped and all("norm" in n for n in skipped)
    assert {names[id(p)] for p in decay["params"]} >= {"model.embed_tokens.weight", "lm_head.weight"}


def test_warmup_then_cosine() -> None:
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4)
    assert [lr_at(s, cfg, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(12, cfg, 20) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(20, cfg, 20) == pytest.approx(0.1) and lr_at(30, cfg, 20) == pytest.approx(0.1)


def test_activation_checkpointing_switch_keeps_gradients() -> None:
    gen = torch.Generator().manual_seed(5)
    mb = _batch(gen, 1.0)
    grads = []
    for flag in (False, True):
        model = _tiny(flag)
        assert model.is_gradient_checkpointing == flag
        logits = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"]).logits
        masked_loss_sum(logits, mb["labels"], mb["loss_mask"]).backward()
        grads.append(_grads(model))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_chunked_linear_cross_entropy_is_exact(chunk: int | None) -> None:
    """Value and both gradients equal the full-logits loss (fp32, <= 1e-6 relative), -100 labels included."""
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(3, 21, 16, generator=gen, requires_grad=True)
    weight = (torch.randn(300, 16, generator=gen) * 0.3).requires_grad_()
    labels = torch.randint(0, 300, (3, 21), generator=gen)
    labels[0, :4] = -100
    mask = (torch.rand(3, 21, generator=gen) < 0.7).float()
    reference = masked_loss_sum(hidden @ weight.t(), labels, mask)
    reference.backward()
    ref_h, ref_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    lean = linear_cross_entropy_sum(hidden, weight, labels, mask, chunk_tokens=chunk)
    (lean * 2.5).backward()  # the backward scales by the incoming gradient
    assert abs(lean.item() - reference.item()) <= 1e-6 * abs(reference.item())
    assert _rel(hidden.grad, 2.5 * ref_h) <= 1e-6 and _rel(weight.grad, 2.5 * ref_w) <= 1e-6
    with torch.no_grad():  # evaluation: loss only, the same value
        assert abs(float(linear_cross_entropy_sum(hidden, weight, labels, mask, chunk)) - float(reference)) \
            <= 1e-6 * abs(float(reference))


def test_chunk_size_keeps_logits_near_hidden_size_or_a_floor() -> None:
    assert chunk_tokens_for(8192, 4096, 128_256) == 256  # 8B head, 4 x 2,048 tokens: 32 chunks
    assert chunk_tokens_for(10, 64, 32) == 10 and chunk_tokens_for(1, 4096, 128_256) == 1
    n = chunk_tokens_for(5000, 64, 32000)  # a small model's large vocabulary: the byte floor decides
    assert n * 32000 * 4 <= CHUNK_LOGITS_BYTES < 2 * n * 32000 * 4
    assert chunk_tokens_for(2048, 576, 49_152) == 256  # SmolLM2-135M, 4 x 512 tokens: 8 chunks
    huge = chunk_tokens_for(1 << 20, 8192, 4 << 20)  # a vocabulary too big for the floor: by size
    assert huge * (4 << 20) <= 2 * (1 << 20) * 8192


def test_model_with_chunked_loss_matches_logits_loss() -> None:
    """Through a real model: same loss and parameter gradients; a plain call still returns logits."""
    gen = torch.Generator().manual_seed(4)
    mb = _batch(gen, 0.6)
    model = _tiny()
    logits = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"]).logits
    reference = masked_loss_sum(logits, mb["labels"], mb["loss_mask"])
    reference.backward()
    expected = _grads(model).clone()
    model.zero_grad(set_to_none=True)
    attach_chunked_loss(model)
    lean = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"], labels=mb["labels"],
                 loss_mask=mb["loss_mask"])
    assert lean.dim() == 0 and abs(lean.item() - reference.item()) <= 1e-6 * reference.item()
    lean.backward()
    assert _rel(_grads(model), expected) <= 1e-6
    with torch.no_grad():
        again = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"]).logits
    assert torch.allclose(again, logits.detach(), atol=1e-6)


OFFLOAD = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}


def test_optimizer_by_device() -> None:
    assert choose_optimizer("cpu", {"zero_optimization": {"stage": 2}})[0] == "torch_adamw"
    assert choose_optimizer("cpu", OFFLOAD)[0] == "torch_adamw"  # CPU tests never compile CPU Adam
    assert choose_optimizer("cuda", {"zero_optimization": {"stage": 2}})[0] == "torch_fused_adamw"
    assert choose_optimizer("cuda", None)[0] == "torch_fused_adamw"
    assert choose_optimizer("cuda", OFFLOAD)[0] == "deepspeed_cpu_adam"
    nvme = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "none"}}}
    assert choose_optimizer("cuda", nvme)[0] == "torch_fused_adamw"


def test_built_optimizer_follows_the_choice(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    import logging

    model = _tiny()
    cfg = OptimConfig(lr=1e-3)
    logger = logging.getLogger("megatron_ipt")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.INFO, logger="megatron_ipt.train.optim"):
        plain = build_optimizer(model, cfg, "cpu", OFFLOAD)
    assert type(plain) is torch.optim.AdamW and not plain.defaults["fused"]
    assert "optimizer: torch_adamw" in caplog.text
    # The fused kernel also exists on CPU in torch, so the CUDA choice is built and stepped for real here.
    monkeypatch.setattr(optim, "choose_optimizer", lambda d, c: ("torch_fused_adamw", "forced"))
    fused = build_optimizer(model, cfg, "cuda")
    assert fused.defaults["fused"] and len(fused.param_groups) == 2
    model(input_ids=torch.randint(3, 300, (1, 8))).logits.sum().backward()
    before = model.lm_head.weight.detach().clone()
    fused.step()
    assert not torch.equal(before, model.lm_head.weight)
    built = {}

    class RecordingCPUAdam:  # DeepSpeedCPUAdam itself would compile its op for ~2 minutes on this CPU
        def __init__(self, groups, **kwargs):
            built.update(groups=groups, **kwargs)

    import deepspeed.ops.adam

    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", RecordingCPUAdam)
    monkeypatch.setattr(optim, "choose_optimizer", lambda d, c: ("deepspeed_cpu_adam", "forced"))
    build_optimizer(model, cfg, "cuda", OFFLOAD)
    assert built["adamw_mode"] is True and built["lr"] == 1e-3 and len(built["groups"]) == 2
