"""The transformers generation engine: CPU or GPU, batched with left padding, KV cache.

Its own decoding loop (rather than ``model.generate``) so that each row has its own seed, stop
strings and token limit, and finished rows leave the batch (their cache is dropped) at once.
Rows are grouped into batches by length in a fixed order, so a given set of prompts always
decodes in the same batches: greedy output is reproducible run to run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress
from megatron_ipt.synth.engine_types import (
    Generation,
    SamplingParams,
    check_prompt_lengths,
    cut_at_stop,
    normalize_dtype,
    per_prompt_params,
    resolve_tokenizer,
)
from megatron_ipt.tokenizer import Tokenizer

if TYPE_CHECKING:
    from megatron_ipt.synth.engines import EngineConfig

log = get_logger(__name__)



def sample_seed(seed: int, sample_index: int) -> int:
    """A distinct, reproducible seed for the ``sample_index``-th sample of a prompt."""
    return (seed * 1_000_003 + sample_index) % (2**63 - 1)


class _Row:
    __slots__ = ("prompt_index", "sample_index", "prompt", "params", "generator", "out", "finish", "text")

    def __init__(self, prompt_index: int, sample_index: int, prompt: list[int], params: SamplingParams,
                 device: torch.device) -> None:
        self.prompt_index, self.sample_index = prompt_index, sample_index
        self.prompt, self.params = prompt, params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator(device=device).manual_seed(sample_seed(params.seed, sample_index))
        self.out: list[int] = []
        self.finish: str | None = None
        self.text = ""


class HFEngine:
    """Generation with a transformers causal LM (see :class:`~megatron_ipt.synth.engine_types.Engine`)."""

    def __init__(self, config: EngineConfig, tokenizer: Tokenizer | None = None,
                 model: torch.nn.Module | None = None) -> None:
        """``config`` as built by :meth:`EngineConfig.build`; ``model``: an already loaded model to use."""
        from transformers import AutoModelForCausalLM

        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = normalize_dtype(config.dtype)
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        if model is None:
            t0 = time.time()
            model = AutoModelForCausalLM.from_pretrained(str(config.model), dtype=torch_dtype)
            log.info("loaded %s in %.1fs (%s, %s)", config.model, time.time() - t0, torch_dtype, self.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = resolve_tokenizer(config.model, tokenizer or config.tokenizer or None)
        limit = getattr(self.model.config, "max_position_embeddings", None) or config.max_model_len
        self.max_model_len = min(config.max_model_len, limit)
        self.batch_size = config.batch_size
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else 0

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_id} if self.tokenizer.eos_id is not None else set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(int(i) for i in gen_eos)
        return ids

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams],
        show_progress: bool = False,
    ) -> list[list[Generation]]:
        per_prompt = per_prompt_params(prompt_ids, params)
        check_prompt_lengths(prompt_ids, self.max_model_len, per_prompt)
        rows = [
            _Row(i, k, list(map(int, ids)), p, self.device)
            for i, (ids, p) in enumerate(zip(prompt_ids, per_prompt, strict=True))
            for k in range(p.n)
        ]
        # Longest first, ties by position: similar lengths share a batch (little padding).
        order = sorted(range(len(rows)), key=lambda r: (-len(rows[r].prompt), r))
        with progress(total=len(rows), desc="generate", unit="seq", enabled=show_progress) as bar:
            for start in range(0, len(order), self.batch_size):
                batch = [rows[r] for r in order[start : start + self.batch_size]]
                self._generate_batch(batch)
                bar.update(len(batch))
        results: list[list[Generation]] = [[] for _ in prompt_ids]
        for row in rows:
            results[row.prompt_index].append(Generation(row.text, row.out, row.finish or "length"))
        return results

    def _next_tokens(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        logits = logits.float()
        for j, row in enumerate(rows):
            if row.params.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(row.prompt) | set(row.out)), device=logits.device)
                picked = logits[j, seen]
                penalty = row.params.repetition_penalty
                logits[j, seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
        greedy = logits.argmax(dim=-1).tolist()
        out = []
        for j, row in enumerate(rows):
            p = row.params
            if p.greedy:
                out.append(greedy[j])
                continue
            probs = torch.softmax(logits[j] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_p, idx = probs.sort(descending=True)
                drop = sorted_p.cumsum(-1) - sorted_p > p.top_p  # keep the smallest nucleus >= top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
            out.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return out

    def _finished(self, row: _Row, token: int) -> bool:
        if token in self.eos_ids:
            row.finish = "eos"
            return True
        row.out.append(token)
        stop = row.params.stop
        if stop:
            # Only the tail can hold a new stop string: decode enough tokens to cover the longest.
            tail = self.tokenizer.decode(row.out[-(max(map(len, stop)) + 2) :])
            if any(s in tail for s in stop):
                row.finish = "stop"
                return True
        if len(row.out) >= row.params.max_new_tokens:
            row.finish = "length"
            return True
        return False

    def _generate_batch(self, rows: list[_Row]) -> None:
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[j, width - len(r.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        active = list(rows)
        while True:
            tokens = self._next_tokens(out.logits[:, -1, :], active)
            keep = [j for j, (row, tok) in enumerate(zip(active, tokens, strict=True)) if not self._finished(row, tok)]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                active = [active[j] for j in keep]
                tokens = [tokens[j] for j in keep]
            step = torch.tensor(tokens, device=self.device).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=step, attention_mask=mask, position_ids=positions,
                             past_key_values=cache, use_cache=True)
        for row in rows:
            text = self.tokenizer.decode(row.out)
            if row.params.stop:
                text, found = cut_at_stop(text, row.params.stop)
                if found:
                    row.finish = "stop"
            row.text = text
