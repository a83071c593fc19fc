"""One interface over the generation engines that run the instruction synthesizer.

Prompts are token ids (the caller adds BOS itself, so no engine can double it). ``generate``
returns ``n`` generations per prompt. Two engines implement it: ``engine_hf`` (transformers;
CPU or GPU, batched, KV cache) and ``engine_vllm`` (vLLM on GPUs, imported lazily).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from megatron_ipt.log import get_logger
from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)

ENGINE_KINDS = ("auto", "hf", "vllm")


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. ``temperature == 0`` is greedy; ``n`` samples per prompt need temperature > 0
    to differ. ``stop`` strings end a generation (the stop string itself is cut from the text)."""

    max_new_tokens: int = 400
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or output (CTRL-style)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Generation:
    """One generated continuation. ``token_ids`` never include the EOS that ended it;
    ``finish_reason`` is ``"eos"``, ``"stop"`` (a stop string) or ``"length"``."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"


@runtime_checkable
class Engine(Protocol):
    tokenizer: Tokenizer
    max_model_len: int

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams],
        show_progress: bool = False,
    ) -> list[list[Generation]]:
        """``params`` is one for all prompts or one per prompt (per-prompt seeds)."""
        ...


def per_prompt_params(
    prompt_ids: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * len(prompt_ids)
    params = list(params)
    if len(params) != len(prompt_ids):
        raise ValueError(f"{len(params)} sampling params for {len(prompt_ids)} prompts")
    return params


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def check_prompt_lengths(prompt_ids: Sequence[Sequence[int]], max_model_len: int, params: Sequence[SamplingParams]) -> None:
    for i, (ids, p) in enumerate(zip(prompt_ids, params, strict=True)):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        if len(ids) + p.max_new_tokens > max_model_len:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens; with max_new_tokens={p.max_new_tokens} it exceeds "
                f"max_model_len={max_model_len} (the caller must truncate)"
            )


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_kind(kind: str) -> str:
    """``auto`` → ``vllm`` when vLLM is importable and a GPU is present, else ``hf``."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"engine kind must be one of {ENGINE_KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    return "vllm" if vllm_available() and cuda_available() else "hf"


def load_engine(
    kind: str,
    model_dir: str | Path,
    tokenizer: str | Path | Tokenizer | None = None,
    max_model_len: int = 4096,
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int = 8,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
) -> Engine:
    """Load a generation engine over a Hugging Face model directory.

    ``tokenizer`` defaults to the model directory's; give ``"mistral"`` or a path to override.
    ``dtype`` is ``auto`` (bf16 on GPU, fp32 on CPU), ``bfloat16``, ``float16`` or ``float32``.
    ``batch_size`` and ``device`` concern the transformers engine; ``tensor_parallel_size`` and
    ``gpu_memory_utilization`` the vLLM engine.
    """
    resolved = resolve_kind(kind)
    log.info("loading %s generation engine from %s (requested %r)", resolved, model_dir, kind)
    if resolved == "hf":
        from megatron_ipt.synth.engine_hf import HFEngine

        return HFEngine(model_dir, tokenizer=tokenizer, max_model_len=max_model_len, dtype=dtype,
                        device=device, batch_size=batch_size)
    from megatron_ipt.synth.engine_vllm import VLLMEngine

    return VLLMEngine(model_dir, tokenizer=tokenizer, max_model_len=max_model_len, dtype=dtype,
                      tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization)


def resolve_tokenizer(model_dir: str | Path, tokenizer: str | Path | Tokenizer | None) -> Tokenizer:
    from megatron_ipt.tokenizer import load_tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    return load_tokenizer(tokenizer if tokenizer is not None else model_dir)
