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
