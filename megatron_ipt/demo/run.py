"""The demo's eight stages in order; each is skipped when an earlier run finished it."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_ipt.demo import corpus, pipeline, report
from megatron_ipt.demo.material import check_material
from megatron_ipt.demo.paths import DemoPaths
from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.demo.stages import DemoError, StageRunner
from megatron_ipt.io import atomic_write_json, clean_stale_tmp

N_STAGES = 8


def check_out_dir(size: DemoSize, out: Path) -> None:
    """An output folder belongs to one size: resuming it with another would mix budgets."""
    meta = out / "demo.json"
    if meta.exists():
        previous = json.loads(meta.read_text())
        if previous.get("settings") != size.to_dict():
            name = previous.get("size")
            raise DemoError(f"{out} holds a '{name}' demo with other settings; rerun with the same --size/--set "
                            f"to resume it, or give another --output-dir (or delete {out})")
    else:
        atomic_write_json(meta, {"size": size.name, "settings": size.to_dict()})


def run_demo(size: DemoSize, out: Path, min_free_gb: float | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    check_out_dir(size, out)
    for folder in [out, *out.rglob("*")]:
        if folder.is_dir():
            clean_stale_tmp(folder)
    paths = DemoPaths(out)
    runner = StageRunner(out, N_STAGES)
    runner.run(1, "material", "material check", lambda: check_material(size, out, min_free_gb))
    runner.run(2, "corpus", "PubMed raw corpus, held-out split and mined tasks",
               lambda: corpus.build_corpus(size, paths))
    tune = runner.run(3, "synthesizer", "tune the start model into an instruction synthesizer",
                      lambda: pipeline.tune_synthesizer(size, paths))
    start = tune["start_model"]
    synth = runner.run(4, "synthesis", f"synthesize pairs ({size.rounds} rounds) and build the corpora",
                       lambda: pipeline.synthesize(size, paths, start))
    data = {"vanilla": synth["raw_prefix"], "instruct": pipeline.blend_of(synth["instruct_blend"])}
    train = runner.run(5, "pretrain", "continual pre-training: vanilla and instruct, same token budget",
                       lambda: pipeline.continual_pretrain(size, paths, start, data))
    models = {"start": start, **{name: r["model"] for name, r in train["runs"].items()}}
    runner.run(6, "evaluate", "evaluate start vs vanilla vs instruct",
               lambda: pipeline.evaluate_models(size, paths, models))
    runner.run(7, "instruction_tune", "instruction-tune every continually pre-trained model (tuning curves)",
               lambda: pipeline.instruction_tune(size, paths, start, train["runs"]))
    stages = runner.results()
    total = sum(s["seconds"] for s in stages)
    runner.run(8, "report", "write REPORT.md",
               lambda: {"report": str(report.write_report(size, paths, stages, total))})
    return paths.report
