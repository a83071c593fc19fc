"""The vLLM generation engine (GPUs): tensor parallel, prefix caching, token-id prompts.

vLLM is imported only when this engine is built, so the rest of the package works without it.
Prompts go in as ``TokensPrompt`` so vLLM adds no BOS of its own (the synthesizer's prompts
already start with one; a doubled BOS is a pitfall of the reference release).
``engine.speculative=ngram`` passes vLLM's prompt-lookup speculation through, in the spelling of the
installed version (:func:`speculative_kwargs`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from megatron_ipt.config import resolve_dtype
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress_mode
from megatron_ipt.synth.engine_types import (
    EngineSettings,
    Generation,
    SamplingParams,
    eos_ids,
    prepare_requests,
    resolve_tokenizer,
)
from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)

MISSING_VLLM = (
    "the vLLM engine needs the vllm package and a CUDA GPU: pip install vllm "
    "(or use --engine hf, the transformers engine, which runs on CPU or GPU)"
)


def speculative_kwargs(config: EngineSettings, version: str) -> dict:
    """``vllm.LLM`` keyword arguments for prompt-lookup speculation (``engine.speculative`` ngram or
    auto) in the spelling of the installed vLLM ``version``; empty when off or too old (< 0.6) to have it."""
    if config.speculative == "off":
        return {}
    major_minor = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    sizes = {"num_speculative_tokens": config.speculative_tokens,
             "prompt_lookup_max": config.lookup_max, "prompt_lookup_min": config.lookup_min}
    if major_minor >= (0, 9):
        return {"speculative_config": {"method": "ngram", **sizes}}
    if major_minor >= (0, 8):
        return {"speculative_config": {"model": "[ngram]", **sizes}}
    if major_minor >= (0, 6):
        return {"speculative_model": "[ngram]", "num_speculative_tokens": config.speculative_tokens,
                "ngram_prompt_lookup_max": config.lookup_max, "ngram_prompt_lookup_min": config.lookup_min}
    log.warning("vLLM %s has no n-gram speculation this engine knows: decoding without it", version)
    return {}


def _import_vllm():
    try:
        import vllm
        from vllm.inputs import TokensPrompt
    except ImportError as err:
        raise RuntimeError(f"{MISSING_VLLM} ({err})") from err
    return vllm, TokensPrompt


class VLLMEngine:
    """Generation with vLLM (see :class:`~megatron_ipt.synth.engine_types.Engine`)."""

    def __init__(self, config: EngineSettings, tokenizer: Tokenizer | None = None) -> None:
        """``config`` as built by :meth:`megatron_ipt.synth.engines.EngineConfig.build`."""
        vllm, self._TokensPrompt = _import_vllm()
        self._vllm = vllm
        self.tokenizer = resolve_tokenizer(config.model, tokenizer or config.tokenizer or None)
        self.max_model_len = config.max_model_len
        self.tensor_parallel_size = config.tensor_parallel_size  # GPUs one model takes (for the cost per token)
        self.llm = vllm.LLM(
            model=str(config.model),
            # vLLM detokenizes with an HF tokenizer: the given directory, else the model's own.
            tokenizer=config.tokenizer if config.tokenizer and Path(config.tokenizer).is_dir() else str(config.model),
            dtype=str(resolve_dtype(config.dtype, "cuda")),  # vLLM runs on GPUs
            max_model_len=config.max_model_len,
            tensor_parallel_size=config.tensor_parallel_size,
            # Chained M-shot prompts extend the previous round's prompt; the runner sends them
            # chain-major (a batch of slots through every round), so that prefix is still cached.
            enable_prefix_caching=True,
            gpu_memory_utilization=config.gpu_memory_utilization,
            seed=config.seed,
            **speculative_kwargs(config, vllm.__version__),
        )
        self.eos_ids = eos_ids(self.tokenizer)

    def _vllm_params(self, p: SamplingParams):
        return self._vllm.SamplingParams(
            n=p.n,
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_new_tokens,
            seed=None if p.greedy else p.seed,
            stop=list(p.stop) or None,
            repetition_penalty=p.repetition_penalty,
            stop_token_ids=sorted(self.eos_ids) or None,
            skip_special_tokens=True,
        )

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams],
        show_progress: bool = False,
    ) -> list[list[Generation]]:
        prompt_ids, per_prompt = prepare_requests(prompt_ids, params, self.max_model_len)
        prompts = [self._TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        outputs = self.llm.generate(prompts, [self._vllm_params(p) for p in per_prompt], use_tqdm=progress_mode(show_progress) == "bar")
        results = []
        for req in outputs:
            cached = int(getattr(req, "num_cached_tokens", 0) or 0)  # prompt tokens from the prefix cache
            gens = []
            for c in req.outputs:
                ids = list(c.token_ids)
                if ids and ids[-1] in self.eos_ids:
                    ids.pop()
                # vLLM says "stop" for EOS and stop strings alike; stop_reason tells them apart.
                if c.finish_reason == "length":
                    reason = "length"
                else:
                    reason = "stop" if isinstance(c.stop_reason, str) else "eos"
                gens.append(Generation(c.text, ids, reason, cached))
            results.append(gens)
        return results
