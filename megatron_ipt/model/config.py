"""The model section of a training config: a Mistral/Llama shape, or an HF directory to start from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_ipt.config import ConfigError
from megatron_ipt.model.attention import CHOICES


@dataclass
class ModelConfig:
    arch: Literal["mistral", "llama"] = "mistral"
    # An HF model directory (continual pre-training); the shape fields below are then ignored.
    init_from: str | None = None
    vocab_size: int = 32000
    hidden_size: int = 64
    intermediate_size: int = 176
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    # Parameter count the config claims; building a different count is an error (null: unchecked).
    expected_parameters: int | None = None
    attention: str = "auto"
    activation_checkpointing: bool = False

    def validate(self) -> None:
        if self.attention not in CHOICES:
            raise ConfigError(f"model.attention={self.attention!r}: expected one of {', '.join(CHOICES)}")
        if self.init_from is None:
            if self.num_heads % self.num_kv_heads:
                raise ConfigError(
                    f"model.num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
                )
            if self.head_dim is None and self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"model.hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
                )
