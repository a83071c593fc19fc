"""Instruction-tuning data: the loss mask covers exactly the responses (and what closes them), per
record format and template, multi-turn included, with real tokenizers (Mistral's SentencePiece,
SmolLM2's BPE and its ChatML chat template)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from megatron_ipt.config import ConfigError
from megatron_ipt.corpora.chains import instruction_conversation
from megatron_ipt.corpora.instruction_data import (
    InstructionDataConfig,
    TemplateConfig,
    build_instruction_data,
)
from megatron_ipt.data.indexed import IndexedDataset
from megatron_ipt.data.inputs import DataError
from megatron_ipt.tokenizer import load_tokenizer

# (record, system prompt, [(question, response), ...]) per format the domain recipe reads.
FORMATS = {
    "openorca": ({"id": "o1", "system_prompt": "You are a doctor.", "question": "What lowers glucose?",
                  "response": "Metformin lowers it."}, "You are a doctor.",
                 [("What lowers glucose?", "Metformin lowers it.")]),
    "alpaca": ({"instruction": "Name a statin.", "input": "One word.", "output": "Atorvastatin"}, None,
               [("Name a statin.\n\nOne word.", "Atorvastatin")]),
    "dolly": ({"instruction": "Summarize.", "context": "Aspirin thins the blood.", "response": "It thins blood.",
               "category": "summarization"}, None, [("Summarize.\n\nAspirin thins the blood.", "It thins blood.")]),
    "sharegpt": ({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi there"},
                                    {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Dose of it?"},
                                    {"from": "gpt", "value": "Five hundred mg."}]}, "Be brief.",
                 [("Hi there", "Hello!"), ("Dose of it?", "Five hundred mg.")]),
    "messages": ({"messages": [{"role": "user", "content": "Is </s> plain text?"},
                               {"role": "assistant", "content": "Yes, and <|im_end|> too."},
                               {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Quite sure."}]},
                 None, [("Is </s> plain text?", "Yes, and <|im_end|> too."), ("Sure?", "Quite sure.")]),
}


def _build(tmp_path: Path, records: list[dict], tokenizer: str, **kw) -> tuple[dict, IndexedDataset, IndexedDataset]:
    src = tmp_path / "ins.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = InstructionDataConfig(input=[str(src)], tokenizer=tokenizer, output_prefix=str(tmp_path / "out" / "ins"),
                                workers=0, progress=False, **kw)
    summary = build_instruction_data(cfg)
    return summary, IndexedDataset(summary["prefix"]), IndexedDataset(summary["lossmask_prefix"])


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir: Path):
    return load_tokenizer(smollm2_dir)


@pytest.mark.parametrize("keep_system", [False, True])
@pytest.mark.parametrize("tokenizer", ["mistral", "smollm2"])
def test_plain_template_masks_exactly_the_responses(tmp_path: Path, tokenizer: str, keep_system: bool,
                                                    smollm2_dir: Path) -> None:
    spec = str(smollm2_dir) if tokenizer == "smollm2" else "mistral"
    tok = load_tokenizer(spec)
    summary, docs, masks = _build(tmp_path, [f[0] for f in FORMATS.values()], spec, keep_system=keep_system)
    assert len(docs) == len(FORMATS)
    for i, (name, (_, system, turns)) in enumerate(FORMATS.items()):
        ids, mask = docs[i].tolist(), masks[i].tolist()
        # The document is the joint tokenization of '{question} {response}' per turn, between BOS and EOS:
        # no token is split or doubled at a loss boundary.
        expected, expected_mask = [tok.bos_id], [0]
        for k, (q, a) in enumerate(turns):
            # A kept system prompt is loss-free like the first question: one text with it.
            q = f"{system}\n\n{q}" if keep_system and system and k == 0 else q
            whole, prompt = tok.encode(f"{q} {a}"), tok.encode(q)
            assert whole[: len(prompt)] == prompt, (name, k)
            expected += whole + [tok.eos_id]
            expected_mask += [0] * len(prompt) + [1] * (len(whole) - len(prompt)) + [1]
        assert ids == expected, name
        assert mask == expected_mask, name
        loss_text = tok.decode([t for t, m in zip(ids, mask, strict=True) if m and t != tok.eos_id])
        assert loss_text.replace(" ", "") == "".join(a for _, a in turns).replace(" ", ""), name
    counts = summary["instructions"]["counts"]
    if keep_system:
        assert counts["kept_system_prompt"] == 1 and counts["kept_system_turns"] == 1
        assert "dropped_system_prompt" not in counts
    else:
        assert counts["dropped_system_prompt"] == 1 and counts["dropped_system_turns"] == 1
    assert summary["instructions"]["written"] == len(FORMATS) and summary["instructions"]["skipped_total"] == 0
    assert summary["instructions"]["loss_tokens"] == sum(int(masks[i].sum()) for i in range(len(masks)))
    assert summary["tokenizer_fingerprint"]["hash"] == tok.vocab_hash
    assert len(summary["instructions"]["template_hash"]) == 16


def test_chat_template_masks_every_assistant_turn(tmp_path: Path, smollm2_dir: Path, smol_tok) -> None:
    summary, docs, masks = _build(tmp_path, [f[0] for f in FORMATS.values()], str(smollm2_dir),
                                  template=TemplateConfig(kind="chat"), keep_system=True)
    start, end = smol_tok.special_pieces["<|im_start|>"], smol_tok.special_pieces["<|im_end|>"]
    for i, (name, (_, system, turns)) in enumerate(FORMATS.items()):
        ids, mask = docs[i].tolist(), masks[i].tolist()
        text = smol_tok.decode(ids)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        assert text == smol_tok.hf.apply_chat_template(messages, tokenize=False), name
        # Loss on each response and the end-of-turn that closes it, nothing else.
        runs, cur = [], []
        for t, m in zip(ids, mask, strict=True):
            if m:
                cur.append(t)
            elif cur:
                runs, cur = runs + [cur], []
        runs += [cur] if cur else []
        assert [smol_tok.decode(r) for r in runs] == [f"{a}<|im_end|>\n" for _, a in turns], name
        # Control ids come from the template only: the records' literal markers stay text.
        assert ids.count(end) == len(messages) + (0 if system else 1), name  # +1: the template's default system
        assert ids.count(start) == ids.count(end)
    assert summary["instructions"]["template"]["kind"] == "chat"


def test_template_from_config_and_its_hash(tmp_path: Path) -> None:
    tok = load_tokenizer("mistral")
    template = TemplateConfig(user="### Question: {content}\n### Answer:", assistant=" {content}")
    summary, docs, masks = _build(tmp_path, [FORMATS["alpaca"][0]], "mistral", template=template)
    ids, mask = docs[0].tolist(), masks[0].tolist()
    assert tok.decode(ids) == tok.decode([tok.bos_id, *tok.encode("### Question: Name a statin.\n\nOne word.\n"
                                                                  "### Answer: Atorvastatin"), tok.eos_id])
    assert [t for t, m in zip(ids, mask, strict=True) if m] == [*tok.encode("Atorvastatin"), tok.eos_id]
    plain, _, _ = _build(tmp_path / "plain", [FORMATS["alpaca"][0]], "mistral")
    assert summary["instructions"]["template"]["user"] == template.user
    assert summary["instructions"]["template_hash"] != plain["instructions"]["template_hash"]


def test_bad_records_name_file_line_and_field_or_are_counted(tmp_path: Path) -> None:
    records = [FORMATS["alpaca"][0], {"instruction": "No answer here."}, {"messages": [{"role": "assistant",
                                                                                        "content": "unprompted"}]}]
    with pytest.raises(DataError, match=r"ins\.jsonl:2: field 'response'"):
        _build(tmp_path, records, "mistral")
    summary, docs, _ = _build(tmp_path, records, "mistral", skip_bad_records=True)
    assert len(docs) == 1
    assert summary["instructions"]["skipped"] == {"bad_records": 2}
    assert summary["instructions"]["counts"]["dropped_unprompted_responses"] == 1
    with pytest.raises(DataError, match="no usable instruction record"):
        _build(tmp_path / "none", records[1:], "mistral", skip_bad_records=True)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"template.user must hold \{content\}"):
        TemplateConfig(user="Q:").validate()
    with pytest.raises(ConfigError, match="template.kind=chat needs a Hugging Face tokenizer"):
        build_instruction_data(InstructionDataConfig(input=["x.jsonl"], tokenizer="mistral", output_prefix="o",
                                                     template=TemplateConfig(kind="chat")))


def test_readers_keep_or_drop_system_prompts() -> None:
    stats: Counter = Counter()
    conv = instruction_conversation(FORMATS["openorca"][0], stats, keep_system=True)
    assert conv.system == "You are a doctor." and stats["kept_system_prompt"] == 1
    conv = instruction_conversation(FORMATS["sharegpt"][0], stats)
    assert conv.system is None and stats["dropped_system_turns"] == 1


def test_packed_examples_do_not_attend_to_each_other(tmp_path: Path) -> None:
    """Instruction examples packed by the training loader: each example's logits in the packed row equal
    its logits alone, and no loss falls on a prediction across an example boundary."""
    import torch

    from megatron_ipt.data.loader import build_train_loader
    from megatron_ipt.model.attention import packed_documents
    from megatron_ipt.model.build import ModelConfig, build_model

    summary, _, _ = _build(tmp_path, [f[0] for f in FORMATS.values()] * 3, "mistral")
    batch = next(iter(build_train_loader(summary["prefix"], seq_len=96, micro_batch_size=2, num_samples=4,
                                         cache_dir=tmp_path / "cache")))
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mistral", vocab_size=32000, hidden_size=64, intermediate_size=128,
                                    num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=256,
                                    attention="doc_sdpa")).eval()
    pos = batch["position_ids"]
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=pos, attention_mask=None, use_cache=False,
                       packed_documents=packed_documents("doc_sdpa", pos, batch["cu_seqlens"],
                                                         batch["max_seqlen"])).logits
        cu = batch["cu_seqlens"].tolist()
        assert len(cu) > 3  # several examples share the rows
        width = pos.shape[1]
        for start, end in zip(cu, cu[1:], strict=False):
            row, lo, hi = start // width, start % width, start % width + (end - start)
            alone = model(input_ids=batch["input_ids"][row, lo:hi][None], use_cache=False).logits[0]
            assert (packed[row, lo:hi] - alone).abs().max().item() <= 1e-5, (row, lo, hi)
            if hi < width:  # the last token of an example predicts the next example's first: no loss there
                assert batch["loss_mask"][row, hi - 1] == 0


def test_examples_over_max_tokens_are_skipped_and_counted(tmp_path: Path) -> None:
    records = [FORMATS["alpaca"][0], {"question": "Why? " * 40, "response": "Because."}]
    summary, docs, _ = _build(tmp_path, records, "mistral", max_tokens=32)
    assert len(docs) == 1 and len(docs[0]) <= 32
    assert summary["instructions"]["skipped"] == {"too_long": 1} and summary["instructions"]["written"] == 1
    n = len(docs[0])  # the limit counts tokens exactly as written
    kept, _, _ = _build(tmp_path / "exact", records[:1], "mistral", max_tokens=n)
    assert kept["instructions"]["written"] == 1
    with pytest.raises(DataError, match="no usable instruction record"):
        _build(tmp_path / "under", records[:1], "mistral", max_tokens=n - 1)
