"""Token choice for the decoding loop: batched choice against its per-row form, the sampled
distribution and top-p, and prompt-lookup drafts."""

from __future__ import annotations

import torch

from megatron_ipt.synth.decode import NgramDrafter, choose_tokens, sample_seed, uniform
from megatron_ipt.synth.engine_types import SamplingParams


def choose_one_row(logits: torch.Tensor, seen: set[int], params: SamplingParams, seed: int, step: int) -> int:
    """The per-row reference: a Python set of seen tokens, one row's softmax, sort and draw."""
    logits = logits.float().clone()
    if params.repetition_penalty != 1.0 and seen:
        idx = torch.tensor(sorted(seen))
        picked = logits[idx]
        logits[idx] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if params.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    sorted_p, order = probs.sort(descending=True, stable=True)
    sorted_p[sorted_p.cumsum(-1) - sorted_p > params.top_p] = 0.0
    cdf = sorted_p.double().cumsum(-1)
    u = float(uniform(torch.tensor([seed]), torch.tensor([step]))[0])
    return int(order[min(int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=torch.float64),
                                                    right=True)), len(cdf) - 1)])


def test_batched_choice_matches_the_per_row_form():
    gen = torch.Generator().manual_seed(0)
    n, vocab = 48, 300
    logits = torch.randn(n, vocab, generator=gen) * 3
    params = [SamplingParams(temperature=[0.0, 0.7, 1.0, 1.3][i % 4], top_p=[1.0, 0.9, 0.5][i % 3],
                             repetition_penalty=[1.0, 1.2, 2.0][i % 3], seed=i) for i in range(n)]
    seen_sets = [set(torch.randint(0, vocab, (i % 7 * 10,), generator=gen).tolist()) for i in range(n)]
    seeds = [sample_seed(p.seed, i % 2) for i, p in enumerate(params)]
    steps = [i * 3 % 17 for i in range(n)]
    seen = torch.zeros(n, vocab, dtype=torch.bool)
    for j, s in enumerate(seen_sets):
        seen[j, sorted(s)] = True
    got = choose_tokens(logits, seen, torch.tensor([p.repetition_penalty for p in params]),
                        torch.tensor([p.greedy for p in params]),
                        torch.tensor([p.temperature or 1.0 for p in params]), torch.tensor([p.top_p for p in params]),
                        torch.tensor(seeds), torch.tensor(steps)).tolist()
    expected = [choose_one_row(logits[j], seen_sets[j], params[j], seeds[j], steps[j]) for j in range(n)]
    assert got == expected
    assert len(set(got)) > n // 2  # sampled rows really differ


def test_sampling_draws_from_the_distribution_and_respects_top_p():
    """20,000 token indices of one seed: frequencies follow the softmax; top-p's tail is never drawn."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 20_000
    rows = logits.expand(n, -1)
    ones = torch.ones(n)
    draw = choose_tokens(rows, None, ones, torch.zeros(n, dtype=torch.bool), ones, ones,
                         torch.full((n,), 123), torch.arange(n))
    freq = torch.bincount(draw, minlength=6).double() / n
    probs = torch.softmax(logits, -1).double()
    assert (freq - probs).abs().max() < 4 * (probs * (1 - probs) / n).sqrt().max()  # within four sigma
    nucleus = choose_tokens(rows, None, ones, torch.zeros(n, dtype=torch.bool), ones, torch.full((n,), 0.8),
                            torch.full((n,), 123), torch.arange(n))
    assert set(nucleus.tolist()) == {0, 1, 2}  # 0.56 + 0.21 < 0.8 <= + 0.13: the third is the last kept
    other_seed = choose_tokens(rows[:200], None, ones[:200], torch.zeros(200, dtype=torch.bool), ones[:200],
                               ones[:200], torch.full((200,), 124), torch.arange(200))
    assert other_seed.tolist() != draw[:200].tolist()


def test_ngram_drafter_copies_what_followed_the_longest_latest_match():
    d = NgramDrafter([5, 6, 7, 8, 9, 1, 6, 7, 2, 3], lookup_min=1, lookup_max=3)
    assert d.draft(3) == []  # 3 never occurred before the end
    d.extend([6, 7])  # "6 7" occurred twice: the latest one was followed by 2 3 ...
    assert d.draft(3) == [2, 3, 6]
    d.extend([8])  # the longest match wins: "6 7 8", at the start
    assert d.draft(4) == [9, 1, 6, 7]
    assert d.draft(0) == [] and NgramDrafter([1], 2, 4).draft(3) == []
    loop = NgramDrafter([4, 4, 4], lookup_min=2, lookup_max=2)
    assert loop.draft(5) == [4]  # a draft stops at the end of what exists
