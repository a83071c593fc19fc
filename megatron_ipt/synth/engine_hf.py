"""The transformers generation engine: CPU or GPU, batched with left padding, KV cache.

Its own decoding loop (rather than ``model.generate``) so that each row has its own seed, stop
strings and token limit, and finished rows leave the batch (their cache is dropped) at once.
Rows are grouped into batches by length in a fixed order, so a given set of prompts always
decodes in the same batches: greedy output is reproducible run to run. Token choice is batched on
the device (:mod:`megatron_ipt.synth.decode`).

Speculation (``speculative=ngram``, prompt lookup): each row drafts up to k tokens
(:class:`~megatron_ipt.synth.decode.NgramDrafter`); one forward verifies every row's drafts; a row
keeps the drafts that equal the tokens it would choose itself, plus the token chosen after them.
Its cache tail is realigned so that the rejected positions are masked holes, and the common tail is
cropped: every row's cache holds exactly what it fed. Greedy and sampled outputs are the same as
without speculation (up to floating-point reduction order).

Prefix reuse (:mod:`megatron_ipt.synth.prefix_cache`): rows with cached prefixes of different
lengths share a batch: each row's cache is left-padded to the longest, its new tokens left-padded
after it, and the attention mask and explicit position ids make the padding invisible, so the
result equals a full prefill.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence

import torch

from megatron_ipt.config import resolve_dtype
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress
from megatron_ipt.synth.decode import NgramDrafter, RowSampler, sample_seed
from megatron_ipt.synth.engine_types import (
    EngineSettings,
    Generation,
    SamplingParams,
    cut_at_stop,
    eos_ids,
    prepare_requests,
    resolve_tokenizer,
)
from megatron_ipt.synth.prefix_cache import PrefixStore
from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)

class _Row:
    __slots__ = ("prompt_index", "sample_index", "prompt", "params", "seed", "out", "finish", "text",
                 "cached", "drafter")

    def __init__(self, prompt_index: int, sample_index: int, prompt: list[int], params: SamplingParams) -> None:
        self.prompt_index, self.sample_index = prompt_index, sample_index
        self.prompt, self.params = prompt, params
        self.seed = sample_seed(params.seed, sample_index)
        self.out: list[int] = []
        self.finish: str | None = None
        self.text = ""
        self.cached = 0  # prompt tokens whose KV came from the prefix store
        self.drafter: NgramDrafter | None = None


CPU_BATCH = 8  # batch_size auto on CPU: decoding there is compute-bound, larger batches gain little
MAX_AUTO_BATCH = 256
AUTO_MEMORY_SHARE = 0.7  # of the free device memory after the weights, for KV caches and activations


def kv_bytes_per_token(model_config, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes across all layers."""
    heads = getattr(model_config, "num_attention_heads", 1)
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return 2 * model_config.num_hidden_layers * kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()


def prefill_bytes_per_token(model_config, dtype: torch.dtype) -> int:
    """Transient activation bytes per prefilled token in one layer (MLP gate, up and product; attention
    in and out), which a batch prefilled at once needs on top of its KV caches."""
    inter = getattr(model_config, "intermediate_size", None) or 4 * model_config.hidden_size
    return (3 * inter + 4 * model_config.hidden_size) * torch.tensor([], dtype=dtype).element_size()


