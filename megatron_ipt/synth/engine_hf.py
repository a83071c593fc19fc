"""The transformers generation engine: CPU or GPU, batched with left padding, KV cache.

Its own decoding loop (rather than ``model.generate``) so that each row has its own seed, stop
strings and token limit, and finished rows leave the batch (their cache is dropped) at once.
Rows are grouped into batches by length in a fixed order, so a given set of prompts always
decodes in the same batches: greedy output is reproducible run to run.

Token choice runs batched on the device: the repetition penalty from a per-row mask of seen
tokens, sampling by inverse CDF over each row's (top-p) distribution at a uniform number that is a
hash of the row's seed and the token's index. So a row's tokens depend on its own seed only, a
step costs one host sync for the whole batch, and a sampled token does not depend on how many
tokens were decoded in one forward.

Speculation (``speculative=ngram``, prompt lookup): each row drafts up to k tokens that followed
the latest earlier occurrence of its longest suffix n-gram in its prompt and output; one forward
verifies every row's drafts; a row keeps the drafts that equal the tokens it would choose itself,
plus the token chosen after them. Its cache tail is realigned so that the rejected positions are
masked holes, and the common tail is cropped: every row's cache holds exactly what it fed. Greedy
and sampled outputs are the same as without speculation (up to floating-point reduction order).

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

from megatron_ipt.config import resolve_dtype
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress
from megatron_ipt.synth.engine_types import (
    EngineSettings,
    Generation,
    SamplingParams,
    check_prompt_lengths,
    cut_at_stop,
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


_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (int64 tensors holding values below 2**32); products wrap, masked back."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniform(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """A number in (0, 1) for each (seed, token index): the same on any batch, any device (float64)."""
    h = _hash32((seeds >> 32) & _MASK32 ^ _hash32(steps & _MASK32))
    h = _hash32((seeds & _MASK32) ^ h)
    return (h.double() + 0.5) / 2.0**32


def choose_tokens(logits: torch.Tensor, seen: torch.Tensor | None, penalty: torch.Tensor, greedy: torch.Tensor,
                  temperature: torch.Tensor, top_p: torch.Tensor, seeds: torch.Tensor,
                  steps: torch.Tensor, sample: bool = True) -> torch.Tensor:
    """The next token of each row, batched: ``logits [N, V]``, ``seen [N, V]`` (tokens the CTRL-style
    ``penalty [N]`` applies to; None: none), ``greedy [N]``, ``temperature``/``top_p [N]``, the rows'
    ``seeds`` and the index of the token each row chooses (``steps [N]``); ``sample`` False: every row
    is greedy (told by the host, so that no device sync asks)."""
    logits = logits.float()
    if seen is not None:
        pen = penalty.unsqueeze(1)
        logits = torch.where(seen, torch.where(logits > 0, logits / pen, logits * pen), logits)
    best = logits.argmax(dim=-1)
    if not sample:
        return best
    probs = torch.softmax(logits / temperature.unsqueeze(1), dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    # Keep the smallest nucleus whose mass reaches top_p (top_p 1 keeps every token).
    sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p > top_p.unsqueeze(1), 0.0)
    cdf = sorted_p.double().cumsum(-1)
    # target < the total mass, so the first entry whose cdf passes it has mass: a dropped token is never picked.
    target = (uniform(seeds, steps) * cdf[:, -1]).unsqueeze(1)
    pick = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[1] - 1)
    sampled = order.gather(1, pick).squeeze(1)
    return torch.where(greedy, best, sampled)


class NgramDrafter:
    """Prompt-lookup drafts for one sequence: the tokens that followed the latest earlier occurrence
    of its longest suffix n-gram (``lookup_max`` down to ``lookup_min`` tokens).

    Written here because transformers' prompt lookup runs only inside ``generate`` at batch size 1.
    """

    def __init__(self, tokens: Sequence[int], lookup_min: int, lookup_max: int) -> None:
        self.seq: list[int] = []
        self.lo, self.hi = lookup_min, lookup_max
        self.follows: list[dict[tuple[int, ...], int]] = [{} for _ in range(lookup_max + 1)]
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        seq = self.seq
        for t in tokens:
            m = len(seq)  # the n-grams ending just before position m are followed by the new token
            seq.append(int(t))
            for n in range(self.lo, min(self.hi, m) + 1):
                self.follows[n][tuple(seq[m - n : m])] = m

    def draft(self, k: int) -> list[int]:
        seq = self.seq
        for n in range(min(self.hi, len(seq)), self.lo - 1, -1):
            m = self.follows[n].get(tuple(seq[len(seq) - n :]))
            if m is not None:
                return seq[m : m + k]
        return []


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
            _Row(i, k, list(map(int, ids)), p)
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
        device = self.device
        out, mask, positions = self._prefill(rows)
        cache = out[self._cache_arg]
        logits = out.logits[:, -1:, :]
        active = list(rows)
        # [B]: position of each row's last fed token; a step's kept tokens move it on (prefill kept one).
        next_pos = positions[:, -1]
        penalty = torch.tensor([r.params.repetition_penalty for r in rows], device=device)
        greedy = torch.tensor([r.params.greedy for r in rows], device=device)
        temperature = torch.tensor([r.params.temperature if not r.params.greedy else 1.0 for r in rows], device=device)
        top_p = torch.tensor([r.params.top_p for r in rows], device=device)
        seeds = torch.tensor([r.seed for r in rows], dtype=torch.long, device=device)
        vocab = logits.shape[-1]
        seen = None
        if any(r.params.repetition_penalty != 1.0 for r in rows):
            # Pads repeat the row's first token, which is in its prompt anyway.
            longest = max(len(r.prompt) for r in rows)
            ids = torch.tensor([r.prompt + [r.prompt[0]] * (longest - len(r.prompt)) for r in rows], device=device)
            seen = torch.zeros((len(rows), vocab), dtype=torch.bool, device=device).scatter_(1, ids, True)
        if self.draft_tokens and not all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers):
            # Realigning rows' tails rewrites the layers' tensors: only plain growing layers allow it.
            log.info("speculation off: the model's KV cache has %s layers", type(cache.layers[0]).__name__)
            self.draft_tokens = 0
        if self.draft_tokens:
            for r in rows:
                r.drafter = NgramDrafter(r.prompt, *self.lookup)
        drafts: list[list[int]] = [[] for _ in rows]
        while True:
            fed = logits.shape[1]
            n = len(active)
            if seen is not None and fed > 1:
                # Position t's penalty covers the drafts before it: they are its output if accepted.
                pads = [d + [active[j].prompt[0]] * (fed - 1 - len(d)) for j, d in enumerate(drafts)]
                ahead = torch.zeros((n, fed, vocab), dtype=torch.uint8, device=device)
                ahead[:, 1:].scatter_(2, torch.tensor(pads, device=device).unsqueeze(2), 1)
                seen_at = ahead.cummax(dim=1).values.bool() | seen.unsqueeze(1)
            else:
                seen_at = None if seen is None else seen.unsqueeze(1)
            lengths = torch.tensor([len(r.out) for r in active], device=device)
            steps = lengths.unsqueeze(1) + torch.arange(fed, device=device)
            chosen = choose_tokens(
                logits.reshape(n * fed, vocab), None if seen_at is None else seen_at.expand(n, fed, vocab).reshape(n * fed, vocab),
                penalty.repeat_interleave(fed), greedy.repeat_interleave(fed), temperature.repeat_interleave(fed),
                top_p.repeat_interleave(fed), seeds.repeat_interleave(fed), steps.reshape(-1),
                sample=not all(r.params.greedy for r in active),
            ).view(n, fed).tolist()  # the step's one host sync
            emitted: list[list[int]] = []
            for d, c in zip(drafts, chosen, strict=True):
                a = 0
                while a < len(d) and d[a] == c[a]:
                    a += 1
                emitted.append(c[: a + 1])
                self.accepted_tokens += a
            if fed > 1:
                mask = self._realign_tail(cache, mask, fed, [len(e) for e in emitted])
            next_pos = next_pos + torch.tensor([len(e) for e in emitted], device=device)
            keep = []
            for j, (row, toks) in enumerate(zip(active, emitted, strict=True)):
                done = False
                for t in toks:
                    if self._finished(row, t):
                        done = True
                        break
                if done:
                    self._keep_prefix(row, cache, j, mask)
                else:
                    keep.append(j)
            if not keep:
                break
            if seen is not None:
                appended = [e + [active[j].prompt[0]] * (fed - len(e)) for j, e in enumerate(emitted)]
                seen.scatter_(1, torch.tensor(appended, device=device), True)
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                penalty, greedy, temperature, top_p, seeds = (t[index] for t in (penalty, greedy, temperature, top_p, seeds))
                seen = None if seen is None else seen[index]
                active = [active[j] for j in keep]
                emitted = [emitted[j] for j in keep]
            drafts = []
            for row, e in zip(active, emitted, strict=True):
                if row.drafter is None:
                    drafts.append([])
                    continue
                row.drafter.extend(e)
                # Never draft past the row's token limit: it would be cut anyway.
                drafts.append(row.drafter.draft(min(self.draft_tokens, row.params.max_new_tokens - len(row.out) - 1)))
            width = 1 + max(len(d) for d in drafts)
            self.drafted_tokens += sum(len(d) for d in drafts)
            step = torch.tensor([[e[-1], *d] + [row.prompt[0]] * (width - 1 - len(d))
                                 for row, e, d in zip(active, emitted, drafts, strict=True)], device=device)
            mask = torch.cat([mask, mask.new_ones((len(active), width))], dim=1)
            positions = next_pos.unsqueeze(1) + torch.arange(width, device=device)
            out = self._forward(step, mask, positions, cache)
            self.decode_steps += 1
            logits = out.logits
        for row in rows:
            text = self.tokenizer.decode(row.out)
            if row.params.stop:
                text, found = cut_at_stop(text, row.params.stop)
                if found:
                    row.finish = "stop"
            row.text = text
