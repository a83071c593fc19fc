"""Chains → documents, raw texts, tuning examples and general instructions."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from megatron_ipt.corpora.chains import (
    chain_seed,
    chains_of_shard,
    instruction_documents,
    raw_documents,
    synthesized_documents,
    tuning_documents,
)
from megatron_ipt.data.inputs import DataError


def rec(i, rnd, slot, linked, n_pairs=1):
    pairs = [{"instruction": f"Q{i}.{k}?", "response": f"A{i}.{k}."} for k in range(n_pairs)]
    return {"id": f"t{i}", "text": f"Text {i}.", "pairs": pairs, "round": rnd, "slot": slot, "linked": linked}


# Seven texts, three rounds (chunks [0,1,2], [3,4,5], [6]); t4 had no pairs, t5 was too long to chain.
SHARD = [rec(0, 0, 0, False), rec(1, 0, 1, False), rec(2, 0, 2, False, 0),
         rec(3, 1, 0, True), rec(4, 1, 1, False, 0), rec(5, 1, 2, False), rec(6, 2, 0, True)]


def test_chains_hand_checked():
    chains = chains_of_shard(SHARD)
    assert [[r["id"] for r in c] for c in chains] == [["t0", "t3", "t6"], ["t1"], ["t2"], ["t4"], ["t5"]]
    shuffled = [SHARD[i] for i in (6, 4, 2, 0, 5, 3, 1)]  # order of lines does not matter for membership
    assert sorted(tuple(r["id"] for r in c) for c in chains_of_shard(shuffled)) == sorted(
        tuple(r["id"] for r in c) for c in chains)
    # A linked record whose predecessor round is missing starts its own chain rather than a wrong one.
    assert [[r["id"] for r in c] for c in chains_of_shard([SHARD[0], SHARD[6]])] == [["t0"], ["t6"]]


def test_synthesized_documents(tmp_path):
    shard = tmp_path / "s0.jsonl"
    shard.write_text("".join(json.dumps(r) + "\n" for r in SHARD))
    (tmp_path / "s0.stats.json").write_text("{}")  # stats next to shards are not documents
    stats: Counter = Counter()
    docs = list(synthesized_documents([tmp_path], seed=1, stats=stats))
    assert [d["id"] for d in docs] == ["t0", "t1", "t2", "t4", "t5"]
    first = docs[0]["text"]
    assert first.index("Text 0.") < first.index("Q0.0?") < first.index("Text 3.") < first.index("Text 6.")
    assert docs[2]["text"] == "Text 2." and docs[2]["layout"] == "raw"
    assert stats["entries"] == 7 and stats["pairs"] == 5
    assert sum(v for k, v in stats.items() if k.startswith("layout:")) == 5
    assert list(synthesized_documents([shard], seed=1, stats=Counter())) == docs
    assert [d["text"] for d in synthesized_documents([shard], seed=2, stats=Counter())] != [d["text"] for d in docs]
    assert chain_seed(1, "t0") != chain_seed(1, "t1")
    shard.write_text(json.dumps({"id": "x", "text": "y"}) + "\n")
    with pytest.raises(DataError, match=r"s0.jsonl:1: .*'pairs'"):
        list(synthesized_documents([shard], 0, Counter()))


def test_raw_documents_leave_out_converted(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": f"raw {i}"}) + "\n" for i in range(5)))
    stats: Counter = Counter()
    assert [d["id"] for d in raw_documents([path], stats, exclude={"r1", "r3"})] == ["r0", "r2", "r4"]
    assert stats["excluded_converted"] == 2


def test_tuning_and_instruction_documents(tmp_path):
    tuning = tmp_path / "tuning.jsonl"
    tuning.write_text(json.dumps({"context": "Ctx.", "pairs": [{"instruction": "Q?", "response": "A."}],
                                  "dataset": "squad"}) + "\n")
    [doc] = list(tuning_documents([tuning], 0, Counter()))
    assert "Ctx." in doc["text"] and "Q?" in doc["text"] and "<QUE>" not in doc["text"]
    instr = tmp_path / "instr.jsonl"
    instr.write_text(json.dumps({"system_prompt": "You are helpful.", "question": "Add 2 and 2.", "response": "4"})
                     + "\n" + json.dumps({"instruction": "Say hi.", "output": "Hi!"}) + "\n"
                     + json.dumps({"question": "No answer."}) + "\n")
    with pytest.raises(DataError, match=r"instr.jsonl:3"):
        list(instruction_documents([instr], Counter()))
    stats: Counter = Counter()
    docs = list(instruction_documents([instr], stats, skip_bad_records=True))
    assert [d["text"] for d in docs] == ["Add 2 and 2. 4", "Say hi. Hi!"]  # system prompt dropped
    assert stats["bad_records"] == 1 and stats["dropped_system_prompt"] == 1


def test_every_text_field_of_the_instruction_formats_is_used_or_counted(tmp_path):
    """OpenOrca, Alpaca, Dolly, ShareGPT and chat messages: nothing is dropped without a count."""
    records = [
        {"id": "orca", "system_prompt": "You are an AI.", "question": "Is 7 prime?", "response": "Yes."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Summarize.", "input": "", "output": "Nothing to summarize."},  # Alpaca, empty input
        {"instruction": "When was it built?", "context": "The bridge opened in 1932.", "response": "1932.",
         "category": "closed_qa"},
        {"id": "chat", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                         {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "2+2?"},
                                         {"from": "human", "value": "Quickly."}, {"from": "gpt", "value": "4."},
                                         {"from": "human", "value": "Bye?"}]},
        {"messages": [{"role": "assistant", "content": "Welcome."}, {"role": "user", "content": "Name a color."},
                      {"role": "assistant", "content": "Blue."}, {"role": "tool", "content": "{}"}]},
        {"input": "Capital of Peru?", "output": "Lima.", "rationale": "It is the largest city."},
    ]
    path = tmp_path / "instr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stats: Counter = Counter()
    docs = list(instruction_documents([path], stats))
    assert [d["text"] for d in docs] == [
        "Is 7 prime? Yes.",
        "Translate to French.\n\nGood morning Bonjour",
        "Summarize. Nothing to summarize.",
        "When was it built?\n\nThe bridge opened in 1932. 1932.",
        "Hi Hello.\n\n2+2?\n\nQuickly. 4.",
        "Name a color. Blue.",
        "Capital of Peru? Lima.",
    ]
    assert [d["id"] for d in docs][:2] == ["orca", "instr:2"] and docs[4]["id"] == "chat"
    assert dict(stats) == {
        "dropped_system_prompt": 1, "appended_input": 1, "appended_context": 1, "dropped_system_turns": 1,
        "dropped_unanswered_turns": 1, "dropped_unprompted_responses": 1, "dropped_turns_role:tool": 1,
        "conversation_turns": 6, "unused_field:rationale": 1,
    }
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"conversations": [{"from": "human", "value": "Anyone?"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'conversations': .*no question followed by an answer"):
        list(instruction_documents([bad], Counter()))


def test_a_repeated_slot_and_round_is_an_error_and_extra_pair_keys_are_counted(tmp_path):
    """Two records for one (slot, round) would chain arbitrarily: an error naming both lines. Pair keys
    other than instruction and response are no part of a document: counted by key."""
    shard = tmp_path / "s0.jsonl"
    shard.write_text("".join(json.dumps(r) + "\n" for r in [rec(0, 0, 0, False), rec(1, 0, 1, False), rec(2, 0, 0, False)]))
    with pytest.raises(DataError, match=r"s0\.jsonl:3: field 'slot': repeats slot 0, round 0 of line 1"):
        list(synthesized_documents([shard], 0, Counter()))
    scored = [{**rec(0, 0, 0, False), "pairs": [{"instruction": "Q?", "response": "A.", "score": 0.9, "src": "x"},
                                                {"instruction": "R?", "response": "B.", "score": 0.2}]}]
    shard.write_text("".join(json.dumps(r) + "\n" for r in scored))
    stats: Counter = Counter()
    (doc,) = synthesized_documents([shard], 0, stats)
    assert stats["dropped_pair_key:score"] == 2 and stats["dropped_pair_key:src"] == 1 and "0.9" not in doc["text"]
