"""The transformers generation engine: CPU or GPU, batched with left padding, KV cache.

Its own decoding loop (rather than ``model.generate``) so that each row has its own seed, stop
strings and token limit, and finished rows leave the batch (their cache is dropped) at once.
Rows are grouped into batches by length in a fixed order, so a given set of prompts always
decodes in the same batches: greedy output is reproducible run to run.

Prefix reuse: the KV cache of each finished sequence (its prompt and the output fed back) is kept,
up to ``prefix_cache_tokens`` tokens, least recently used evicted first. A later prompt that
starts with a kept sequence (M-shot round r+1 extends round r's prompt) prefills only its new
tokens over that cache. Rows with cached prefixes of different lengths share a batch: each row's
cache is left-padded to the longest, its new tokens left-padded after it, and the attention mask
and explicit position ids make the padding invisible, so the result equals a full prefill.
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from collections.abc import Sequence

import torch

from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress
from megatron_ipt.synth.engine_types import (
    EngineSettings,
    Generation,
    SamplingParams,
    check_prompt_lengths,
    cut_at_stop,
    normalize_dtype,
    per_prompt_params,
    resolve_tokenizer,
)
from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)



PREFIX_KEY_TOKENS = 16  # kept sequences are indexed by their first tokens (BOS + the start of a text)
MIN_REUSE_TOKENS = 8  # shorter shared prefixes are cheaper to prefill again than to copy


class PrefixStore:
    """KV caches of finished sequences, bounded by a token budget, for reuse by later prompts."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._seqs: OrderedDict[int, tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]] = OrderedDict()
        self._by_key: dict[tuple[int, ...], set[int]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._seqs)

    def put(self, seq: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep ``kv`` (per layer ``(keys, values)`` of shape ``[heads, len(seq), dim]``) for ``seq``."""
        if len(seq) < PREFIX_KEY_TOKENS or len(seq) > self.max_tokens:
            return
        key = tuple(seq[:PREFIX_KEY_TOKENS])
        handle = self._next
        self._next += 1
        self._seqs[handle] = (torch.tensor(seq), kv)
        self._by_key.setdefault(key, set()).add(handle)
        self.tokens += len(seq)
        while self.tokens > self.max_tokens:
            self._drop(next(iter(self._seqs)))

    def _drop(self, handle: int) -> None:
        seq, _ = self._seqs.pop(handle)
        self.tokens -= len(seq)
        key = tuple(seq[:PREFIX_KEY_TOKENS].tolist())
        self._by_key[key].discard(handle)
        if not self._by_key[key]:
            del self._by_key[key]

    def longest_prefix(self, prompt: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest kept prefix of ``prompt`` (at most ``len(prompt) - 1`` tokens, so at least one
        token is left to compute logits from) and its KV; ``(0, None)`` when none is worth reusing."""
        if len(prompt) <= PREFIX_KEY_TOKENS:
            return 0, None
        best, best_len = None, 0
        target = torch.tensor(prompt)
        for handle in self._by_key.get(tuple(prompt[:PREFIX_KEY_TOKENS]), ()):
            seq, _ = self._seqs[handle]
            n = min(len(seq), len(prompt) - 1)
            differ = (seq[:n] != target[:n]).nonzero()
            common = int(differ[0]) if len(differ) else n
            if common > best_len:
                best, best_len = handle, common
        if best is None or best_len < MIN_REUSE_TOKENS:
            return 0, None
        self._seqs.move_to_end(best)
        kv = self._seqs[best][1]
        return best_len, [(k[:, :best_len], v[:, :best_len]) for k, v in kv]


def sample_seed(seed: int, sample_index: int) -> int:
    """A distinct, reproducible seed for the ``sample_index``-th sample of a prompt."""
    return (seed * 1_000_003 + sample_index) % (2**63 - 1)


class _Row:
    __slots__ = ("prompt_index", "sample_index", "prompt", "params", "generator", "out", "finish", "text",
                 "cached")

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
        self.cached = 0  # prompt tokens whose KV came from the prefix store


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
        window = getattr(self.model.config, "sliding_window", None)
        reuse = config.prefix_cache_tokens
        if reuse and window is not None and window < self.max_model_len:
            log.info("prefix reuse off: the model's sliding window (%d) is shorter than max_model_len", window)
            reuse = 0
        self.prefix_store = PrefixStore(reuse) if reuse > 0 else None
        # transformers renamed the forward's KV-cache argument from past_key_values to cache (5.2x warns
        # on every call with the old name; 5.17, the GPU machine's, knows only the old one).
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"
        self.prefilled_tokens = 0  # prompt tokens run through the model (all calls so far)
        self.reused_tokens = 0  # prompt tokens taken from the prefix store instead

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
            results[row.prompt_index].append(Generation(row.text, row.out, row.finish or "length", row.cached))
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
        out = self._forward(ids, mask, positions, past)
        return out, mask, positions

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache):
        """One model call over the KV ``cache`` (None: a fresh one), returning the output with its cache."""
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          **{self._cache_arg: cache})

    def _keep_prefix(self, row: _Row, cache, j: int, mask: torch.Tensor) -> None:
        """Store the KV of what row ``j`` fed the model: its prompt and the output tokens fed back."""
        if self.prefix_store is None or row.sample_index != 0:
            return
        fed = row.prompt + (row.out if row.finish == "eos" else row.out[:-1])
        where = mask[j].nonzero().squeeze(1)
        if len(where) != len(fed):  # pragma: no cover - a bookkeeping error must not corrupt reuse
            raise RuntimeError(f"KV cache holds {len(where)} positions for {len(fed)} fed tokens")
        kv = [(layer.keys[j].index_select(1, where), layer.values[j].index_select(1, where)) for layer in cache.layers]
        self.prefix_store.put(fed, kv)

    def _generate_batch(self, rows: list[_Row]) -> None:
        out, mask, positions = self._prefill(rows)
        cache = out[self._cache_arg]
        active = list(rows)
        while True:
            tokens = self._next_tokens(out.logits[:, -1, :], active)
            keep = []
            for j, (row, tok) in enumerate(zip(active, tokens, strict=True)):
                if self._finished(row, tok):
                    self._keep_prefix(row, cache, j, mask)
                else:
                    keep.append(j)
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
            out = self._forward(step, mask, positions, cache)
        for row in rows:
            text = self.tokenizer.decode(row.out)
            if row.params.stop:
                text, found = cut_at_stop(text, row.params.stop)
                if found:
                    row.finish = "stop"
            row.text = text
