"""``megatron_ipt.eval.paper`` end to end on an exported-format tiny Llama (Mistral's tokenizer) and
hand-written AdaptLLM fixtures: lm-eval's predictions against an independent implementation of the
reference scoring, the BOS switch, the command's JSON, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ipt.eval.paper import main
from megatron_ipt.eval.paper_tasks.utils import (
    DOMAINS,
    TASKS,
    agg_headline,
    agg_micro_f1,
    agg_weighted_f1,
    convfinqa_match,
    ner_f1,
    read_rows,
)

FIXTURES = Path(__file__).resolve().parent / "paper_fixtures"
REPO = Path(__file__).resolve().parents[2]
CONTEXT = 30  # the tiny model's context: some fixture rows are longer (counted, scored whole)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, save_tiny_llama) -> Path:
    from megatron_ipt.train.export import save_tokenizer

    out = save_tiny_llama(tmp_path_factory.mktemp("paper") / "model", max_position_embeddings=CONTEXT)
    save_tokenizer("mistral", out)
    return out


@pytest.fixture(scope="module")
def hf(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(model_dir))


def reference_mean_nll(hf, text: str, option: str, add_bos: bool, span_start: str | None = None) -> float:
    """The reference: NLL of tok(q + " " + o)[len(tok(q)):] after the whole prefix, averaged over those
    tokens (``span_start`` replaces q in the split only: lm-eval's whitespace move, for contrast)."""
    import torch

    model, _ = hf
    full = encode(hf, text + " " + option, add_bos)
    head = len(encode(hf, text if span_start is None else span_start, add_bos))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
    nll = [-logp[t - 1, full[t]].item() for t in range(head, len(full))]
    return sum(nll) / len(nll)


def encode(hf, text: str, add_bos: bool) -> list[int]:
    """The text's tokens, after BOS when ``add_bos`` (the exported tokenizer adds none by itself)."""
    _, tok = hf
    return [tok.bos_token_id] * add_bos + tok(text, add_special_tokens=False)["input_ids"]


def reference_option_scores(hf, task: str, add_bos: bool) -> list[list[float]]:
    return [[reference_mean_nll(hf, r["input"], o, add_bos) for o in r["options"]] for r in read_rows(FIXTURES, task)]


def argmin(xs: list[float]) -> int:
    return min(range(len(xs)), key=lambda i: (xs[i], i))


def metric_by_hand(task: str, preds: list) -> float:
    rows = read_rows(FIXTURES, task)
    metric = TASKS[task].metric
    if metric == "acc":
        return 100 * sum(p == r["gold_index"] for p, r in zip(preds, rows, strict=True)) / len(rows)
    if metric == "micro_f1":
        return 100 * agg_micro_f1([(r["gold_index"], p) for p, r in zip(preds, rows, strict=True)])
    if metric == "weighted_f1":
        return 100 * agg_weighted_f1([(r["gold_index"], p) for p, r in zip(preds, rows, strict=True)])
    if metric == "headline_f1":
        return 100 * agg_headline([(r["class_id"], r["gold_index"], p) for p, r in zip(preds, rows, strict=True)])
    if metric == "entity_f1":
        return 100 * sum(ner_f1(" " + r["label"][0], p) for p, r in zip(preds, rows, strict=True)) / len(rows)
    return 100 * sum(convfinqa_match(" " + r["label"][0], p) for p, r in zip(preds, rows, strict=True)) / len(rows)


def check_option_tasks(doc: dict, hf, tasks: list[str], add_bos: bool) -> None:
    for task in tasks:
        got = doc["tasks"][task]
        ref = reference_option_scores(hf, task, add_bos)
        assert got["predictions"] == [argmin(r) for r in ref], task
        assert got["mean_nll"] == [pytest.approx(r, abs=1e-4) for r in ref], task
        assert got["n"] == len(ref) and got["metric"] == TASKS[task].metric
        assert got["score"] == pytest.approx(metric_by_hand(task, got["predictions"]))
        longest = [max(len(encode(hf, r["input"] + " " + o, add_bos)) for o in r["options"])
                   for r in read_rows(FIXTURES, task)]
        assert got["over_context"] == sum(n > CONTEXT for n in longest), task


@pytest.fixture(scope="module")
def biomedicine(model_dir, tmp_path_factory) -> dict[bool, dict]:
    """The biomedicine suite scored with BOS and without (one request per batch: the reference's shapes)."""
    out = {}
    for bos in (True, False):
        path = tmp_path_factory.mktemp("bio") / "scores.json"
        assert main(["--suite", "biomedicine", "--data-dir", str(FIXTURES), "--model", str(model_dir), "--output",
                     str(path), "--device", "cpu", "--batch-size", "1", "--add-bos-token", str(bos).lower()]) == 0
        out[bos] = json.loads(path.read_text())
    return out


def test_biomedicine_predictions_equal_the_reference_scoring(biomedicine, hf):
    doc = biomedicine[True]
    assert list(doc["tasks"]) == DOMAINS["biomedicine"]
    check_option_tasks(doc, hf, DOMAINS["biomedicine"], add_bos=True)
    assert sum(t["over_context"] for t in doc["tasks"].values()) > 0  # some rows ran past the context, whole
    assert doc["average"] == pytest.approx(sum(t["score"] for t in doc["tasks"].values()) / 5)
    assert doc["settings"]["add_bos_token"] is True and doc["settings"]["suite"] == "biomedicine"


def test_input_ending_in_whitespace_is_scored_over_the_reference_span(biomedicine, hf):
    row = read_rows(FIXTURES, "pubmedqa")[2]
    assert row["input"].endswith(" ")
    got = biomedicine[True]["tasks"]["pubmedqa"]["mean_nll"][2]
    ref = [reference_mean_nll(hf, row["input"], o, True) for o in row["options"]]
    moved = [reference_mean_nll(hf, row["input"], o, True, span_start=row["input"].rstrip()) for o in row["options"]]
    assert got == pytest.approx(ref, abs=1e-4)
    assert all(abs(a - b) > 1e-3 for a, b in zip(ref, moved, strict=True))  # lm-eval's own split differs


def test_bos_switch_reaches_the_model(biomedicine, hf):
    off, on = biomedicine[False], biomedicine[True]
    check_option_tasks(off, hf, DOMAINS["biomedicine"], add_bos=False)
    assert off["settings"]["add_bos_token"] is False
    for task in DOMAINS["biomedicine"]:
        for a, b in zip(off["tasks"][task]["mean_nll"], on["tasks"][task]["mean_nll"], strict=True):
            assert a != pytest.approx(b, abs=1e-4), task  # BOS changes every option's score


def test_finance_command_end_to_end(model_dir, hf, tmp_path):
    import torch

    out = tmp_path / "finance.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "megatron_ipt.eval.paper", "--suite", "finance", "--data-dir",
                           str(FIXTURES), "--model", str(model_dir), "--output", str(out), "--device", "cpu",
                           "--batch-size", "1"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Model" in proc.stdout and "Headline" in proc.stdout and "ConvFinQA" in proc.stdout and "Average" in proc.stdout
    doc = json.loads(out.read_text())
    assert list(doc["tasks"]) == DOMAINS["finance"]
    check_option_tasks(doc, hf, ["fpb", "fiqa_sa", "headline"], add_bos=True)
    model, tok = hf
    for task in ("ner", "convfinqa"):
        rows = read_rows(FIXTURES, task)
        want = []
        for r in rows:  # greedy, at most 100 new tokens, the text up to the first newline
            ids = torch.tensor([encode(hf, r["input"], True)])
            with torch.no_grad():
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=100, do_sample=False)
            want.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0])
        got = doc["tasks"][task]
        assert got["predictions"] == want, task
        assert got["score"] == pytest.approx(metric_by_hand(task, want))
        assert got["over_context"] == len(rows) and got["prompts_cut"] == 0
    assert doc["average"] == pytest.approx(sum(t["score"] for t in doc["tasks"].values()) / 5)
    assert doc["settings"]["average"] == "unweighted mean of the 5 task scores"


