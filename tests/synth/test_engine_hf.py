"""The transformers engine's decode loop: batched token choice against its per-row form, prompt-lookup
drafts, speculation that changes no token (a tiny model and the real SmolLM2), and batch sizing."""

from __future__ import annotations

import pytest
import torch

from megatron_ipt.synth.engine_hf import (
    CPU_BATCH,
    HFEngine,
    NgramDrafter,
    auto_batch_size,
    choose_tokens,
    kv_bytes_per_token,
    prefill_bytes_per_token,
    sample_seed,
    uniform,
)
from megatron_ipt.synth.engine_types import SamplingParams
from megatron_ipt.synth.engine_vllm import speculative_kwargs
from megatron_ipt.synth.engines import EngineConfig


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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, save_tiny_llama, mistral_tokenizer):
    path = save_tiny_llama(tmp_path_factory.mktemp("tiny_spec"), hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512)
    return EngineConfig(kind="hf", model=str(path), tokenizer="mistral", speculative="off").build()


def engines(base: HFEngine, batch_size: int = 3, **kw) -> tuple[HFEngine, HFEngine]:
    cfg = dict(model="given", batch_size=batch_size, device="cpu", **kw)
    return (HFEngine(EngineConfig(speculative="off", **cfg), tokenizer=base.tokenizer, model=base.model),
            HFEngine(EngineConfig(speculative="ngram", speculative_tokens=4, lookup_min=1, **cfg),
                     tokenizer=base.tokenizer, model=base.model))


