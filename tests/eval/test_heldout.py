"""megatron_ipt.eval: scoring rules by hand, losses against a plain transformers reference, and
an end-to-end evaluation of a tiny random model (SmolLM2's tokenizer) through the HF engine."""

from __future__ import annotations

import json
import math

import pytest
import torch

from megatron_ipt.data.inputs import DataError
from megatron_ipt.eval.heldout import evaluate_model, heldout_perplexity, main, read_texts, scoring_bf16
from megatron_ipt.eval.scoring import load_model
from megatron_ipt.eval.tasks import (
    EvalTask,
    answer_losses,
    choose_option,
    extract_answer,
    question_prompt,
    read_tasks,
    score_tasks,
)
from megatron_ipt.pairs import chain_of_thought, multiple_choice

TEXTS = [
    "Aspirin reduces the risk of myocardial infarction in adults with diabetes.",
    "We measured serum ferritin in 120 children; iron deficiency was common among infants.",
    "Short.",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir):
    from megatron_ipt.demo.start_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("eval") / "tiny", tokenizer_dir=smollm2_dir)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from megatron_ipt.tokenizer import load_tokenizer

    return load_model(tiny_dir), load_tokenizer(tiny_dir)


def test_task_parsing_of_multiple_choice_and_chain_of_thought():
    mc = EvalTask.from_pair("ctx", multiple_choice("Which term?", ["Male", "Humans", "Aspirin"]), "Humans")
    assert mc.options == ("Male", "Humans", "Aspirin") and mc.answer == "Humans"
    q, r = chain_of_thought(multiple_choice("Which term?", ["Male", "Aspirin"]), "It says aspirin.", "Aspirin")
    cot = EvalTask.from_pair("ctx", q, r)
    assert cot.chain_of_thought and cot.answer == "Aspirin" and cot.options == ("Male", "Aspirin")
    assert question_prompt(mc.instruction).startswith("\n\nQuestion: Which term?\nOptions:\n- Male")
    assert question_prompt(mc.instruction).endswith("\nAnswer:")


def test_answer_extraction_and_option_choice():
    assert extract_answer("\n  Humans.\nQuestion: next") == "Humans"
    assert extract_answer("reasoning...\nTherefore, the answer is Aspirin.") == "Aspirin"
    options = ["Male", "Humans", "Aspirin therapy"]
    assert choose_option("humans", options) == 1
    assert choose_option("aspirin", options) == 2  # best token F1
    assert choose_option("nothing here", options) is None
    assert choose_option("male humans", options) is None  # a tie names no option


def test_score_tasks_by_hand():
    tasks = [
        EvalTask.from_pair("c", "Title?", "Iron deficiency in infants"),
        EvalTask.from_pair("c", "Conclusion?", "aspirin works"),
        EvalTask.from_pair("c", multiple_choice("Term?", ["Male", "Humans"]), "Humans"),
        EvalTask.from_pair("c", multiple_choice("Term?", ["Male", "Humans"]), "Male"),
    ]
    gens = [" iron deficiency in infants.\nmore", "aspirin", "Humans", "Humans"]
    s = score_tasks(tasks, gens, loss=1.5, loss_tokens=10)
    assert s.n == 4 and s.n_free_form == 2 and s.n_multiple_choice == 2
    assert s.exact_match == 0.5
    assert s.f1 == pytest.approx((1.0 + 2 * 1.0 * 0.5 / 1.5) / 2)
    assert s.option_accuracy == 0.5
    assert s.answer_loss == 1.5 and len(s.examples) == 4


