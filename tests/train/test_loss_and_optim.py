"""Token-weighted loss under accumulation and data parallelism; decay groups; LR schedule."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_ipt.model.build import build_model
from megatron_ipt.model.config import ModelConfig
from megatron_ipt.train.config import OptimConfig
from megatron_ipt.train.loss import backward_scale, masked_loss_sum
from megatron_ipt.train.optim import lr_at, param_groups


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
