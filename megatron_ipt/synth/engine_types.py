"""The types every generation engine shares: sampling parameters, generations, the ``Engine``
protocol and the checks every ``generate`` starts with (:func:`prepare_requests`). This module imports no engine, so the engines and the code that
builds them (:mod:`megatron_ipt.synth.engines`) both depend on it and never on each other.

Prompts are token ids (the caller adds BOS itself, so no engine can double it). ``generate``
returns ``n`` generations per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

# The one dtype spelling set lives in the config system; re-exported for the engines.
from megatron_ipt.config import DTYPE_NAMES, normalize_dtype  # noqa: F401
from megatron_ipt.tokenizer import Tokenizer, load_tokenizer


@dataclass(frozen=True)
class SamplingParams:
    """How to decode, declared once: the engines take it per prompt, and synthesis nests it as its
    ``sampling`` settings (the config system's keys ``sampling.<name>``). ``temperature == 0`` is
    greedy; ``n`` samples per prompt need temperature > 0 to differ."""

    max_new_tokens: int = 400  # tokens generated per prompt (per round in synthesis)
    temperature: float = 0.0  # sampling temperature (0: greedy)
    top_p: float = 1.0  # nucleus sampling mass
    n: int = 1  # samples per prompt (synthesis merges their pairs)
    seed: int = 0  # sampling seed (synthesis derives each text's from it)
    stop: tuple[str, ...] = ()  # generation stops at these strings (cut from the text)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or output (CTRL-style); guards small synthesizers against loops

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
    cached_tokens: int = 0  # prompt tokens served from a prefix cache (not prefilled again)


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


def prepare_requests(prompt_ids: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams],
                     max_model_len: int) -> tuple[list[list[int]], list[SamplingParams]]:
    """What every engine's ``generate`` checks first: the prompts as lists of ints and one
    ``SamplingParams`` per prompt, each prompt non-empty and fitting ``max_model_len`` with its
    ``max_new_tokens`` (else ``ValueError``, naming the prompt)."""
    per_prompt = per_prompt_params(prompt_ids, params)
    prompts = [[int(t) for t in ids] for ids in prompt_ids]
    check_prompt_lengths(prompts, max_model_len, per_prompt)
    return prompts, per_prompt


def eos_ids(tokenizer: Tokenizer) -> set[int]:
    """The token ids that end a generation as the tokenizer knows them (none without an EOS)."""
    return {tokenizer.eos_id} if tokenizer.eos_id is not None else set()


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


def resolve_tokenizer(model_dir: str | Path, tokenizer: str | Path | Tokenizer | None) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    return load_tokenizer(tokenizer if tokenizer is not None else model_dir)


ENGINE_KINDS = ("auto", "hf", "vllm")
SPECULATIVE_KINDS = ("auto", "off", "ngram")


@dataclass
class EngineSettings:
    """Engine settings, listed once; :class:`megatron_ipt.synth.engines.EngineConfig` builds the engine."""

    kind: str = "auto"  # auto (vLLM when importable with a GPU, else hf) | hf (transformers) | vllm
    model: str = ""  # the synthesizer: a Hugging Face model directory
    tokenizer: str = ""  # 'mistral', a .model/.gguf file or an HF directory; empty: the model directory's
    max_model_len: int = 4096  # prompt + generated tokens per sequence
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32 (long names accepted)
    device: str = "auto"  # transformers engine: auto | cpu | cuda | cuda:N
    batch_size: int | str = "auto"  # transformers engine: sequences decoded together; auto: from free GPU memory and max_model_len (8 on CPU)
    prefix_cache_tokens: int = 65536  # transformers engine: KV of this many tokens of finished sequences kept so a later prompt extending one prefills only its new tokens (0: off)
    tensor_parallel_size: int = 1  # vLLM engine: GPUs one model is split over
    gpu_memory_utilization: float = 0.9  # vLLM engine: share of GPU memory for weights and KV cache
    seed: int = 0  # vLLM engine: its own sampler seed (per-prompt seeds come with the sampling params)
    speculative: str = "auto"  # ngram: prompt-lookup speculative decoding (drafts copied from the prompt and output, verified exactly) | off | auto: ngram on GPUs (vLLM, or transformers on CUDA), off on CPU (compute-bound: rejected drafts cost)
    speculative_tokens: int = 4  # tokens drafted per sequence and step (vLLM: num_speculative_tokens)
    lookup_max: int = 4  # longest n-gram looked up in the prompt and output (vLLM: prompt_lookup_max)
    lookup_min: int = 2  # shortest n-gram looked up (vLLM: prompt_lookup_min)

    def validate(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ValueError(f"engine.kind must be one of {ENGINE_KINDS}, got {self.kind!r}")
        self.dtype = normalize_dtype(self.dtype)
        if self.max_model_len < 2:
            raise ValueError(f"engine.max_model_len must be >= 2, got {self.max_model_len}")
        if self.prefix_cache_tokens < 0:
            raise ValueError(f"engine.prefix_cache_tokens must be >= 0, got {self.prefix_cache_tokens}")
        if isinstance(self.batch_size, str) and self.batch_size.strip().isdigit():  # "--engine.batch_size=16"
            self.batch_size = int(self.batch_size)
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"engine.batch_size must be auto or an integer >= 1, got {self.batch_size!r}")
        if self.speculative not in SPECULATIVE_KINDS:
            raise ValueError(f"engine.speculative must be one of {SPECULATIVE_KINDS}, got {self.speculative!r}")
        if self.speculative_tokens < 1:
            raise ValueError(f"engine.speculative_tokens must be >= 1, got {self.speculative_tokens}")
        if not 1 <= self.lookup_min <= self.lookup_max:
            raise ValueError(f"engine.lookup_min and lookup_max need 1 <= lookup_min <= lookup_max, got "
                             f"{self.lookup_min} and {self.lookup_max}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"engine.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"engine.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