def auto_batch_size(free_bytes: int, per_token: int, vocab: int, max_model_len: int, draft: int,
                    reserved_tokens: int) -> int:
    """Sequences that fit ``AUTO_MEMORY_SHARE`` of ``free_bytes``: each a full-length KV cache (plus
    room for speculation's masked holes), its logits and seen mask; less the prefix store's tokens."""
    per_seq = per_token * (max_model_len + 4 * (draft + 1)) + vocab * (4 * (draft + 1) * 3 + (draft + 1))
    usable = free_bytes * AUTO_MEMORY_SHARE - per_token * reserved_tokens
    return int(max(1, min(MAX_AUTO_BATCH, usable // per_seq)))


class HFEngine:
    """Generation with a transformers causal LM (see :class:`~megatron_ipt.synth.engine_types.Engine`)."""

    def __init__(self, config: EngineSettings, tokenizer: Tokenizer | None = None,
                 model: torch.nn.Module | None = None) -> None:
        """``config`` as built by :meth:`megatron_ipt.synth.engines.EngineConfig.build`; ``model``: an already loaded model to use."""
        from transformers import AutoModelForCausalLM

        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        torch_dtype = resolve_dtype(config.dtype, self.device.type).torch
        if model is None:
            t0 = time.time()
            # Straight onto the device in its dtype: no float32 copy in host memory first.
            model = AutoModelForCausalLM.from_pretrained(str(config.model), dtype=torch_dtype,
                                                         device_map=str(self.device))
            log.info("loaded %s in %.1fs (%s, %s)", config.model, time.time() - t0, torch_dtype, self.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = resolve_tokenizer(config.model, tokenizer or config.tokenizer or None)
        limit = getattr(self.model.config, "max_position_embeddings", None) or config.max_model_len
        self.max_model_len = min(config.max_model_len, limit)
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else 0
        window = getattr(self.model.config, "sliding_window", None)
        reuse = config.prefix_cache_tokens
        if reuse and window is not None and window < self.max_model_len:
            log.info("prefix reuse off: the model's sliding window (%d) is shorter than max_model_len", window)
            reuse = 0
        self.prefix_store = PrefixStore(reuse) if reuse > 0 else None
        self.speculative = config.speculative
        if self.speculative == "auto":
            self.speculative = "ngram" if self.device.type == "cuda" else "off"
        if self.speculative != "off" and window is not None and window < self.max_model_len:
            log.info("speculation off: the model's sliding window (%d) is shorter than max_model_len", window)
            self.speculative = "off"
        self.draft_tokens = config.speculative_tokens if self.speculative == "ngram" else 0
        self.lookup = (config.lookup_min, config.lookup_max)
        self.batch_size = self._batch_size(config.batch_size, reuse)
        # transformers renamed the forward's KV-cache argument from past_key_values to cache (5.2x warns
        # on every call with the old name; 5.17, the GPU machine's, knows only the old one).
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_logits = "logits_to_keep" in params  # prefill computes the last position's logits only
        self.prefilled_tokens = 0  # prompt tokens run through the model (all calls so far)
        self.reused_tokens = 0  # prompt tokens taken from the prefix store instead
        self.decode_steps = 0  # decoding forwards (one per step for the whole batch)
        self.drafted_tokens = 0  # tokens proposed by prompt lookup
        self.accepted_tokens = 0  # of which the model chose the same

    def _batch_size(self, requested: int | str, reserved_tokens: int) -> int:
        if requested != "auto":
            return int(requested)
        if self.device.type != "cuda":
            return CPU_BATCH
        free, _ = torch.cuda.mem_get_info(self.device)
        dtype = next(self.model.parameters()).dtype
        kv = kv_bytes_per_token(self.model.config, dtype)
        per_token = kv + prefill_bytes_per_token(self.model.config, dtype)
        size = auto_batch_size(free, per_token, self.model.config.vocab_size, self.max_model_len, self.draft_tokens,
                               reserved_tokens * kv // per_token)
        log.info("batch_size auto: %d sequences (%.1f GiB free, %d KV + %d prefill bytes per token, max_model_len %d)",
                 size, free / 2**30, kv, per_token - kv, self.max_model_len)
        return size

    def _eos_ids(self) -> set[int]:
        ids = eos_ids(self.tokenizer)
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
        prompt_ids, per_prompt = prepare_requests(prompt_ids, params, self.max_model_len)
        rows = [
            _Row(i, k, ids, p)
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
            results[row.prompt_index].append(Generation(row.text, row.out, row.finish or "length", row.cached))
        return results

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

    def _prefill(self, rows: list[_Row]):
        """Run the rows' prompts (over reused prefixes where kept); returns (output, mask, positions)."""
        reused = [self.prefix_store.longest_prefix(r.prompt) if self.prefix_store else (0, None) for r in rows]
        cached = max(n for n, _ in reused)
        width = max(len(r.prompt) - n for r, (n, _) in zip(rows, reused, strict=True))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), cached + width), dtype=torch.long)
        for j, (r, (n, _)) in enumerate(zip(rows, reused, strict=True)):
            new = r.prompt[n:]
            ids[j, width - len(new) :] = torch.tensor(new)
            mask[j, cached - n : cached] = 1
            mask[j, cached + width - len(new) :] = 1
            r.cached = n
            self.prefilled_tokens += len(new)
            self.reused_tokens += n
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, cached:]
        past = None
        if cached:
            from transformers import DynamicCache

            layers = []
            for layer in range(len(next(kv for _, kv in reused if kv is not None))):
                k0, v0 = next(kv for _, kv in reused if kv is not None)[layer]
                keys = k0.new_zeros((len(rows), k0.shape[0], cached, k0.shape[2]))
                values = v0.new_zeros((len(rows), v0.shape[0], cached, v0.shape[2]))
                for j, (n, kv) in enumerate(reused):
                    if n:
                        keys[j, :, cached - n :] = kv[layer][0]
                        values[j, :, cached - n :] = kv[layer][1]
                layers.append((keys, values))
            past = DynamicCache(ddp_cache_data=layers)
        out = self._forward(ids, mask, positions, past, last_only=True)
        return out, mask, positions

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache, last_only: bool = False):
        """One model call over the KV ``cache`` (None: a fresh one), returning the output with its cache."""
        extra = {"logits_to_keep": 1} if last_only and self._keep_logits else {}
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          **{self._cache_arg: cache}, **extra)

    def _keep_prefix(self, row: _Row, cache, j: int, mask: torch.Tensor) -> None:
        """Store the KV of what row ``j`` fed the model: its prompt and the output tokens fed back."""
        if self.prefix_store is None or row.sample_index != 0:
            return
        fed = row.prompt + (row.out if row.finish == "eos" else row.out[:-1])
        # Its cache may hold accepted drafts past where it stopped: the first len(fed) positions are what it fed.
        where = mask[j].nonzero().squeeze(1)
        if len(where) < len(fed):  # pragma: no cover - a bookkeeping error must not corrupt reuse
            raise RuntimeError(f"KV cache holds {len(where)} positions for {len(fed)} fed tokens")
        where = where[: len(fed)]
        kv = [(layer.keys[j].index_select(1, where), layer.values[j].index_select(1, where)) for layer in cache.layers]
        self.prefix_store.put(fed, kv)

    @staticmethod
    def _realign_tail(cache, mask: torch.Tensor, fed: int, kept: list[int]) -> torch.Tensor:
        """After a forward of ``fed`` tokens per row where row j keeps its first ``kept[j]``: move each
        row's kept positions to the end of a tail ``max(kept)`` wide, mask the holes before them,
        crop the rest. Returns the new attention mask."""
        width = max(kept)
        start = mask.shape[1] - fed
        if width == fed and min(kept) == fed:
            return mask
        kept_t = torch.tensor(kept, device=mask.device).unsqueeze(1)
        w = torch.arange(width, device=mask.device).unsqueeze(0)
        src = (w - (width - kept_t)).clamp(min=0)  # [B, width]: holes read position 0 (masked)
        for layer in cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                index = src[:, None, :, None].expand(t.shape[0], t.shape[1], width, t.shape[3])
                tail = t[:, :, start:].gather(2, index)
                t[:, :, start : start + width] = tail
                setattr(layer, name, t[:, :, : start + width])
        return torch.cat([mask[:, :start], (w >= width - kept_t).to(mask.dtype)], dim=1)

    def _generate_batch(self, rows: list[_Row]) -> None:
        out, mask, positions = self._prefill(rows)
        cache = out[self._cache_arg]
        logits = out.logits[:, -1:, :]
        sampler = RowSampler([r.params for r in rows], [r.seed for r in rows], [r.prompt for r in rows],
                             logits.shape[-1], self.device)
        self._start_drafts(rows, cache)
        active = list(rows)
        # [B]: position of each row's last fed token; a step's kept tokens move it on (prefill kept one).
        next_pos = positions[:, -1]
        drafts: list[list[int]] = [[] for _ in rows]
        while True:
            chosen = sampler.choose(logits, drafts, [len(r.out) for r in active])
            emitted = [self._accepted(d, c) for d, c in zip(drafts, chosen, strict=True)]
            if logits.shape[1] > 1:
                mask = self._realign_tail(cache, mask, logits.shape[1], [len(e) for e in emitted])
            next_pos = next_pos + torch.tensor([len(e) for e in emitted], device=self.device)
            keep = [j for j, (row, toks) in enumerate(zip(active, emitted, strict=True))
                    if not self._take(row, toks, cache, j, mask)]
            if not keep:
                break
            sampler.note(emitted)
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                sampler.select(keep)
                active, emitted = [active[j] for j in keep], [emitted[j] for j in keep]
            drafts = self._next_drafts(active, emitted)
            logits, mask = self._step(active, emitted, drafts, cache, mask, next_pos)
        for row in rows:
            text = self.tokenizer.decode(row.out)
            if row.params.stop:
                text, found = cut_at_stop(text, row.params.stop)
                if found:
                    row.finish = "stop"
            row.text = text

    def _start_drafts(self, rows: list[_Row], cache) -> None:
        """Give each row a prompt-lookup drafter when speculating over this cache."""
        if self.draft_tokens and not all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers):
            # Realigning rows' tails rewrites the layers' tensors: only plain growing layers allow it.
            log.info("speculation off: the model's KV cache has %s layers", type(cache.layers[0]).__name__)
            self.draft_tokens = 0
        if self.draft_tokens:
            for r in rows:
                r.drafter = NgramDrafter(r.prompt, *self.lookup)

    def _accepted(self, draft: list[int], chosen: list[int]) -> list[int]:
        """The tokens a row emits this step: the drafts it would choose itself, then its own next choice."""
        a = 0
        while a < len(draft) and draft[a] == chosen[a]:
            a += 1
        self.accepted_tokens += a
        return chosen[: a + 1]

    def _take(self, row: _Row, tokens: list[int], cache, j: int, mask: torch.Tensor) -> bool:
        """Append ``tokens`` to row ``j`` up to where it finishes; whether it did (its prefix then kept)."""
        for t in tokens:
            if self._finished(row, t):
                self._keep_prefix(row, cache, j, mask)
                return True
        return False

    def _next_drafts(self, rows: list[_Row], emitted: list[list[int]]) -> list[list[int]]:
        drafts = []
        for row, e in zip(rows, emitted, strict=True):
            if row.drafter is None:
                drafts.append([])
                continue
            row.drafter.extend(e)
            # Never draft past the row's token limit: it would be cut anyway.
            drafts.append(row.drafter.draft(min(self.draft_tokens, row.params.max_new_tokens - len(row.out) - 1)))
        self.drafted_tokens += sum(len(d) for d in drafts)
        return drafts

    def _step(self, rows: list[_Row], emitted: list[list[int]], drafts: list[list[int]], cache, mask: torch.Tensor,
              next_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed each row its last chosen token and its drafts (padded to the widest); returns the
        logits and the grown attention mask."""
        width = 1 + max(len(d) for d in drafts)
        step = torch.tensor([[e[-1], *d] + [row.prompt[0]] * (width - 1 - len(d))
                             for row, e, d in zip(rows, emitted, drafts, strict=True)], device=self.device)
        mask = torch.cat([mask, mask.new_ones((len(rows), width))], dim=1)
        positions = next_pos.unsqueeze(1) + torch.arange(width, device=self.device)
        out = self._forward(step, mask, positions, cache)
        self.decode_steps += 1
        return out.logits, mask
