"""Token choice for the transformers engine's decoding loop, batched on the device, and its
prompt-lookup drafts.

The repetition penalty comes from a per-row mask of seen tokens; sampling is by inverse CDF over
each row's (top-p) distribution at a uniform number that is a hash of the row's seed and the
token's index. So a row's tokens depend on its own seed only, a step costs one host sync for the
whole batch, and a sampled token does not depend on how many tokens were decoded in one forward.

Prompt lookup (``speculative=ngram``): each row drafts up to k tokens that followed the latest
earlier occurrence of its longest suffix n-gram in its prompt and output (:class:`NgramDrafter`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_ipt.synth.engine_types import SamplingParams


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


class RowSampler:
    """The sampling settings of a decoding batch's rows as device tensors, with the mask of tokens
    each row has seen (prompt and output) when any row has a repetition penalty. Rows leave with
    :meth:`select`; a row's pad token is its prompt's first, which it has seen anyway."""

    def __init__(self, params: Sequence[SamplingParams], seeds: Sequence[int], prompts: Sequence[list[int]],
                 vocab: int, device: torch.device) -> None:
        self.device, self.vocab = device, vocab
        self.penalty = torch.tensor([p.repetition_penalty for p in params], device=device)
        self.greedy = torch.tensor([p.greedy for p in params], device=device)
        self.temperature = torch.tensor([1.0 if p.greedy else p.temperature for p in params], device=device)
        self.top_p = torch.tensor([p.top_p for p in params], device=device)
        self.seeds = torch.tensor(list(seeds), dtype=torch.long, device=device)
        self.all_greedy = [p.greedy for p in params]  # on the host: an all-greedy batch needs no draw
        self.pads = [prompt[0] for prompt in prompts]
        self.seen: torch.Tensor | None = None
        if any(p.repetition_penalty != 1.0 for p in params):
            longest = max(len(prompt) for prompt in prompts)
            ids = torch.tensor([prompt + [prompt[0]] * (longest - len(prompt)) for prompt in prompts], device=device)
            self.seen = torch.zeros((len(prompts), vocab), dtype=torch.bool, device=device).scatter_(1, ids, True)

    def _padded(self, tokens: Sequence[list[int]], width: int) -> torch.Tensor:
        return torch.tensor([t + [pad] * (width - len(t)) for t, pad in zip(tokens, self.pads, strict=True)],
                            device=self.device)

    def choose(self, logits: torch.Tensor, drafts: Sequence[list[int]], lengths: Sequence[int]) -> list[list[int]]:
        """The token each row chooses at each fed position (``logits [N, fed, V]``; position t > 0 follows
        the row's first t drafts, ``lengths``: the rows' output tokens so far). One host sync."""
        n, fed, vocab = logits.shape
        seen_at = None
        if self.seen is not None and fed > 1:
            # Position t's penalty covers the drafts before it: they are its output if accepted.
            ahead = torch.zeros((n, fed, vocab), dtype=torch.uint8, device=self.device)
            ahead[:, 1:].scatter_(2, self._padded(drafts, fed - 1).unsqueeze(2), 1)
            seen_at = ahead.cummax(dim=1).values.bool() | self.seen.unsqueeze(1)
        elif self.seen is not None:
            seen_at = self.seen.unsqueeze(1)
        steps = torch.tensor(list(lengths), device=self.device).unsqueeze(1) + torch.arange(fed, device=self.device)
        chosen = choose_tokens(
            logits.reshape(n * fed, vocab),
            None if seen_at is None else seen_at.expand(n, fed, vocab).reshape(n * fed, vocab),
            *(t.repeat_interleave(fed) for t in (self.penalty, self.greedy, self.temperature, self.top_p, self.seeds)),
            steps.reshape(-1), sample=not all(self.all_greedy),
        )
        return chosen.view(n, fed).tolist()

    def note(self, emitted: Sequence[list[int]]) -> None:
        """Mark the tokens each row emitted as seen."""
        if self.seen is not None:
            self.seen.scatter_(1, self._padded(emitted, max(map(len, emitted))), True)

    def select(self, keep: list[int]) -> None:
        """Keep only the rows ``keep`` (in that order)."""
        index = torch.tensor(keep, device=self.device)
        self.penalty, self.greedy, self.temperature, self.top_p, self.seeds = (
            t[index] for t in (self.penalty, self.greedy, self.temperature, self.top_p, self.seeds))
        self.seen = None if self.seen is None else self.seen[index]
        self.all_greedy = [self.all_greedy[j] for j in keep]
        self.pads = [self.pads[j] for j in keep]


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
