"""M-shot chaining against hand-checked cases.

A scripted engine stands in for the model here: it answers each prompt with pairs chosen by the
text in the prompt's last context, so the chaining rules can be checked case by case (a real
model cannot be steered to produce or withhold pairs on demand). It also records every prompt.
"""

from __future__ import annotations

import copy
import re

import pytest

from megatron_ipt.pairs import Pair, context_text, pairs_text
from megatron_ipt.synth.engine_types import Generation, SamplingParams, per_prompt_params
from megatron_ipt.synth.rounds import (
    Entry,
    RoundsConfig,
    build_prompt_ids,
    chunk_layout,
    fit_text,
    pairs_from_generations,
    run_rounds,
    synthesis_sampling,
    text_seed,
    unbroken_chain,
)


class ScriptedEngine:
    def __init__(self, tokenizer, outputs: dict[str, str], max_model_len: int = 4096) -> None:
        self.tokenizer, self.outputs, self.max_model_len = tokenizer, outputs, max_model_len
        self.prompts: dict[str, list[int]] = {}
        self.calls = 0

    def generate(self, prompt_ids, params, show_progress=False):
        self.calls += 1
        out = []
        for ids, p in zip(prompt_ids, per_prompt_params(prompt_ids, params), strict=True):
            assert len(ids) + p.max_new_tokens <= self.max_model_len
            text = self.tokenizer.decode(ids)
            key = re.findall(r"<CON> (.*?) </CON>", text, re.S)[-1].split()[0]
            self.prompts[key] = list(ids)
            reply = self.outputs.get(key, f"<QUE> What is {key}? <ANS> It is {key}. </END>")
            out.append([Generation(reply, self.tokenizer.encode(reply), "eos")])
        return out


def texts(n: int) -> list[tuple[str, str]]:
    return [(f"id{i}", f"t{i} is text number {i}.") for i in range(n)]


def by_id(entries: list[Entry]) -> dict[str, Entry]:
    return {e.id: e for e in entries}


def test_chunk_layout_uneven():
    assert chunk_layout(5, 2) == [[0, 1, 2], [3, 4]]
    assert chunk_layout(4, 3) == [[0, 1], [2, 3], []]
    assert chunk_layout(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunk_layout(0, 2) == [[], []]
    assert chunk_layout(3, 1) == [[0, 1, 2]]


def test_prompt_ids_hand_built(mistral_tokenizer):
    tok = mistral_tokenizer
    pairs = [Pair("What?", "That."), Pair("Why?", "Because.")]
    expected = ([tok.bos_id] + tok.encode(" <CON> first </CON>\n\n")
                + tok.encode("<QUE> What? <ANS> That. </END>\n\n<QUE> Why? <ANS> Because. </END>")
                + [tok.eos_id, tok.bos_id] + tok.encode(" <CON> second </CON>\n\n"))
    assert build_prompt_ids(tok, [("first", pairs)], "second") == expected
    assert build_prompt_ids(tok, [], "second") == [tok.bos_id] + tok.encode(context_text("second"))
    assert expected.count(tok.bos_id) == 2  # one per example, never doubled
    cache: dict = {}
    e = Entry("a", "first", pairs)
    assert build_prompt_ids(tok, [e], "second", cache) == expected
    assert cache["a"] == expected[: expected.index(tok.eos_id) + 1]
    assert pairs_text(pairs) in tok.decode(expected)


def test_prompt_ids_keep_literal_control_tokens_as_text(smollm2_dir):
    """A text or pair quoting <|im_end|> or </s> never injects a control id into a synthesis prompt."""
    from megatron_ipt.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_dir)
    pairs = [Pair("What ends a turn?", "The marker <|im_end|>."), Pair("And </s>?", "<|endoftext|> too.")]
    text = "Chat logs contain <|im_start|>user hi<|im_end|> and </s> literally."
    ids = build_prompt_ids(tok, [("first <|endoftext|>", pairs)], text)
    specials = [(i, t) for i, t in enumerate(ids) if t in tok.special_ids]
    eos = len(tok.encode(context_text("first <|endoftext|>"))) + len(tok.encode(pairs_text(pairs))) + 1
    assert specials == [(0, tok.bos_id), (eos, tok.eos_id), (eos + 1, tok.bos_id)]
    assert tok.decode(ids[eos + 2:]) == context_text(text)


