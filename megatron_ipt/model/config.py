"""The model section of a training config: a Mistral/Llama shape, or an HF directory to start from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_ipt.config import ConfigError
from megatron_ipt.model.attention import AttentionBackendError, check_choice


@dataclass
class ModelConfig:
    arch: Literal["mistral", "llama"] = "mistral"  # decoder family (HF MistralForCausalLM / LlamaForCausalLM)
    # An HF model directory (continual pre-training); the shape fields below are then ignored.
    init_from: str | None = None
    vocab_size: int = 32000  # embedding rows; must cover the tokenizer's ids
    hidden_size: int = 64  # model width
    intermediate_size: int = 176  # SwiGLU MLP width
    num_layers: int = 2  # decoder layers
    num_heads: int = 4  # query heads
    num_kv_heads: int = 2  # key/value heads (grouped-query attention; divides num_heads)
    head_dim: int | None = None  # per-head width (null: hidden_size / num_heads)
    max_position_embeddings: int = 2048  # longest sequence the RoPE tables cover
    rope_theta: float = 10000.0  # RoPE base frequency
    rms_norm_eps: float = 1e-5  # RMSNorm epsilon
    initializer_range: float = 0.02  # std of the normal weight initialisation
    tie_word_embeddings: bool = False  # share the input embedding and the LM head
    # Parameter count the config claims; building a different count is an error (null: unchecked).
    expected_parameters: int | None = None
    attention: str = "auto"  # auto | doc_sdpa | doc_flex | doc_varlen | doc_fa_varlen | sdpa | eager (auto: doc_sdpa on CPU; on CUDA doc_fa_varlen with flash-attn, else doc_varlen, else doc_flex)
    activation_checkpointing: bool = False  # recompute layer activations in backward (saves memory)

    def validate(self) -> None:
        try:
            check_choice(self.attention)
        except AttentionBackendError as err:
            raise ConfigError(str(err)) from None
        if self.init_from is None:
            if self.num_heads % self.num_kv_heads:
                raise ConfigError(
                    f"model.num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
                )
            if self.head_dim is None and self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"model.hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
                )
