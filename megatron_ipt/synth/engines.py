"""Engine settings, listed once, and the one way to build an engine from them: ``EngineConfig.build()``.

Two engines implement :class:`~megatron_ipt.synth.engine_types.Engine`: ``engine_hf``
(transformers; CPU or GPU, batched, KV cache) and ``engine_vllm`` (vLLM on GPUs). Both are
imported only when built, so the package works without vLLM; both take this config whole.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace

from megatron_ipt.log import get_logger
from megatron_ipt.synth.engine_types import Engine, normalize_dtype
from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)

ENGINE_KINDS = ("auto", "hf", "vllm")
SPECULATIVE_KINDS = ("auto", "off", "ngram")


@dataclass
class EngineConfig:
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

    def resolved_kind(self) -> str:
        """``auto`` -> ``vllm`` when vLLM is importable and a GPU is present, else ``hf``."""
        self.validate()
        if self.kind != "auto":
            return self.kind
        return "vllm" if vllm_available() and cuda_available() else "hf"

    def build(self, tokenizer: Tokenizer | None = None, model: object | None = None) -> Engine:
        """The engine these settings describe. ``tokenizer``/``model``: already loaded objects to
        reuse (``model`` only for the transformers engine)."""
        kind = self.resolved_kind()
        if not self.model and model is None:
            raise ValueError("engine.model is empty: give the synthesizer's Hugging Face model directory")
        log.info("loading %s generation engine from %s (requested %r)", kind, self.model or "<given model>", self.kind)
        cfg = replace(self, kind=kind)
        if kind == "hf":
            from megatron_ipt.synth.engine_hf import HFEngine

            return HFEngine(cfg, tokenizer=tokenizer, model=model)
        if model is not None:
            raise ValueError("the vLLM engine loads its own model; a preloaded model works with kind=hf only")
        from megatron_ipt.synth.engine_vllm import VLLMEngine

        return VLLMEngine(cfg, tokenizer=tokenizer)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None
