"""Synthesizer evaluation: answer scoring, pair-token loss against a hand computation, generation scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ipt.pairs import Pair, context_text
from megatron_ipt.tuning.evaluate import (
    generation_scores,
    heldout_pair_loss,
    response_prompt_ids,
)
from megatron_ipt.tuning.example import Example
from megatron_ipt.tuning.tuning_data import TuningDataOptions, build_tuning_data


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=32000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
    )
    return MistralForCausalLM(cfg).eval()


EXAMPLES = [
    Example(
        "d",
        "The sky is blue and the grass is green.",
        [Pair("What colour is the sky?", "blue"), Pair("What is green?", "the grass")],
    ),
    Example("d", "Cats sleep a lot.", [Pair("Who sleeps a lot?", "Cats")]),
]


def test_pair_loss_matches_hand_computation(tmp_path: Path, tiny_model, mistral_tokenizer) -> None:
    s = build_tuning_data(
        EXAMPLES,
        tmp_path / "e",
        mistral_tokenizer,
        TuningDataOptions(max_length=512, held_out=0.0, pad=False),
    )
    prefix = s["splits"]["train"]["prefix"]
    got = heldout_pair_loss(tiny_model, prefix)
    from megatron_ipt.data.indexed import IndexedDataset, lossmask_prefix

    ids = torch.tensor(np.asarray(IndexedDataset(prefix).get(0), dtype=np.int64))
    mask = torch.tensor(np.asarray(IndexedDataset(lossmask_prefix(prefix)).get(0), dtype=np.float64))
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(input_ids=ids[None]).logits[0].double(), -1)
    nll = -logp[:-1].gather(1, ids[1:, None])[:, 0]
    want = float((nll * mask[1:]).sum() / mask[1:].sum())
    assert got["pair_loss"] == pytest.approx(want, rel=1e-5)
    assert got["pair_tokens"] == mask[1:].sum() and got["documents"] == 1
    assert got["all_token_loss"] == pytest.approx(float(nll.mean()), rel=1e-5)


def test_generation_scores_with_hf_engine(tiny_model, mistral_tokenizer) -> None:
    from megatron_ipt.synth.engine_hf import HFEngine
    from megatron_ipt.synth.engines import EngineConfig

    tok = mistral_tokenizer
    ids = response_prompt_ids(tok, EXAMPLES[0], 1)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    # the training layout: BOS, the context segment, then one pairs segment ending in "<ANS>"
    head = "<QUE> What colour is the sky? <ANS> blue </END>\n\n<QUE> What is green? <ANS>"
    assert ids == [tok.bos_id, *tok.encode(context_text(EXAMPLES[0].context)), *tok.encode(head)]
    engine = HFEngine(EngineConfig(max_model_len=1024, batch_size=4), tokenizer=tok, model=tiny_model)
    scores = generation_scores(engine, EXAMPLES, max_new_tokens=12, response_tokens=6)
    assert scores["contexts"] == 2 and scores["responses"] == 3 and scores["skipped_too_long"] == 0
    assert 0.0 <= scores["parse_rate"] <= 1.0 and 0.0 <= scores["response_f1"] <= 1.0
    # a random model neither closes pairs nor answers: the scores say so rather than hiding it
    assert scores["parse_rate"] == 0.0 and scores["response_exact_match"] == 0.0
    short = HFEngine(EngineConfig(max_model_len=40, batch_size=4), tokenizer=tok, model=tiny_model)
    assert (
        generation_scores(short, EXAMPLES[:1], max_new_tokens=30, response_tokens=30)["skipped_too_long"] == 3
    )


def test_evaluate_synthesizer_cli(tmp_path: Path, tiny_model, mistral_tokenizer, capsys) -> None:
    import json

    from data_tools.evaluate_synthesizer import main

    tiny_model.save_pretrained(tmp_path / "model")
    build_tuning_data(
        EXAMPLES * 3, tmp_path / "d", mistral_tokenizer, TuningDataOptions(max_length=256, held_out=0.5)
    )
    out = tmp_path / "report.json"
    args = [
        "--model",
        str(tmp_path / "model"),
        "--data-prefix",
        str(tmp_path / "d"),
        "--tokenizer",
        "mistral",
        "--engine",
        "hf",
        "--max-examples",
        "1",
        "--max-new-tokens",
        "4",
        "--response-tokens",
        "2",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert (
        json.loads(printed[printed.index("\n{") + 1 :] if not printed.startswith("{") else printed) == report
    ), printed[:300]
    assert report["loss"]["pair_tokens"] > 0 and report["loss"]["pair_loss"] > 5  # a random model
    assert report["generation"]["contexts"] == 1 and report["generation"]["responses"] >= 1
    assert main(["--model", str(tmp_path / "model"), "--data-prefix", str(tmp_path / "none"), "--no-loss"]) == 2
    assert "none_heldout.examples.jsonl not found" in capsys.readouterr().err
    assert main(["--model", "x", "--data-prefix", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == "error: --model x: not a model directory\n"