def test_bad_task_file_is_one_line(tmp_path, model_dir, capsys):
    data = tmp_path / "data"
    for task in DOMAINS["finance"]:
        (data / TASKS[task].path).parent.mkdir(parents=True, exist_ok=True)
        (data / TASKS[task].path).write_text((FIXTURES / TASKS[task].path).read_text())
    (data / "FPB/test.json").write_text('{"input": "x", "options": ["a", "b", "c"]}\n')
    assert main(["--suite", "finance", "--data-dir", str(data), "--model", str(model_dir), "--output",
                 str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FPB/test.json line 1: field 'gold_index'" in err
    (data / "FPB/test.json").unlink()
    assert main(["--suite", "finance", "--data-dir", str(data), "--model", str(model_dir), "--output",
                 str(tmp_path / "o.json")]) == 2
    assert "FPB/test.json: file not found" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_general_suite_names_a_missing_dataset_in_one_line(tmp_path, model_dir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               HF_HOME=str(tmp_path / "hf"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    run = [sys.executable, "-m", "megatron_ipt.eval.paper"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert helped.returncode == 0 and "UNVERIFIED" in helped.stdout and "--add_bos_token" in helped.stdout
    proc = subprocess.run([*run, "--suite", "general", "--model", str(model_dir), "--output", str(tmp_path / "g.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: general suite: task arc_easy: dataset allenai/ai2_arc is not in the local HF cache")
    assert "Traceback" not in proc.stderr


def test_general_preset_reports_lm_evals_metric_and_its_choices(tmp_path, model_dir, monkeypatch):
    """The general path on local stand-in tasks (the real datasets need the hub): a plain task read by
    acc_norm at 0 shots and a group of two read by acc at 5 shots, like arc_easy and mmlu."""
    from lm_eval.tasks import TaskManager

    from megatron_ipt.eval import paper
    from megatron_ipt.eval.suite import write_suite

    items = [{"id": f"q{i}", "query": f"Item {i}: the colour of the sky is", "choices": [" blue", " green", " loud"],
              "gold": i % 3} for i in range(8)]
    suite = tmp_path / "suite"
    write_suite({"sky": items, "sub_a": items[:6], "sub_b": items[2:]}, suite)
    (suite / "grp.yaml").write_text("group: ipt_grp\ntask: [ipt_sub_a, ipt_sub_b]\naggregate_metric_list:\n"
                                    "  - {metric: acc, aggregation: mean, weight_by_size: true}\n")
    monkeypatch.setattr(paper, "GENERAL", [paper.GeneralTask("ipt_sky", "Sky", 0, "acc_norm"),
                                           paper.GeneralTask("ipt_grp", "Grp", 5, "acc")])
    monkeypatch.setattr(paper, "general_task_manager",
                        lambda: TaskManager(include_path=str(suite), include_defaults=False))
    out = tmp_path / "general.json"
    assert main(["--suite", "general", "--model", str(model_dir), "--output", str(out), "--device", "cpu"]) == 0
    doc = json.loads(out.read_text())
    sky, grp = doc["tasks"]["ipt_sky"], doc["tasks"]["ipt_grp"]
    assert sky["n"] == 8 and sky["shots"] == 0 and grp["n"] == 12 and grp["shots"] == 5
    # The score is lm-eval's metric over exactly these choices.
    assert sky["score"] == pytest.approx(100 * sum(p == it["gold"] for p, it in zip(sky["predictions"], items,
                                                                                   strict=True)) / 8)
    golds = [it["gold"] for it in items[:6] + items[2:]]
    assert grp["score"] == pytest.approx(100 * sum(p == g for p, g in zip(grp["predictions"], golds, strict=True)) / 12)
    assert doc["average"] == pytest.approx((sky["score"] + grp["score"]) / 2)
    assert "unverified" in doc["settings"]["unverified"] and doc["settings"]["add_bos_token"] is True
