"""Build a transformers Mistral/Llama causal LM from a ModelConfig (ZeRO-3 aware).

Under ZeRO-3 the model is built inside ``HfDeepSpeedConfig`` (kept alive by the caller), so each
rank holds only its partition from construction on and HF's weight init still runs; a bare
``deepspeed.zero.Init`` would skip that init.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from megatron_ipt.log import get_logger
from megatron_ipt.model.attention import register_backends, resolve_backend
from megatron_ipt.model.config import ModelConfig

log = get_logger(__name__)


class ModelBuildError(ValueError):
    """A model config or HF directory that cannot give the requested model."""


def hf_config(cfg: ModelConfig, attn_implementation: str = "sdpa") -> Any:
    """The transformers config object for ``cfg`` (read from ``init_from`` when set)."""
    from transformers import AutoConfig, LlamaConfig, MistralConfig

    if cfg.init_from is not None:
        path = Path(cfg.init_from)
        if not (path / "config.json").is_file():
            raise ModelBuildError(f"model.init_from={cfg.init_from}: no config.json (not an HF model directory)")
        hf = AutoConfig.from_pretrained(path)
        if hf.model_type not in ("llama", "mistral"):
            raise ModelBuildError(f"{path}/config.json: model_type {hf.model_type!r} is not llama or mistral")
    else:
        cls = MistralConfig if cfg.arch == "mistral" else LlamaConfig
        extra: dict[str, Any] = {"sliding_window": None} if cfg.arch == "mistral" else {}
        hf = cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim or cfg.hidden_size // cfg.num_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            rope_theta=cfg.rope_theta,
            rms_norm_eps=cfg.rms_norm_eps,
            initializer_range=cfg.initializer_range,
            tie_word_embeddings=cfg.tie_word_embeddings,
            bos_token_id=1,
            eos_token_id=2,
            **extra,
        )
    hf.use_cache = False  # packed-document detection needs no cache (see notes)
    hf._attn_implementation = attn_implementation
    return hf


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of the model ``cfg`` describes, counted on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(cfg))
    return sum(p.numel() for p in model.parameters())


def build_model(cfg: ModelConfig, device_type: str = "cpu", dtype: torch.dtype = torch.float32,
                compute_dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.nn.Module:
    """A fresh (or ``init_from``-loaded) causal LM in training mode with the resolved attention.

    ``dtype`` is the weights' dtype (also the dtype a checkpoint is loaded in); ``compute_dtype``
    (default: ``dtype``) the one training runs in, which decides the attention ``auto`` picks.
    ``device``: where a fresh model's weights are allocated and initialised (a loaded one is moved
    there); None keeps them on the CPU. Call inside a live ``HfDeepSpeedConfig`` (and without
    ``device``) for ZeRO-3 partitioned construction.
    """
    from transformers import AutoModelForCausalLM

    register_backends()
    attn = resolve_backend(cfg.attention, device_type, compute_dtype or dtype)
    hf = hf_config(cfg, attn)
    if cfg.init_from is not None:
        model = AutoModelForCausalLM.from_pretrained(cfg.init_from, config=hf, dtype=dtype)
        if device is not None:
            model = model.to(device)
        log.info("model: loaded %s (%s, attention %s)", cfg.init_from, hf.model_type, attn)
    else:
        # Allocated and initialised where it trains; ZeRO-3 (device None) places its partitions itself.
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_config(hf, dtype=dtype)
    model.config.use_cache = False
    n = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    if cfg.expected_parameters is not None and n != cfg.expected_parameters:
        raise ModelBuildError(
            f"model has {n:,} parameters but model.expected_parameters says {cfg.expected_parameters:,}"
        )
    log.info("model: %s, %s parameters, attention %s", hf.model_type, f"{n:,}", attn)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def model_shape(model: torch.nn.Module) -> dict[str, Any]:
    """The shape-defining fields of a built model's config (stored with checkpoints)."""
    c = model.config
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")
    return json.loads(json.dumps({k: getattr(c, k, None) for k in keys}))
