"""The generation engine interface and the transformers engine, on a tiny random model."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from megatron_ipt.synth.engine_hf import HFEngine
from megatron_ipt.synth.engine_types import Engine, SamplingParams, cut_at_stop, normalize_dtype
from megatron_ipt.synth.engines import EngineConfig

TEXTS = ["The heart pumps blood through the body.", "short", "Cells divide by mitosis and meiosis.", "x y"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, save_tiny_llama):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_lm"), hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=256)


@pytest.fixture(scope="module")
def engine(tiny_dir):
    return EngineConfig(kind="hf", model=str(tiny_dir), tokenizer="mistral", batch_size=3).build()


@pytest.fixture(scope="module")
def prompts(mistral_tokenizer):
    tok = mistral_tokenizer
    return [[tok.bos_id, *tok.encode(t)] for t in TEXTS]


def test_engine_protocol_and_limits(engine):
    assert isinstance(engine, Engine)
    assert engine.max_model_len == 256  # capped by the model's position embeddings
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([[1] * 250], SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="sampling params"):
        engine.generate([[1, 5], [1, 6]], [SamplingParams()])


def test_greedy_matches_model_generate(engine, prompts):
    """Batched left-padded decoding gives exactly what plain ``model.generate`` gives per prompt."""
    out = engine.generate(prompts, SamplingParams(max_new_tokens=12))
    for ids, gens in zip(prompts, out, strict=True):
        ref = engine.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                    eos_token_id=2, pad_token_id=2)
        assert len(gens) == 1
        assert gens[0].token_ids == ref[0, len(ids):].tolist()
        assert gens[0].finish_reason == "length"
        assert gens[0].text == engine.tokenizer.decode(gens[0].token_ids)


def test_batch_size_does_not_change_greedy_output(tiny_dir, engine, prompts):
    single = HFEngine(EngineConfig(model=str(tiny_dir), batch_size=1), tokenizer=engine.tokenizer, model=engine.model)
    params = SamplingParams(max_new_tokens=8)
    assert [g[0].token_ids for g in single.generate(prompts, params)] == [
        g[0].token_ids for g in engine.generate(prompts, params)
    ]


def test_sampling_is_seeded_and_n_samples_differ(engine, prompts):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, n=3, seed=7)
    a = engine.generate(prompts, params)
    b = engine.generate(prompts, params)
    assert [[g.token_ids for g in r] for r in a] == [[g.token_ids for g in r] for r in b]
    assert all(len(r) == 3 for r in a)
    assert len({tuple(g.token_ids) for g in a[0]}) > 1  # three samples, not three copies
    other = engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=8))
    assert [[g.token_ids for g in r] for r in a] != [[g.token_ids for g in r] for r in other]
    # Per-prompt params: a prompt's samples depend on its own seed only, not its batch mates.
    alone = engine.generate(prompts[:1], params)
    assert [g.token_ids for g in alone[0]] == [g.token_ids for g in a[0]]


def test_stop_string_cuts_text(engine, prompts):
    free = engine.generate(prompts[:1], SamplingParams(max_new_tokens=16))[0][0]
    words = free.text.split()
    stop = words[len(words) // 2]
    cut = engine.generate(prompts[:1], SamplingParams(max_new_tokens=16, stop=(stop,)))[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert len(cut.token_ids) < len(free.token_ids)


def test_eos_ends_generation_and_is_not_returned(tiny_dir, engine, prompts):
    first = engine.generate(prompts[:1], SamplingParams(max_new_tokens=4))[0][0].token_ids
    eng = HFEngine(EngineConfig(model=str(tiny_dir)), tokenizer=engine.tokenizer, model=engine.model)
    eng.eos_ids = {first[2]}  # the third greedy token now counts as end of sequence
    gen = eng.generate(prompts[:1], SamplingParams(max_new_tokens=4))[0][0]
    assert gen.finish_reason == "eos"
    assert gen.token_ids == first[:2]


def test_kind_resolution_and_missing_vllm(tiny_dir):
    assert cut_at_stop("a <QUE> b <CON> c </CON>", ("</CON>", "<CON>")) == ("a <QUE> b ", True)
    if torch.cuda.is_available() and importlib.util.find_spec("vllm"):
        assert EngineConfig(model=str(tiny_dir)).resolved_kind() == "vllm"
        return
    assert EngineConfig(model=str(tiny_dir)).resolved_kind() == "hf"
    with pytest.raises(ValueError, match="engine.kind"):
        EngineConfig(kind="llama.cpp", model=str(tiny_dir)).build()
    with pytest.raises(RuntimeError, match="pip install vllm"):
        EngineConfig(kind="vllm", model=str(tiny_dir), tokenizer="mistral").build()


def test_engine_config_checks_and_one_dtype_spelling(tiny_dir, engine):
    assert [normalize_dtype(d) for d in ("bf16", "bfloat16", "fp32", "float32", "fp16", "auto")] == [
        "bfloat16", "bfloat16", "float32", "float32", "float16", "auto"]
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        EngineConfig(model=str(tiny_dir), dtype="int8").build()
    with pytest.raises(ValueError, match="batch_size must be auto or an integer >= 1"):
        EngineConfig(model=str(tiny_dir), batch_size=0).build()
    with pytest.raises(ValueError, match="engine.model is empty"):
        EngineConfig().build()
    with pytest.raises(ValueError, match="preloaded model works with kind=hf only"):
        EngineConfig(kind="vllm", model=str(tiny_dir)).build(model=engine.model)
    # bf16 and bfloat16 build the same engine dtype
    bf = HFEngine(EngineConfig(model=str(tiny_dir), dtype="bf16", device="cpu"), tokenizer=engine.tokenizer)
    assert next(bf.model.parameters()).dtype == torch.bfloat16


def test_repetition_penalty_matches_model_generate(engine, prompts):
    params = SamplingParams(max_new_tokens=10, repetition_penalty=1.5)
    out = engine.generate(prompts[:2], params)
    for ids, gens in zip(prompts[:2], out, strict=True):
        ref = engine.model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, repetition_penalty=1.5,
                                    eos_token_id=2, pad_token_id=2)
        assert gens[0].token_ids == ref[0, len(ids):].tolist()
    # A huge penalty rules out every token already seen (some unseen token always has a positive logit).
    strict = engine.generate(prompts, SamplingParams(max_new_tokens=12, repetition_penalty=1e6))
    for ids, gens in zip(prompts, strict, strict=True):
        toks = gens[0].token_ids
        assert len(set(toks)) == len(toks) and not set(toks) & set(ids)


def test_rows_leaving_the_batch_early_do_not_disturb_the_others(engine, prompts):
    """Per-prompt limits: short rows finish first and leave the KV cache; the long rows go on unchanged."""
    mixed = [SamplingParams(max_new_tokens=k) for k in (2, 12, 5, 12)]
    out = engine.generate(prompts, mixed)
    assert [len(g[0].token_ids) for g in out] == [2, 12, 5, 12]
    for ids, gens in zip(prompts, out, strict=True):
        solo = engine.generate([ids], SamplingParams(max_new_tokens=12))[0][0].token_ids
        assert gens[0].token_ids == solo[: len(gens[0].token_ids)]


def test_prefix_reuse_is_exact_and_prefills_only_new_tokens(tiny_dir, engine, prompts):
    """M-shot round r+1 extends round r's prompt: with reuse it prefills only the new tokens, and the
    output is token for token what a full prefill gives; rows with different cached lengths (and one
    with none) share a batch."""
    plain = HFEngine(EngineConfig(model=str(tiny_dir), batch_size=3, prefix_cache_tokens=0),
                     tokenizer=engine.tokenizer, model=engine.model)
    reuse = HFEngine(EngineConfig(model=str(tiny_dir), batch_size=3, prefix_cache_tokens=4096),
                     tokenizer=engine.tokenizer, model=engine.model)
    tok = engine.tokenizer
    first = [p + tok.encode(" and so the chain of documents goes on for a while.") for p in prompts]
    params = SamplingParams(max_new_tokens=10)
    out1 = reuse.generate(first, params)
    assert [g[0].token_ids for g in out1] == [g[0].token_ids for g in plain.generate(first, params)]
    assert reuse.reused_tokens == 0 and len(reuse.prefix_store) == 4
    # Next prompts: the previous prompt, part of its output, then new text; one unrelated prompt.
    second = [ids + g[0].token_ids[:k] + tok.encode(" Next text: the liver filters blood.")
              for ids, g, k in zip(first[:3], out1, (0, 4, 10), strict=False)]
    second.append(tok.encode("An unrelated prompt that shares nothing with earlier ones at all."))
    before = reuse.prefilled_tokens
    out2 = reuse.generate(second, params)
    assert [g[0].token_ids for g in out2] == [g[0].token_ids for g in plain.generate(second, params)]
    # Everything fed before (prompt + output except the last token, which was never fed) is reused.
    expected_cached = [len(first[0]), len(first[1]) + 4, len(first[2]) + 9, 0]
    assert [g[0].cached_tokens for g in out2] == expected_cached
    assert reuse.prefilled_tokens - before == sum(len(s) for s in second) - sum(expected_cached)
    # Sampling over a reused prefix is seeded the same way too.
    sampled = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3)
    assert [g[0].token_ids for g in reuse.generate(second, sampled)] == [
        g[0].token_ids for g in plain.generate(second, sampled)]


def test_prefix_store_evicts_least_recently_used(tiny_dir, engine, prompts):
    small = HFEngine(EngineConfig(model=str(tiny_dir), batch_size=3, prefix_cache_tokens=60),
                     tokenizer=engine.tokenizer, model=engine.model)
    tok = engine.tokenizer
    long = [p + tok.encode(" padding words to make the prompt longer than the key") for p in prompts[:3]]
    small.generate(long, SamplingParams(max_new_tokens=4))
    assert small.prefix_store.tokens <= 60 and 1 <= len(small.prefix_store) < 3
