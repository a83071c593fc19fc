"""lm-evaluation-harness suites over local JSONL: written, loaded and scored by lm-eval's own
``simple_evaluate`` on an exported tiny model (no hub at run time)."""

from __future__ import annotations

import json

import pytest

from megatron_ipt.eval.suite import SuiteError, main, suite_tasks, write_suite

ITEMS = [
    {"id": f"q{i}", "query": f"Item {i}: the colour of the sky is", "choices": [" blue", " green", " loud"],
     "gold": i % 3}
    for i in range(6)
]


def test_write_suite_validates_items(tmp_path):
    with pytest.raises(SuiteError, match="item 1"):
        write_suite({"bad": [ITEMS[0], {"query": "x", "choices": ["a"], "gold": 3}]}, tmp_path)
    with pytest.raises(SuiteError, match="no items"):
        write_suite({"empty": []}, tmp_path)
    with pytest.raises(SuiteError, match="no task YAML"):
        suite_tasks(tmp_path / "nothing")


def test_tiny_exported_model_scores_through_simple_evaluate(tmp_path, smollm2_dir, monkeypatch):
    from megatron_ipt.demo.start_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model", tokenizer_dir=smollm2_dir)
    names = write_suite({"sky": ITEMS, "sky_again": ITEMS[:4]}, tmp_path / "suite")
    assert names == ["ipt_sky", "ipt_sky_again"] == sorted(suite_tasks(tmp_path / "suite"))
    # The data path is absolute in the YAML: the suite runs from any working directory.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "scores.json"
    assert main(["--model", str(model), "--suite", str(tmp_path / "suite"), "--out", str(out), "--device", "cpu"]) == 0
    scores = json.loads(out.read_text())
    sky = scores["tasks"]["ipt_sky"]
    assert sky["n"] == 6 and scores["tasks"]["ipt_sky_again"]["n"] == 4
    assert sky["items"]["id"] == [f"q{i}" for i in range(6)]
    assert set(sky["items"]["acc"]) <= {0.0, 1.0}
    assert sky["acc"] == pytest.approx(sum(sky["items"]["acc"]) / 6)
    assert sky["acc_norm"] == pytest.approx(sum(sky["items"]["acc_norm"]) / 6)
