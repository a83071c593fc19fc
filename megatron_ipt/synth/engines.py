"""The one way to build an engine from its settings: ``EngineConfig.build()``.

Two engines implement :class:`~megatron_ipt.synth.engine_types.Engine`: ``engine_hf``
(transformers; CPU or GPU, batched, KV cache) and ``engine_vllm`` (vLLM on GPUs). Both are
imported only when built, so the package works without vLLM; both take the settings whole
(:class:`~megatron_ipt.synth.engine_types.EngineSettings`, which imports no engine).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace

from megatron_ipt.log import get_logger
from megatron_ipt.synth.engine_types import Engine, EngineSettings
from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)

@dataclass
class EngineConfig(EngineSettings):
    """The settings (:class:`~megatron_ipt.synth.engine_types.EngineSettings`) and the one way to
    build the engine they describe."""

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
