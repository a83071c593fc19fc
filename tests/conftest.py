"""Fixtures shared across the test tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep test processes from each spawning a full thread pool on the 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain HF directory (converted once from the shipped GGUF, cached)."""
    from megatron_ipt.model.hf_import import smollm2_hf_dir

    return smollm2_hf_dir()


@pytest.fixture(scope="session")
def mistral_tokenizer():
    from megatron_ipt.tokenizer import load_tokenizer

    return load_tokenizer("mistral")


@pytest.fixture(scope="session")
def save_tiny_llama(mistral_tokenizer):
    """``save_tiny_llama(out, **shape)``: a random Llama with Mistral's vocabulary saved as an HF dir."""

    def save(out: Path, hidden_size: int = 32, intermediate_size: int = 64, num_hidden_layers: int = 1,
             num_attention_heads: int = 2, num_key_value_heads: int = 1,
             max_position_embeddings: int = 512) -> Path:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=mistral_tokenizer.vocab_size, hidden_size=hidden_size,
                          intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
                          num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                          max_position_embeddings=max_position_embeddings, bos_token_id=mistral_tokenizer.bos_id,
                          eos_token_id=mistral_tokenizer.eos_id, pad_token_id=mistral_tokenizer.eos_id)
        LlamaForCausalLM(cfg).save_pretrained(out)
        return out

    return save
