"""Prefix reuse for the transformers engine: the KV caches of finished sequences (a prompt and the
output fed back), kept up to a token budget, least recently used evicted first. A later prompt
that starts with a kept sequence (M-shot round r+1 extends round r's prompt) prefills only its new
tokens over that cache."""

from __future__ import annotations

from collections import OrderedDict

import torch

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
