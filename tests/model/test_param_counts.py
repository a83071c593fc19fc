"""The model configs state their parameter counts; building them on the meta device confirms it."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_ipt.config import load_config
from megatron_ipt.model.build import count_parameters, hf_config
from megatron_ipt.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "nominal"), [("mistral_500M", 500e6), ("mistral_1.3B", 1.3e9), ("tiny", None)]
)
def test_stated_parameter_count(name: str, nominal: float | None) -> None:
    cfg = load_config(TrainConfig, ROOT / "configs" / "model" / f"{name}.yaml", {"data": {"train": "unused"}})
    n = count_parameters(cfg.model)
    assert n == cfg.model.expected_parameters
    if nominal is not None:
        assert abs(n - nominal) / nominal < 0.05, f"{name}: {n:,} parameters is not ~{nominal:,.0f}"
    hf = hf_config(cfg.model)
    assert hf.num_key_value_heads < hf.num_attention_heads  # grouped-query attention
    assert hf.hidden_act == "silu" and hf.use_cache is False


@pytest.mark.parametrize("name", ["pretrain_500M", "pretrain_1.3B", "continual_8B", "tiny"])
def test_run_configs_load(name: str) -> None:
    cfg = load_config(TrainConfig, ROOT / "configs" / f"{name}.yaml", {"data": {"train": "x"}})
    assert cfg.data.seq_len <= (cfg.model.max_position_embeddings if cfg.model.init_from is None else 10**9)