def test_five_texts_two_rounds_with_a_broken_chain(mistral_tokenizer):
    tok = mistral_tokenizer
    eng = ScriptedEngine(tok, {"t1": "I cannot find any question here."})
    entries = run_rounds(eng, texts(5), RoundsConfig(rounds=2, sampling=synthesis_sampling(max_new_tokens=16)))
    assert [e.id for e in entries] == [f"id{i}" for i in range(5)]
    assert [(e.round, e.slot) for e in entries] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    e = by_id(entries)
    assert not e["id0"].linked and e["id0"].pairs == [Pair("What is t0?", "It is t0.")]
    assert e["id1"].pairs == [] and e["id1"].stats["unfinished"] == 1
    assert e["id3"].linked and e["id3"].stats["chained"]  # t3 follows t0 in slot 0
    assert eng.prompts["t3"] == build_prompt_ids(tok, [e["id0"]], "t3 is text number 3.")
    # t1 produced no pairs: the chain in slot 1 is broken, t4 is prompted alone.
    assert not e["id4"].linked and not e["id4"].stats["chained"]
    assert eng.prompts["t4"] == build_prompt_ids(tok, [], "t4 is text number 4.")


def test_three_rounds_chain_grows_and_unlinked_entry_without_pairs(mistral_tokenizer):
    tok = mistral_tokenizer
    eng = ScriptedEngine(tok, {"t4": "<QUE> broken <ANS> </END>"})  # empty answer: malformed
    entries = run_rounds(eng, texts(7), RoundsConfig(rounds=3, sampling=synthesis_sampling(max_new_tokens=16)))
    e = by_id(entries)
    assert [x.round for x in entries] == [0, 0, 0, 1, 1, 1, 2]
    assert e["id3"].linked and e["id6"].linked
    assert eng.prompts["t6"] == build_prompt_ids(tok, [e["id0"], e["id3"]], "t6 is text number 6.")
    # t4 was prompted after t1 but produced nothing: not linked (it stays a raw text).
    assert e["id4"].stats["chained"] and not e["id4"].linked and e["id4"].stats["malformed"] == 1
    assert unbroken_chain([e["id0"], e["id3"]]) == [e["id0"], e["id3"]]
    assert unbroken_chain([e["id1"], e["id4"]]) == []


def test_length_limit_breaks_the_chain_and_restarts_it(mistral_tokenizer):
    """One slot, five rounds: a -> b -> c fits, a -> b -> c -> d does not, so d starts a new chain."""
    tok = mistral_tokenizer
    data = texts(5)
    done = [Entry(i, t, [Pair(f"What is {t.split()[0]}?", f"It is {t.split()[0]}.")]) for i, t in data]
    fits = len(build_prompt_ids(tok, done[:2], data[2][1]))
    assert len(build_prompt_ids(tok, done[:3], data[3][1])) > fits
    eng = ScriptedEngine(tok, {}, max_model_len=fits + 16)
    e = by_id(run_rounds(eng, data, RoundsConfig(rounds=5, sampling=synthesis_sampling(max_new_tokens=16))))
    assert [e[f"id{i}"].linked for i in range(5)] == [False, True, True, False, True]
    assert eng.prompts["t2"] == build_prompt_ids(tok, done[:2], data[2][1])
    assert eng.prompts["t3"] == build_prompt_ids(tok, [], data[3][1])
    assert eng.prompts["t4"] == build_prompt_ids(tok, done[3:4], data[4][1])
    assert not e["id3"].stats["chained"] and not e["id3"].stats["text_truncated"]


def test_text_longer_than_window_is_truncated(mistral_tokenizer):
    tok = mistral_tokenizer
    ids, cut = fit_text(tok, "t0 " + "many words here " * 200, 64)
    assert cut and len(ids) <= 64 and ids[0] == tok.bos_id
    assert tok.decode(ids).rstrip().endswith("</CON>")
    eng = ScriptedEngine(tok, {}, max_model_len=96)
    [e] = run_rounds(eng, [("x", "t0 " + "many words here " * 200)],
                     RoundsConfig(rounds=1, sampling=synthesis_sampling(max_new_tokens=32)))
    assert e.stats["text_truncated"] and e.pairs and e.text.endswith("here ")  # the record keeps the full text
    with pytest.raises(ValueError, match="no room"):
        fit_text(tok, "anything", 8)


