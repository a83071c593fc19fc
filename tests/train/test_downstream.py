"""In-loop downstream evaluation: lm-eval tasks scored on the live model every N steps, as curves.

In-process: the scores equal lm-eval's on the exported directory of the same weights, and the RNG
states and train mode survive. Real 2-rank gloo DeepSpeed jobs: ZeRO-3 (every rank in lockstep)
logs the curve at its interval and the same curve after a stop and resume; ZeRO-2 (tasks sharded
over the ranks) logs every task and leaves the training losses exactly as without it.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ipt.config import ConfigError
from megatron_ipt.eval.suite import score_suite, write_suite
from megatron_ipt.train.downstream import EvalConfig, resolve_tasks

DRUGS = [" metformin", " aspirin", " atorvastatin"]


def _items(n: int, topic: str) -> list[dict]:
    return [{"id": f"{topic}{i}", "query": f"Question {i} about {topic}: which drug is meant?", "choices": DRUGS,
             "gold": i % 3} for i in range(n)]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    write_suite({"glucose": _items(6, "glucose"), "lipids": _items(4, "lipids")}, out)
    return out


def test_scores_equal_the_exported_models_and_training_state_survives(tmp_path: Path, suite: Path,
                                                                     save_tiny_llama) -> None:
    from transformers import AutoModelForCausalLM

    from megatron_ipt.train.export import save_tokenizer

    model_dir = save_tiny_llama(tmp_path / "model")
    save_tokenizer("mistral", model_dir)
    module = AutoModelForCausalLM.from_pretrained(model_dir).train()
    evaluator = EvalConfig(downstream_interval=3, downstream_tasks=[str(suite)]).build("mistral", 10, lockstep=False)
    assert [s for s in range(1, 11) if evaluator.due(s)] == [3, 6, 9, 10]
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    scores = evaluator.score(module, lockstep=False, rank=0, world=1)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected  # lm-eval's seeding undone
    assert module.training
    offline = score_suite(model_dir, suite)["tasks"]
    for task in ("ipt_glucose", "ipt_lipids"):
        assert scores[f"{task}/acc"] == offline[task]["acc"]
        assert scores[f"{task}/acc_norm"] == offline[task]["acc_norm"]
        assert scores[f"{task}/gold_loglik"] < 0
    assert scores["mean/acc"] == pytest.approx((offline["ipt_glucose"]["acc"] + offline["ipt_lipids"]["acc"]) / 2)
    assert evaluator.score(module, lockstep=False, rank=0, world=1) == scores  # a function of the weights only


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="downstream_tasks is empty"):
        EvalConfig(downstream_interval=5).validate()
    with pytest.raises(ConfigError, match="must be 0"):
        EvalConfig(downstream_interval=-1, downstream_tasks=["x"]).validate()
    with pytest.raises(ConfigError, match="no such folder"):
        EvalConfig(downstream_interval=5, downstream_tasks=[str(tmp_path / "missing")]).build("mistral", 10, lockstep=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no lm-eval task YAML"):
        EvalConfig(downstream_interval=5, downstream_tasks=[str(tmp_path / "empty")],
                   downstream_trust_task_code=True).build("mistral", 10, lockstep=False)
    assert EvalConfig().build("mistral", 10, lockstep=False) is None


def _with_code(suite: Path, tmp_path: Path, kind: str) -> Path:
    """A copy of the data-only suite made into code one way."""
    folder = tmp_path / kind.replace("!", "")
    shutil.copytree(suite, folder)
    task = folder / "glucose.yaml"
    if kind == "!function":
        task.write_text(task.read_text() + "process_docs: !function utils.docs\n")
    elif kind == "utils.py":
        (folder / "utils.py").write_text("def docs(ds):\n    return ds\n")
    return folder


def test_a_data_only_folder_needs_no_trust_flag(suite: Path) -> None:
    assert resolve_tasks([str(suite)]) == (["ipt_glucose", "ipt_lipids"], [str(suite.resolve())])


@pytest.mark.parametrize(("kind", "says"), [
    ("!function", r"glucose\.yaml:\d+: '!function utils\.docs' runs Python named by the task folder"),
    ("utils.py", r"utils\.py: Python in the task folder"),
])
def test_a_folder_with_code_is_refused_in_one_line_unless_trusted(tmp_path: Path, suite: Path, kind: str,
                                                                  says: str) -> None:
    folder = _with_code(suite, tmp_path, kind)
    with pytest.raises(ConfigError, match=f"eval.downstream_tasks: .*{says}.*downstream_trust_task_code=true") as err:
        resolve_tasks([str(folder)])
    assert "\n" not in str(err.value)
    names, folders = resolve_tasks([str(folder)], trust_task_code=True)
    assert names == ["ipt_glucose", "ipt_lipids"] and folders == [str(folder.resolve())]


def test_an_unreadable_task_yaml_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match=r"eval\.downstream_tasks: .*bad\.yaml:\d+: malformed YAML"):
        resolve_tasks([str(tmp_path)])


def _args(prefix: str, run: Path, suite: Path, zero: int, *extra: str, downstream: bool = True) -> list[str]:
    args = ["--config", "configs/tiny.yaml", f"--data.train={prefix}", f"--run_dir={run}",
            f"--checkpoint.dir={run}/ckpt", "--steps=4", "--checkpoint.interval=2", "--logging.interval=1",
            "--logging.eval_interval=0", "--logging.tensorboard=false", f"--ds_config=ds_configs/zero{zero}.json"]
    if downstream:
        args += ["--eval.downstream_interval=2", f"--eval.downstream_tasks=[{suite}]"]
    return [*args, *extra]


def _curve(metrics, run: Path) -> dict[int, dict]:
    return {step: {k: v for k, v in rec.items() if k not in ("time", "seconds")}
            for step, rec in metrics(run, "downstream").items()}


def _losses(metrics, run: Path) -> dict[int, float]:
    return {step: rec["loss"] for step, rec in metrics(run).items()}


def test_zero3_curve_at_its_interval_and_the_same_after_resume(tmp_path: Path, suite: Path, pubmed_prefixes,
                                                              train_job, metrics) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    at_start = "--eval.downstream_at_start=true"
    train_job(2, _args(pubmed_prefixes["train"], whole, suite, 3, at_start))
    curve = _curve(metrics, whole)
    assert sorted(curve) == [0, 2, 4]
    for rec in curve.values():
        assert {"ipt_glucose/acc", "ipt_lipids/acc_norm", "ipt_glucose/gold_loglik", "mean/acc"} <= set(rec)
        # Per-item scores (for intervals over items and seeds) agree with the task's mean.
        items = rec["items"]["ipt_glucose"]
        assert len(items["acc"]) == len(items["gold_loglik"]) > 1 and set(items["acc"]) <= {0.0, 1.0}
        assert sum(items["acc"]) / len(items["acc"]) == pytest.approx(rec["ipt_glucose/acc"])
        assert sum(items["gold_loglik"]) / len(items["gold_loglik"]) == pytest.approx(rec["ipt_glucose/gold_loglik"])
    assert curve[0]["mean/gold_loglik"] != curve[2]["mean/gold_loglik"] != curve[4]["mean/gold_loglik"]

    train_job(2, _args(pubmed_prefixes["train"], resumed, suite, 3, at_start, "--stop_after=2"))
    assert sorted(_curve(metrics, resumed)) == [0, 2]
    assert (resumed / "ckpt").is_dir()
    train_job(2, _args(pubmed_prefixes["train"], resumed, suite, 3, at_start))
    assert _curve(metrics, resumed) == curve
    assert _losses(metrics, resumed) == _losses(metrics, whole)


def test_zero2_sharded_tasks_leave_training_exactly_as_without(tmp_path: Path, suite: Path, pubmed_prefixes,
                                                               train_job, metrics) -> None:
    on, off = tmp_path / "on", tmp_path / "off"
    train_job(2, _args(pubmed_prefixes["train"], on, suite, 2))
    train_job(2, _args(pubmed_prefixes["train"], off, suite, 2, downstream=False))
    curve = _curve(metrics, on)
    assert sorted(curve) == [2, 4]
    # One task scored on each rank, both gathered into rank 0's record.
    assert {"ipt_glucose/acc", "ipt_lipids/acc", "mean/acc"} <= set(curve[2])
    assert _losses(metrics, on) == _losses(metrics, off)
    assert metrics(off, "downstream") == {}
