"""Stage 7: ``REPORT.md`` — the numbers as a table, two PNG plots, TensorBoard paths, stage times."""

from __future__ import annotations

import json
import math
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

from megatron_ipt.demo.paths import ARMS, DemoPaths
from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.io import atomic_write_text

MODEL_LABELS = {
    "start": "start model",
    "vanilla": "vanilla continual PT (raw abstracts)",
    "instruct": "instruction PT (instruction-augmented abstracts)",
}


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def read_metrics(path: Path, kind: str = "train") -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == kind]


def pairs_per_text(synthesis_output: Path) -> list[int]:
    if not synthesis_output.exists():
        return []
    return [len(json.loads(line)["pairs"]) for line in synthesis_output.read_text().splitlines() if line.strip()]


def plot_losses(runs: dict[str, Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, metrics in runs.items():
        rows = read_metrics(metrics)
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="o", ms=3, label=arm)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("Continual pre-training: same tokens, different data")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_pairs_histogram(counts: list[int], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(counts, default=0)
    ax.hist(counts, bins=[b - 0.5 for b in range(top + 2)], rwidth=0.85)
    ax.set_xlabel("pairs parsed per text")
    ax.set_ylabel("texts")
    ax.set_title(f"Synthesized pairs per text ({len(counts)} texts)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def throughput_row(name: str, rows: list[dict]) -> str:
    rates = sorted(r["tokens_per_s"] for r in rows if "tokens_per_s" in r)
    median = rates[len(rates) // 2] if rates else None
    final = rows[-1]["loss"] if rows else None
    return f"| {name} | {len(rows)} | {_num(final)} | {_num(median, 0)} |"


def results_table(evals: dict[str, dict]) -> list[str]:
    lines = [
        "| model | held-out perplexity ↓ | answer loss ↓ | exact match ↑ | token F1 ↑ | option accuracy ↑ |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in evals.items():
        h, t = res.get("heldout", {}), res.get("tasks", {})
        lines.append(f"| {MODEL_LABELS.get(name, name)} | {_num(h.get('perplexity'), 2)} | {_num(t.get('answer_loss'))} "
                     f"| {_num(t.get('exact_match'))} | {_num(t.get('f1'))} | {_num(t.get('option_accuracy'))} |")
    return lines


def write_report(size: DemoSize, paths: DemoPaths, stages: list[dict], total_seconds: float) -> Path:
    by_key = {s["stage"]: s for s in stages}
    corpus, tune = by_key.get("corpus", {}), by_key.get("synthesizer", {})
    synth, train, ev = by_key.get("synthesis", {}), by_key.get("pretrain", {}), by_key.get("evaluate", {})
    evals = ev.get("results", {})
    runs = train.get("runs", {})
    loss_png = plot_losses({arm: Path(runs[arm]["metrics"]) for arm in ARMS if arm in runs},
                           paths.plots / "training_loss.png")
    counts = pairs_per_text(Path(synth.get("synthesis_output", "")))
    hist_png = plot_pairs_histogram(counts, paths.plots / "pairs_per_text.png")
    any_eval = next(iter(evals.values()), {})
    n_tasks, heldout = any_eval.get("tasks", {}), any_eval.get("heldout", {})
    before = tune.get("pair_loss_before", {}).get("loss", {}).get("pair_loss")
    after = tune.get("pair_loss_after", {}).get("loss", {}).get("pair_loss")
    hist = Counter(counts)
    out: list[str] = [
        f"# Instruction Pre-Training in miniature — demo report (size `{size.name}`)",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
        f"({platform.machine()}, {__import__('os').cpu_count()} CPU cores). Total wall time of the stages: "
        f"**{total_seconds / 60:.1f} min**."
        + (" The start model is a tiny random Llama (smoke-test size): the numbers only show the pipeline runs."
           if size.tiny_model else ""),
        "",
        "## Results",
        "",
        *results_table(evals),
        "",
        f"Held-out perplexity: {heldout.get('texts', 'n/a')} PubMed abstracts ({heldout.get('tokens', 'n/a')} tokens) "
        "whose PMIDs were kept out of every training set. Tasks: "
        f"{n_tasks.get('n', 'n/a')} context-based questions mined from held-out PubMed records "
        f"(kinds: {', '.join(f'{k} {v}' for k, v in corpus.get('heldout_task_kinds', {}).items()) or 'n/a'}; "
        f"{n_tasks.get('n_free_form', 'n/a')} free-form: exact match and token F1 of the greedy answer; "
        f"{n_tasks.get('n_multiple_choice', 'n/a')} multiple choice: option accuracy), prompted as "
        "`{context}\\n\\nQuestion: {instruction}\\nAnswer:` for every model; answer loss is the mean "
        "per-token loss of the gold answer given that prompt.",
        "",
        "## Synthesizer (stage 3)",
        "",
        f"Tuned from `{tune.get('start_model', 'n/a')}` on {corpus.get('mined_examples', 'n/a')} context-based "
        f"tasks mined from structured PubMed abstracts ({corpus.get('mined_pairs', 'n/a')} pairs), "
        f"{tune.get('steps', 'n/a')} steps x {size.nproc} ranks x {size.tune_seq_len} tokens, ZeRO-3, loss on the pairs only.",
        "",
        "| | held-out pair loss ↓ |",
        "|---|---|",
        f"| before tuning | {_num(before)} |",
        f"| after tuning | {_num(after)} |",
        "",
        "## Synthesis (stage 4)",
        "",
        f"{len(counts)} unstructured abstracts converted in {size.rounds} rounds (M-shot); "
        f"{sum(counts)} pairs, {_num(sum(counts) / max(len(counts), 1), 2)} per text; "
        f"{hist.get(0, 0)} texts got no pair."
        + (" **The synthesizer wrote no well-formed pair**: this size tunes it for too few steps to learn "
           "the output format (its held-out pair loss still fell, see above); the instruct arm's corpus "
           "is then the raw texts plus the mined instructions. Larger sizes (or `--set tune_seconds=...`) "
           "tune it longer." if counts and not sum(counts) else ""),
        "",
        "```json",
        json.dumps(synth.get("synthesis_stats", {}), indent=1)[:2500],
        "```",
        "",
        f"![pairs per text]({hist_png.relative_to(paths.out)})",
        "",
        "The `domain` recipe templated every synthesized text and mixed it 1:1 by tokens with general "
        "instructions. **No general-instruction set ships offline, so the tasks mined from structured "
        "abstracts stand in for it** (the paper uses OpenOrca).",
        "",
        "## Continual pre-training (stage 5)",
        "",
        f"Both runs start from the same model and see the same budget: {train.get('steps', 'n/a')} steps x "
        f"{size.micro_batch * size.nproc} sequences x {size.seq_len} tokens = {train.get('tokens_per_run', 'n/a')} "
        "tokens (ZeRO-3, 2 processes, packed documents with document-aware attention).",
        "",
        "| run | steps logged | final loss | median tokens/s (all ranks) |",
        "|---|---|---|---|",
        *[throughput_row(arm, read_metrics(Path(runs[arm]["metrics"]))) for arm in ARMS if arm in runs],
        "",
        f"![training loss]({loss_png.relative_to(paths.out)})",
        "",
        "The two losses are over different data (instruction-augmented vs raw text) and are not directly comparable.",
        "",
        "TensorBoard logs: " + ", ".join(f"`{runs[a]['tensorboard']}`" for a in ARMS if a in runs)
        + (f", `{tune['run_dir']}/tensorboard`" if tune.get("run_dir") else "")
        + f" — view with `.venv/bin/tensorboard --logdir {paths.out}`.",
        "",
        "## Stage wall times",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {s['title']} | {s['seconds']:.0f} |" for s in stages],
        "",
        "Times were measured on a shared machine; other processes on it slow every stage.",
        "",
    ]
    atomic_write_text(paths.report, "\n".join(out))
    return paths.report