def test_resume_reuses_done_batches(mistral_tokenizer):
    tok = mistral_tokenizer
    cfg = RoundsConfig(rounds=2, sampling=synthesis_sampling(max_new_tokens=16))
    seen = {}
    full = run_rounds(ScriptedEngine(tok, {}), texts(6), cfg, batch_texts=2,
                      on_batch=lambda r, b, es: seen.__setitem__((r, b), copy.deepcopy(es)))
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    eng = ScriptedEngine(tok, {})
    resumed = run_rounds(eng, texts(6), cfg, batch_texts=2, done={k: seen[k] for k in [(0, 0), (0, 1), (1, 0)]})
    assert eng.calls == 1
    assert [x.record() for x in resumed] == [x.record() for x in full]


def test_pairs_from_generations_merges_caps_and_counts():
    g1 = Generation("<QUE> A? <ANS> a </END>\n\n<QUE> B? <ANS> b </END>", [1] * 5, "eos")
    g2 = Generation("<QUE> a? <ANS> again </END>\n\n<QUE> C? <ANS> Q3: Q3: Q3: Q3: Q3: Q3: Q3: Q3: </END>"
                    "<QUE> D? <ANS> d </END> <QUE> E", [1] * 7, "length")
    pairs, stats = pairs_from_generations([g1, g2], max_pairs=0)
    assert [p.instruction for p in pairs] == ["A?", "B?", "D?"]
    assert stats["duplicates"] == 1 and stats["degenerate_pairs"] == 1 and stats["unfinished"] == 1
    assert stats["output_tokens"] == 12 and stats["finish"] == {"eos": 1, "length": 1}
    capped, stats = pairs_from_generations([g1, g2], max_pairs=2)
    assert [p.instruction for p in capped] == ["A?", "B?"] and stats["capped"] == 1


def test_text_seed_is_stable_and_distinct():
    assert text_seed(0, "a") == text_seed(0, "a")
    assert len({text_seed(0, f"id{i}") for i in range(100)}) == 100
    assert text_seed(1, "a") != text_seed(0, "a")
    assert SamplingParams(seed=text_seed(0, "a")).seed < 2**31


@pytest.fixture(scope="module")
def pair_writer(tmp_path_factory, mistral_tokenizer):
    """A small Llama (Mistral vocabulary) taught the pair format for a few steps: a real model that
    writes pairs, so chains form and grow round after round."""
    from benchmarks.synth_schedule import train_pair_writer

    return train_pair_writer(tmp_path_factory.mktemp("pair_writer"), mistral_tokenizer, steps=60)


def test_chain_major_with_prefix_reuse_equals_round_major(pair_writer, mistral_tokenizer):
    """Greedy M=3 synthesis on a real model: chain-major order with the engine reusing each chain's KV
    gives exactly the records of round-major order without reuse, and prefills fewer prompt tokens."""
    from benchmarks.synth_schedule import make_texts
    from megatron_ipt.synth.engine_hf import HFEngine
    from megatron_ipt.synth.engines import EngineConfig

    reuse = EngineConfig(kind="hf", model=str(pair_writer), tokenizer="mistral", batch_size=3,
                         prefix_cache_tokens=1 << 16).build(tokenizer=mistral_tokenizer)
    plain = HFEngine(EngineConfig(model=str(pair_writer), batch_size=3, prefix_cache_tokens=0),
                     tokenizer=mistral_tokenizer, model=reuse.model)
    data = make_texts(11, 20, seed=3)
    cfg = RoundsConfig(rounds=3, sampling=synthesis_sampling(max_new_tokens=40))
    by_round = run_rounds(plain, data, cfg, batch_texts=2, schedule="round")
    by_chain = run_rounds(reuse, data, cfg, batch_texts=2, schedule="chain")
    assert [e.record() for e in by_chain] == [e.record() for e in by_round]
    assert sum(e.linked for e in by_round) >= 4 and sum(len(e.pairs) for e in by_round) >= 11  # chains formed
    assert plain.reused_tokens == 0 and reuse.reused_tokens > 0
    assert reuse.prefilled_tokens + reuse.reused_tokens == plain.prefilled_tokens
    assert all(e.stats["cached_tokens"] > 0 for e in by_chain if e.stats["chained"])
    with pytest.raises(ValueError, match="schedule"):
        run_rounds(plain, data, cfg, schedule="diagonal")


def test_chain_major_visits_each_slot_through_all_rounds(mistral_tokenizer):
    order: list[tuple[int, int]] = []
    cfg = RoundsConfig(rounds=3, sampling=synthesis_sampling(max_new_tokens=16))
    run_rounds(ScriptedEngine(mistral_tokenizer, {}), texts(7), cfg, batch_texts=2,
               on_batch=lambda r, b, es: order.append((r, b)))
    assert order == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)]  # chunks of 3, 3, 1