def test_input_files(tmp_path):
    good = tmp_path / "tasks.jsonl"
    good.write_text(json.dumps({"context": "c1", "instruction": "q", "response": "a"}) + "\n\n"
                    + json.dumps({"context": "c2", "pairs": [{"instruction": "q1", "response": "a1"},
                                                             {"instruction": "q2", "response": "a2"}]}) + "\n")
    tasks = read_tasks(good)
    assert [(t.context, t.instruction) for t in tasks] == [("c1", "q"), ("c2", "q1"), ("c2", "q2")]
    assert len(read_tasks(good, limit=2)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "c", "instruction": "q", "response": "a"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        read_tasks(bad)
    bad.write_text(json.dumps({"context": "c", "pairs": [{"instruction": "q"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: pairs\[0\]\.'response'"):
        read_tasks(bad)
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"body": "b"}) + "\n")
    with pytest.raises(DataError, match=r"texts.jsonl:2: field 'text'"):
        read_texts(texts)


def _reference_nll(model, ids: list[int], start: int) -> tuple[float, int]:
    """Summed loss over ids[start:] from one unbatched, unpadded forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[start - 1 : -1], torch.tensor(ids[start:]), reduction="sum")
    return float(nll), len(ids) - start


def test_perplexity_matches_unbatched_reference(tiny):
    model, tok = tiny
    got = heldout_perplexity(model, tok, TEXTS, batch_size=3, bf16=False)
    total = count = 0
    for text in TEXTS:
        ids = [tok.bos_id, *tok.encode(text)]
        loss, n = _reference_nll(model, ids, 1)
        total, count = total + loss, count + n
    assert got["tokens"] == count
    assert got["loss"] == pytest.approx(total / count, abs=1e-4)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_answer_loss_matches_unbatched_reference(tiny):
    model, tok = tiny
    tasks = [EvalTask.from_pair(TEXTS[0], "What does aspirin reduce?", "The risk of infarction."),
             EvalTask.from_pair(TEXTS[1], "Who was studied?", "120 children")]
    got, n_tokens = answer_losses(model, tok, tasks, batch_size=2, bf16=False)
    total = count = 0
    for t in tasks:
        prompt = [tok.bos_id, *tok.encode(t.context + question_prompt(t.instruction))]
        loss, n = _reference_nll(model, prompt + tok.encode(" " + t.response), len(prompt))
        total, count = total + loss, count + n
    assert n_tokens == count
    assert got == pytest.approx(total / count, abs=1e-4)


def test_evaluate_model_and_cli(tiny_dir, tmp_path):
    tasks = [EvalTask.from_pair(TEXTS[0], "What does aspirin reduce?", "The risk of infarction."),
             EvalTask.from_pair(TEXTS[1], multiple_choice("Who?", ["children", "adults"]), "children")]
    result = evaluate_model(tiny_dir, TEXTS, tasks, max_new_tokens=4, bf16=False)
    assert result["heldout"]["texts"] == 3 and math.isfinite(result["heldout"]["perplexity"])
    t = result["tasks"]
    assert t["n"] == 2 and t["n_free_form"] == 1 and t["n_multiple_choice"] == 1
    assert 0.0 <= t["f1"] <= 1.0 and t["option_accuracy"] in (0.0, 1.0) and math.isfinite(t["answer_loss"])
    # A random model's loss is near ln(vocab): the numbers come from the model, not constants.
    assert abs(result["heldout"]["loss"] - math.log(49152)) < 1.0

    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": x}) + "\n" for x in TEXTS))
    out = tmp_path / "eval.json"
    assert main(["--model", str(tiny_dir), "--texts", str(texts), "--fp32", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["heldout"]["loss"] == pytest.approx(result["heldout"]["loss"], abs=1e-5)
    # The default dtype is auto: fp32 on CPU (bf16 autocast is 5.5x slower there), bf16 on a GPU.
    assert scoring_bf16("auto") == torch.cuda.is_available()
    assert scoring_bf16("bfloat16") and not scoring_bf16("float32")
    if not torch.cuda.is_available():
        assert main(["--model", str(tiny_dir), "--texts", str(texts), "--out", str(out)]) == 0
        assert json.loads(out.read_text())["heldout"]["loss"] == pytest.approx(result["heldout"]["loss"], abs=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["--model", str(tiny_dir), "--tasks", str(bad)]) == 2


def _damaged_copy(src, dst, damage: str):
    import shutil

    shutil.copytree(src, dst)
    if damage == "truncated weights":
        weights = dst / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        (dst / damage).unlink()
    return dst


@pytest.mark.parametrize(("case", "says"), [
    ("empty texts file", r"texts\.jsonl: no texts in it"),
    ("blank texts file", r"texts\.jsonl: no texts in it"),
    ("--limit_texts 0", r"--limit_texts must be at least 1"),
    ("--max_length 1", r"--max_length must be at least 16"),
    ("output is a folder", r"out: a folder stands where the output must be"),
    ("output under a file", r"cannot write under .*blocker: a file stands where a folder must be"),
    ("truncated weights", r"model: cannot load the model"),
    ("config.json", r"model: not a Hugging Face model directory \(no config\.json\)"),
    ("model.safetensors", r"model: no weights \(model\.safetensors"),
    ("tokenizer.json", r"model: no tokenizer files"),
])
def test_bad_inputs_are_one_line_before_scoring(tiny_dir, tmp_path, capsys, case, says):
    texts = tmp_path / "texts.jsonl"
    texts.write_text({"empty texts file": "", "blank texts file": "\n  \n\n"}.get(
        case, "".join(json.dumps({"text": x}) + "\n" for x in TEXTS)))
    (tmp_path / "out").mkdir()
    (tmp_path / "blocker").write_text("x")
    output = {"output is a folder": tmp_path / "out", "output under a file": tmp_path / "blocker" / "e.json"}.get(
        case, tmp_path / "e.json")
    model = tiny_dir
    if case in ("truncated weights", "config.json", "model.safetensors", "tokenizer.json"):
        model = _damaged_copy(tiny_dir, tmp_path / "model", case)
    extra = {"--limit_texts 0": ["--limit_texts", "0"], "--max_length 1": ["--max_length", "1"]}.get(case, [])
    code = main(["--model", str(model), "--texts", str(texts), "--fp32", "--output", str(output), *extra])
    err = capsys.readouterr().err
    assert code == 2, err  # in process: an escaped exception would fail the test itself
    lines = [ln for ln in err.splitlines() if "error: " in ln]
    assert len(lines) == 1 and __import__("re").search(says, lines[0]), err
    assert not (tmp_path / "e.json").exists() and sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_limit_texts_scores_exactly_that_many(tiny_dir, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": x}) + "\n" for x in TEXTS))
    out = tmp_path / "e.json"
    assert main(["--model", str(tiny_dir), "--texts", str(texts), "--fp32", "--limit_texts", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["heldout"]["texts"] == 2
