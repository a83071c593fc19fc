"""The transformers engine's decode loop: speculation that changes no token (a tiny model and the real
SmolLM2), and batch sizing."""

from __future__ import annotations

import pytest
import torch

from megatron_ipt.synth.engine_hf import (
    CPU_BATCH,
    HFEngine,
    auto_batch_size,
    kv_bytes_per_token,
    prefill_bytes_per_token,
)
from megatron_ipt.synth.engine_types import SamplingParams
from megatron_ipt.synth.engine_vllm import speculative_kwargs
from megatron_ipt.synth.engines import EngineConfig


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