def test_speculation_changes_no_token_on_a_tiny_model(tiny, mistral_tokenizer):
    """Greedy (with and without the penalty), sampled, stop strings, per-row limits and prefix reuse:
    the same tokens with and without speculation, and drafts were really accepted."""
    tok = mistral_tokenizer
    texts = ["The heart pumps blood through the body and the body needs the heart.", "Cells divide.",
             "A B C D A B C D A B C D", "Protein 7 binds receptor 7; protein 8 binds receptor 8; protein 9"]
    prompts = [[tok.bos_id, *tok.encode(t)] for t in texts]
    plain, spec = engines(tiny, prefix_cache_tokens=4096)
    cases = [SamplingParams(max_new_tokens=24), SamplingParams(max_new_tokens=24, repetition_penalty=1.2),
             SamplingParams(max_new_tokens=20, temperature=0.9, top_p=0.9, n=2, seed=5, repetition_penalty=1.1),
             [SamplingParams(max_new_tokens=k) for k in (3, 24, 9, 17)]]
    for params in cases:
        a, b = plain.generate(prompts, params), spec.generate(prompts, params)
        assert [[g.token_ids for g in r] for r in a] == [[g.token_ids for g in r] for r in b]
        assert [[g.finish_reason for g in r] for r in a] == [[g.finish_reason for g in r] for r in b]
    assert spec.decode_steps < plain.decode_steps  # fewer forwards for the same tokens
    free = plain.generate(prompts[:1], SamplingParams(max_new_tokens=24))[0][0]
    stop = free.text.split()[len(free.text.split()) // 2]
    cut = SamplingParams(max_new_tokens=24, stop=(stop,))
    assert spec.generate(prompts[:1], cut)[0][0] == plain.generate(prompts[:1], cut)[0][0]
    # The next round extends the prompts with their outputs: reused prefixes under speculation too.
    out = plain.generate(prompts, cases[0])
    second = [p + g[0].token_ids + tok.encode(" Next text: the liver.") for p, g in zip(prompts, out, strict=True)]
    a, b = plain.generate(second, cases[0]), spec.generate(second, cases[0])
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
    assert [g[0].cached_tokens for g in b] == [g[0].cached_tokens for g in a] and b[0][0].cached_tokens > 0
    assert spec.drafted_tokens > 0 and 0 < spec.accepted_tokens <= spec.drafted_tokens
    assert plain.drafted_tokens == 0


def test_speculation_changes_no_token_of_the_real_smollm2(smollm2_dir):
    """SmolLM2-135M-Instruct on synthesizer prompts (a one-shot chain of real PubMed abstracts), greedy
    with the demo's repetition penalty and without it, and a pattern it continues (drafts accepted):
    token for token what decoding without speculation gives."""
    from megatron_ipt.pairs import Pair
    from megatron_ipt.synth.rounds import build_prompt_ids
    from megatron_ipt.tokenizer import load_tokenizer
    from megatron_ipt.tuning.pubmed import iter_pubmed_records

    tok = load_tokenizer(smollm2_dir)
    records = list(iter_pubmed_records(limit=4))
    shot = (f"{records[0].title}\n{records[0].abstract}", [Pair("What was the objective of the study?",
                                                               records[0].title)])
    prompts = [build_prompt_ids(tok, [shot], f"{r.title}\n{r.abstract}")[-600:] for r in records[1:]]
    prompts.append([tok.bos_id, *tok.encode("Monday, Tuesday, Wednesday, Monday, Tuesday, Wednesday, Monday,")])
    base = EngineConfig(kind="hf", model=str(smollm2_dir), speculative="off", device="cpu").build(tokenizer=tok)
    plain, spec = engines(base, batch_size=4, prefix_cache_tokens=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for penalty in (1.2, 1.0):
            params = SamplingParams(max_new_tokens=32, repetition_penalty=penalty, stop=("<CON>", "</CON>"))
            a, b = plain.generate(prompts, params), spec.generate(prompts, params)
            assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
            assert [g[0].text for g in a] == [g[0].text for g in b] and sum(len(g[0].token_ids) for g in a) > 30
    finally:
        torch.set_num_threads(threads)
    assert spec.accepted_tokens > 0 and spec.decode_steps < plain.decode_steps


def test_batch_size_auto_and_loading(tiny):
    assert tiny.batch_size == CPU_BATCH  # auto on CPU
    auto = HFEngine(EngineConfig(model="given", device="cpu"), tokenizer=tiny.tokenizer, model=tiny.model)
    assert auto.speculative == "off" and auto.draft_tokens == 0  # auto: off on CPU, where rejected drafts cost
    assert next(tiny.model.parameters()).device.type == "cpu"
    per_token = kv_bytes_per_token(tiny.model.config, torch.float32)
    assert per_token == 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 KV heads of 16 dims, 4 bytes
    assert prefill_bytes_per_token(tiny.model.config, torch.bfloat16) == (3 * 128 + 4 * 64) * 2
    small = auto_batch_size(2**30, per_token, 32_000, 2048, 4, 0)
    assert 1 <= small < auto_batch_size(2**33, per_token, 32_000, 2048, 4, 0) == 256  # more memory, more rows
    assert auto_batch_size(2**30, per_token, 32_000, 4096, 4, 0) < small  # longer sequences, fewer rows
    assert auto_batch_size(2**20, per_token, 32_000, 4096, 4, 10**6) == 1  # never below one
    with pytest.raises(ValueError, match="batch_size must be auto"):
        EngineConfig(model="m", batch_size="big").validate()
    cli = EngineConfig(model="m", batch_size="16")  # the command line keeps an int | str value as text
    cli.validate()
    assert cli.batch_size == 16
    with pytest.raises(ValueError, match="engine.speculative must be one of"):
        EngineConfig(model="m", speculative="eagle").validate()
    with pytest.raises(ValueError, match="lookup_min"):
        EngineConfig(model="m", lookup_min=5, lookup_max=3).validate()


def test_vllm_speculative_config_for_each_vllm_spelling():
    cfg = EngineConfig(model="m", speculative_tokens=5, lookup_min=2, lookup_max=4)
    sizes = {"num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    assert speculative_kwargs(cfg, "0.11.0") == {"speculative_config": {"method": "ngram", **sizes}}
    assert speculative_kwargs(cfg, "0.9.2") == {"speculative_config": {"method": "ngram", **sizes}}
    assert speculative_kwargs(cfg, "0.8.5.post1") == {"speculative_config": {"model": "[ngram]", **sizes}}
    assert speculative_kwargs(cfg, "0.6.3") == {"speculative_model": "[ngram]", "num_speculative_tokens": 5,
                                                "ngram_prompt_lookup_max": 4, "ngram_prompt_lookup_min": 2}
    assert speculative_kwargs(cfg, "0.5.1") == {}
    assert speculative_kwargs(EngineConfig(model="m", speculative="off"), "0.11.0") == {}
    assert speculative_kwargs(EngineConfig(model="m"), "0.11.0")["speculative_config"]["method"] == "ngram"  # auto: on
