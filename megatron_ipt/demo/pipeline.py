"""The demo's stages 3-7, each a call of the project's public command-line tools.

Nothing here re-implements a part: tuning data comes from ``data_tools.build_synthesizer_data``,
training from ``megatron_ipt.train`` (under torchrun: one process with ZeRO-0, fp32 on CPU, or
ZeRO-3 over two), synthesis from ``data_tools.synthesize``, corpora from
``data_tools.build_corpora`` and ``data_tools.preprocess_data``, instruction data from
``data_tools.build_instruction_data``, scores from
``data_tools.evaluate_synthesizer``, ``megatron_ipt.eval`` (perplexity) and ``megatron_ipt.eval.suite``
(lm-evaluation-harness), in-loop during instruction tuning too. Training runs in its own process and
resumes on its own after a kill.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from megatron_ipt.config import auto_dtype
from megatron_ipt.data.indexed import summary_path
from megatron_ipt.demo.paths import ARMS, DemoPaths
from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.demo.stages import DemoError, run_command, run_main, torchrun_module
from megatron_ipt.demo.start_model import start_model_dir
from megatron_ipt.demo.tuning_curve import downstream_records
from megatron_ipt.resources import shipped_dir

CONFIGS = shipped_dir("configs") / "demo"
RAW_DOCUMENT = "_text_document"  # suffix preprocess_data adds to the output prefix


def _overrides(values: dict[str, Any]) -> list[str]:
    return [f"--{k}={v}" for k, v in values.items()]


def _train(paths: DemoPaths, size: DemoSize, name: str, config: Path, values: dict[str, Any],
           export: Path | None) -> float:
    """One training run under torchrun (one process with ZeRO-0, or two with ZeRO-3; resumes from its
    checkpoints when rerun), then its export to an HF directory (None: no export)."""
    values = {"ds_config": "ds_configs/zero0.json" if size.nproc == 1 else "ds_configs/zero3.json", **values}
    threads = max(1, (os.cpu_count() or 2) // size.nproc)
    seconds = run_command(torchrun_module("megatron_ipt.train", size.nproc, "--config", str(config),
                                          *_overrides(values)),
                          paths.logs / f"train_{name}.log", threads=threads, what=f"training run '{name}'")
    if export is None:
        return seconds
    seconds += run_main("megatron_ipt.train.export", [values["checkpoint.dir"], export, "--dtype",
                                                "float32" if size.tiny_model else "bfloat16"], f"exporting '{name}'")
    return seconds


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------ stage 3: the synthesizer


def pair_loss(paths: DemoPaths, model: Path, prefix: str, name: str, max_documents: int) -> dict:
    """Held-out pair-token loss (``prefix`` is build_synthesizer_data's output prefix)."""
    out = paths.tuning_run.parent / f"pair_loss_{name}.json"
    if not out.exists():
        run_main("data_tools.evaluate_synthesizer", ["--model", model, "--data-prefix", prefix, "--no-generation",
                                                     "--max-documents", max_documents, "--output", out],
                 f"held-out pair loss of the {name} synthesizer")
    return _read_json(out)


def tune_synthesizer(size: DemoSize, paths: DemoPaths) -> dict:
    start = start_model_dir(size, paths)
    prefix = str(paths.tuning_data / "pubmed_tasks")
    run_main("data_tools.build_synthesizer_data", ["--input", paths.mined, "--format", "jsonl", "--output-prefix",
                                                   prefix, "--tokenizer", start, "--max-length", size.tune_seq_len,
                                                   "--held-out", "0.1"], "building the synthesizer's tuning data")
    train_prefix, heldout_prefix = f"{prefix}_train", f"{prefix}_heldout"
    max_docs = 2 if size.tiny_model else 6
    before = pair_loss(paths, start, prefix, "before", max_docs)
    seconds = 0.0
    if not (paths.synthesizer / "config.json").is_file():
        seconds = _train(paths, size, "synthesizer", CONFIGS / "tune_synthesizer.yaml", {
            "model.init_from": start, "data.tokenizer": start, "data.train": train_prefix,
            "data.seq_len": size.tune_seq_len, "steps": size.tune_steps, "optim.lr": size.tune_lr,
            "micro_batch_size": size.tune_batch // size.nproc, "global_batch_size": size.tune_batch,
            "precision": auto_dtype().value,
            "run_dir": paths.tuning_run, "checkpoint.dir": paths.tuning_run / "checkpoints",
        }, export=paths.synthesizer)
    after = pair_loss(paths, paths.synthesizer, prefix, "after", max_docs)
    summary_file = summary_path(prefix)
    return {
        "start_model": str(start),
        "synthesizer": str(paths.synthesizer),
        "train_prefix": train_prefix,
        "heldout_prefix": heldout_prefix,
        "tuning_summary": _read_json(summary_file) if summary_file.exists() else {},
        "steps": size.tune_steps,
        "tokens": size.tune_steps * size.tune_seq_len * size.tune_batch,
        "train_seconds": seconds,
        "pair_loss_before": before,
        "pair_loss_after": after,
        "run_dir": str(paths.tuning_run),
    }


# ------------------------------------------------------------------ stage 4: synthesis + corpora


def synthesize(size: DemoSize, paths: DemoPaths, start: str) -> dict:
    run_main("data_tools.synthesize", ["--config", CONFIGS / "synthesize.yaml", *_overrides({
        "input": f"[{paths.raw}]", "output_dir": paths.synthesis, "engine.model": paths.synthesizer,
        "rounds": size.rounds, "max_new_tokens": size.synth_max_new_tokens,
        "engine.max_model_len": size.synth_max_model_len})], "synthesis")
    stats = _read_json(paths.synthesis / f"{paths.raw.stem}.stats.json")
    # Vanilla's data: the same domain texts, raw, wrapped in BOS/EOS like the recipe's documents.
    raw_prefix = str(paths.corpora / "raw")
    run_main("data_tools.preprocess_data", ["--input", paths.raw, "--output-prefix", raw_prefix, "--tokenizer", start,
                                            "--prepend-bos", "--append-eod", "--workers", "0"],
             "tokenizing the raw corpus")
    instruct = build_domain_corpus(paths, start)
    return {"synthesis_stats": stats, "synthesis_output": str(paths.synthesis / f"{paths.raw.stem}.jsonl"),
            "raw_prefix": raw_prefix + RAW_DOCUMENT, **instruct}


def build_domain_corpus(paths: DemoPaths, start: str) -> dict:
    """The ``domain`` recipe: every synthesized text templated, mixed 1:1 by tokens with the general
    (non-biomedical) instructions; the contamination gate keeps the evaluation suite's 13-grams out."""
    out = paths.corpora / "instruct"
    # The contamination gate drops synthesized pairs and instructions sharing a 13-gram with the suite.
    run_main("data_tools.build_corpora", ["--recipe=domain", f"--synthesized={paths.synthesis}",
                                          f"--contamination.eval_sets={paths.eval_suite}",
                                          f"--instructions={paths.general_instructions}", f"--tokenizer={start}",
                                          f"--output-dir={out}", "--workers=0"],
             "building the instruction-augmented corpus")
    report = _read_json(out / "mixture_report.json") if (out / "mixture_report.json").exists() else {}
    return {"instruct_blend": str(out / "blend.yaml"), "mixture": report}


def blend_of(path: str) -> str:
    """The trainer's ``data.train`` value (Megatron's ``"w prefix ..."``) from a blend YAML."""
    from megatron_ipt.data.blend import Blend, BlendError

    try:
        return Blend.load(path).to_megatron()
    except BlendError as err:
        raise DemoError(str(err)) from err


# ------------------------------------------------------------------ stage 5: continual pre-training


def run_names(size: DemoSize) -> dict[str, list[str]]:
    """Arm -> its runs, one per seed (``vanilla_s0``, ...)."""
    return {arm: [f"{arm}_s{k}" for k in range(size.seeds)] for arm in ARMS}


def continual_pretrain(size: DemoSize, paths: DemoPaths, start: str, data: dict[str, str]) -> dict:
    """Every run of both arms with the same steps x global batch x sequence length, from the same
    start model; the seeds of an arm differ in data order only (``data.seed``)."""
    runs = {}
    for arm, names in run_names(size).items():
        for k, name in enumerate(names):
            seconds = 0.0
            if not (paths.model(name) / "config.json").is_file():
                seconds = _train(paths, size, name, CONFIGS / "continual.yaml", {
                    "model.init_from": start, "data.tokenizer": start, "data.train": data[arm],
                    "data.seq_len": size.seq_len, "data.seed": 1234 + k, "steps": size.pretrain_steps,
                    "micro_batch_size": size.micro_batch, "global_batch_size": size.global_batch,
                    "optim.lr": size.pretrain_lr, "precision": auto_dtype().value,
                    "run_dir": paths.run_dir(name), "checkpoint.dir": paths.run_dir(name) / "checkpoints",
                }, export=paths.model(name))
            runs[name] = {"arm": arm, "seed": k, "data": data[arm], "model": str(paths.model(name)),
                          "run_dir": str(paths.run_dir(name)), "metrics": str(paths.run_dir(name) / "metrics.jsonl"),
                          "tensorboard": str(paths.run_dir(name) / "tensorboard"), "train_seconds": seconds,
                          "tokens": size.pretrain_tokens}
    # Tokens as the trainer counted them (per source dataset), summed over each arm's seeds.
    per_source: dict[str, dict[str, int]] = {arm: {} for arm in ARMS}
    for r in runs.values():
        rows = [json.loads(line) for line in Path(r["metrics"]).read_text().splitlines() if line.strip()]
        last = [row for row in rows if row.get("kind") == "train"][-1]
        r["tokens_per_source"] = last.get("tokens_per_dataset", {})
        for source, n in r["tokens_per_source"].items():
            per_source[r["arm"]][source] = per_source[r["arm"]].get(source, 0) + int(n)
    tokens = {arm: sum(per_source[arm].values()) for arm in ARMS}
    if len(set(tokens.values())) != 1 or tokens[ARMS[0]] != size.pretrain_tokens * size.seeds:
        raise DemoError(f"the arms did not train on equal tokens: {tokens} (expected "
                        f"{size.pretrain_tokens * size.seeds:,} each)")
    return {"steps": size.pretrain_steps, "tokens_per_run": size.pretrain_tokens, "tokens_per_arm": tokens,
            "tokens_per_source": per_source, "runs": runs}


# ------------------------------------------------------------------ stage 6: evaluation


def evaluate_models(size: DemoSize, paths: DemoPaths, models: dict[str, str]) -> dict:
    """Held-out perplexity (per-text losses kept for the intervals) and the lm-eval suite, per model."""
    results = {}
    for name, model in models.items():
        ppl, suite = paths.eval / f"{name}.perplexity.json", paths.eval / f"{name}.suite.json"
        if not ppl.exists():
            run_main("megatron_ipt.eval.heldout", ["--model", model, "--texts", paths.heldout_texts, "--out", ppl],
                     f"held-out perplexity of the {name} model")
        if not suite.exists():
            # No --device: the suite picks cuda when there is a GPU, else the CPU.
            run_main("megatron_ipt.eval.suite", ["--model", model, "--suite", paths.eval_suite, "--out", suite],
                     f"lm-eval suite on the {name} model")
        results[name] = {"perplexity": _read_json(ppl), "suite": _read_json(suite)}
    return {"results": results}


# ------------------------------------------------------------------ stage 7: instruction tuning


def instruction_tune(size: DemoSize, paths: DemoPaths, start: str, runs: dict[str, dict]) -> dict:
    """Every continually pre-trained model tuned on the same chats (set (d)) for the same steps, the
    suite scored in the loop at the start, every ``instruction_interval`` steps and at the end."""
    prefix = paths.instruction_data
    data = f"{prefix}{RAW_DOCUMENT}"
    if not summary_path(data).exists():
        run_main("data_tools.build_instruction_data", [
            "--input", paths.instruction_records, "--tokenizer", start, "--output-prefix", prefix,
            "--max-tokens", size.instruction_seq_len, "--skip-bad-records", "--workers", "0"],
            "building the instruction-tuning data")
    tuned = {}
    for name, run in runs.items():
        run_dir = paths.tuning_run_dir(name)
        seconds = 0.0
        # Done when its last step's in-loop evaluation is logged (a killed run starts over: no checkpoints).
        if size.instruction_steps not in downstream_records(run_dir / "metrics.jsonl"):
            seconds = _train(paths, size, f"{name}_tuning", CONFIGS / "instruction_tune.yaml", {
                "model.init_from": run["model"], "data.tokenizer": start, "data.train": data,
                "data.seq_len": size.instruction_seq_len, "steps": size.instruction_steps,
                "micro_batch_size": size.instruction_batch // size.nproc, "global_batch_size": size.instruction_batch,
                "optim.lr": size.instruction_lr, "precision": auto_dtype().value,
                "eval.downstream_interval": size.instruction_interval,
                "eval.downstream_tasks": f"[{paths.eval_suite}]", "eval.downstream_limit": size.instruction_eval_items,
                "run_dir": run_dir, "checkpoint.dir": run_dir / "checkpoints",
            }, export=None)
        tuned[name] = {"arm": run["arm"], "seed": run["seed"], "init_from": run["model"],
                       "metrics": str(run_dir / "metrics.jsonl"), "tensorboard": str(run_dir / "tensorboard"),
                       "train_seconds": seconds}
    return {"steps": size.instruction_steps, "interval": size.instruction_interval,
            "items_per_family": size.instruction_eval_items, "data_summary": _read_json(summary_path(data)),
            "runs": tuned}

