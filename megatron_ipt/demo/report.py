"""Stage 8: ``REPORT.md`` — intervals per metric and the arm difference, the family manifest, the
synthesizer's diversity, tokens per source, the tuning curve, PNG plots, TensorBoard paths, stage times."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

from megatron_ipt.demo.paths import ARMS, DemoPaths
from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.demo.tuning_curve import tuning_section
from megatron_ipt.eval.bootstrap import Interval, diff_interval, mean_interval, perplexity_interval
from megatron_ipt.eval.suite import TASK_PREFIX
from megatron_ipt.io import atomic_write_text
from megatron_ipt.tuning.pubmed_mining import tuning_template_of

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


def _ci(iv: Interval | None, digits: int = 3) -> str:
    if iv is None:
        return "n/a"
    return f"{iv.mean:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def group_models(evals: dict[str, dict]) -> dict[str, list[dict]]:
    """``start`` / ``vanilla`` / ``instruct`` -> the evaluation results of its runs (one per seed)."""
    groups: dict[str, list[dict]] = {"start": [], **{arm: [] for arm in ARMS}}
    for name, res in evals.items():
        groups[name.rsplit("_s", 1)[0] if name != "start" else "start"].append(res)
    return {k: v for k, v in groups.items() if v}


def metric_matrices(runs: list[dict]) -> dict[str, Any]:
    """Per metric, the runs x items matrix (perplexity: the losses and token counts)."""
    out: dict[str, Any] = {}
    ppl = [r["perplexity"]["heldout"] for r in runs if "heldout" in r.get("perplexity", {})]
    if ppl and all("text_losses" in p for p in ppl):
        out["perplexity"] = ([p["text_losses"] for p in ppl], [p["text_tokens"] for p in ppl])
    for task in sorted(runs[0]["suite"]["tasks"]):
        for metric in ("acc", "acc_norm"):
            out[f"{task.removeprefix(TASK_PREFIX)} {metric}"] = [r["suite"]["tasks"][task]["items"][metric]
                                                                  for r in runs]
    return out


def score_table(evals: dict[str, dict]) -> tuple[list[str], dict[str, Interval]]:
    """The results table (mean [95% interval] per model group and metric, then instruct - vanilla)
    and the difference intervals by metric."""
    groups = group_models(evals)
    mats = {g: metric_matrices(runs) for g, runs in groups.items()}
    metrics = list(next(iter(mats.values())))
    lines = ["| model | runs | " + " | ".join(m + (" ↓" if m == "perplexity" else " ↑") for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for g, m in mats.items():
        cells = []
        for metric in metrics:
            if metric == "perplexity":
                cells.append(_ci(perplexity_interval(*m[metric]), 2))
            else:
                cells.append(_ci(mean_interval(m[metric])))
        lines.append(f"| {MODEL_LABELS.get(g, g)} | {len(groups[g])} | " + " | ".join(cells) + " |")
    diffs: dict[str, Interval] = {}
    if "instruct" in mats and "vanilla" in mats:
        a, b = mats["instruct"], mats["vanilla"]
        for metric in metrics:
            diffs[metric] = (perplexity_interval(*a[metric], other=b[metric]) if metric == "perplexity"
                             else diff_interval(a[metric], b[metric]))
        lines.append("| **instruct − vanilla** | | " + " | ".join(
            _ci(diffs[m], 2 if m == "perplexity" else 3) for m in metrics) + " |")
    return lines, diffs


def reading(diffs: dict[str, Interval], powered: bool) -> list[str]:
    """One line per metric: the sign of instruct - vanilla and whether its interval excludes zero."""
    out = []
    for metric, iv in diffs.items():
        better = iv.mean < 0 if metric == "perplexity" else iv.mean > 0
        sign = "no difference" if iv.mean == 0 else ("instruct better" if better else "vanilla better")
        noise = ("outside the noise (95% interval excludes 0)" if iv.excludes_zero()
                 else "within the noise (95% interval includes 0)")
        out.append(f"- **{metric}**: instruct − vanilla = {iv.mean:+.4f} ({sign}), {noise}.")
    if not powered:
        out.append("- This size is **not powered**: few seeds and items, intervals are wide; "
                   "run `DEMO_SIZE=medium make demo` for the powered design (3 seeds per arm, 300 items per family).")
    return out


def synthesis_diversity(synthesis_output: Path) -> dict[str, Any]:
    """Pairs per text, distinct instruction families and the share of pairs copying a tuning template."""
    rows = [json.loads(line) for line in synthesis_output.read_text().splitlines() if line.strip()] \
        if synthesis_output.exists() else []
    templates: Counter = Counter()
    families: Counter = Counter()
    copied = 0
    n_pairs = 0
    for row in rows:
        for pair in row.get("pairs", []):
            n_pairs += 1
            match = tuning_template_of(pair["instruction"])
            if match is not None:
                copied += 1
                templates[match[1]] += 1
                families[match[0]] += 1
            else:
                head = " ".join(pair["instruction"].split("\n")[0].lower().split()[:3])
                families[f"new: {head}"] += 1
    top = templates.most_common(1)[0] if templates else ("", 0)
    return {"texts": len(rows), "pairs": n_pairs, "pairs_per_text": n_pairs / max(len(rows), 1),
            "distinct_families": len(families), "copied_share": copied / max(n_pairs, 1),
            "top_template": top[0], "top_template_share": top[1] / max(n_pairs, 1),
            "families": dict(families.most_common(12))}


def manifest_lines(manifest: dict[str, dict]) -> list[str]:
    titles = {"a_tuning": "(a) synthesizer tuning", "b_general": "(b) general instructions (domain recipe)",
              "c_evaluation": "(c) evaluation (no training input of either arm)",
              "d_instruction_tuning": "(d) instruction tuning after pre-training"}
    lines = ["| set | family | answer format | example wording | source |", "|---|---|---|---|---|"]
    for key, fams in manifest.items():
        for name, f in fams.items():
            wording = (f.get("wordings") or ["(continuation, no instruction)"])[0].replace("\n", " ").replace("|", "/")
            lines.append(f"| {titles.get(key, key)} | `{name}` | {f['answer_format']} | {wording} | {f['source']} |")
    return lines


def question_concentration(quality: dict) -> list[str]:
    """The quality gate's kept pairs and their most frequent questions, as report lines."""
    top = quality.get("top_questions") or []
    if not top:
        return []
    shown = "; ".join(f"`{' '.join(t['question'].split())[:60]}` {t['share']:.0%}" for t in top[:3])
    return [f"Questions kept: {quality['pairs_kept']:,} pairs, {quality['distinct_questions']:,} distinct; the most "
            f"frequent, with their share of the kept pairs: {shown}.", ""]


def tokens_per_source(per_source: dict[str, dict[str, int]]) -> list[str]:
    """Each arm's training tokens by source dataset, as the trainer counted them (all seeds)."""
    labels = {"raw_text_document": "raw PubMed abstracts", "instruct": "instruction-augmented abstracts",
              "instructions": "general instructions"}
    lines = ["| arm | source | tokens (all seeds) | share |", "|---|---|---|---|"]
    for arm, sources in per_source.items():
        total = sum(sources.values()) or 1
        for name, n in sorted(sources.items()):
            label = labels.get(Path(name).name, Path(name).name)
            lines.append(f"| {arm} | {label} | {n:,} | {n / total:.3f} |")
    return lines


def _header(size: DemoSize, total_seconds: float, powered: bool) -> list[str]:
    estimate = size.estimate_seconds()
    return [
        f"# Instruction Pre-Training in miniature — demo report (size `{size.name}`)",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
        f"({platform.machine()}, {os.cpu_count()} CPU cores). Total wall time of the stages: "
        f"**{total_seconds / 60:.1f} min** (estimate for this size on 2 CPU cores: {sum(estimate.values()) / 60:.0f} min)."
        + (" The start model is a tiny random Llama (smoke-test size): the numbers only show the pipeline runs."
           if size.tiny_model else ""),
        "",
        f"Design: {size.seeds} continual pre-training run(s) per arm (data order differs), equal tokens per run; "
        f"{size.eval_items} items per evaluation family; {size.eval_texts} held-out abstracts for perplexity. "
        + ("**Powered**: 3+ seeds, 300+ items per family." if powered else
           "**This size is not powered** (too few seeds and items for a small effect); it shows the design."),
        "",
    ]


def _results(evals: dict[str, dict], powered: bool) -> list[str]:
    table, diffs = score_table(evals) if evals else ([], {})
    return [
        "## Results",
        "",
        *table,
        "",
        "Each cell: mean [95% bootstrap interval] over runs (seeds) and items. acc / acc_norm: lm-evaluation-harness "
        "log-likelihood multiple choice (acc_norm normalises by answer length). Perplexity: held-out unstructured "
        "PubMed abstracts (the distribution both arms train on), PMIDs kept out of every training input.",
        "",
        "### Reading",
        "",
        *reading(diffs, powered),
        "",
    ]


def _families(paths: DemoPaths, corpus: dict[str, Any]) -> list[str]:
    return [
        "## Task families (disjoint sets)",
        "",
        *manifest_lines(corpus.get("manifest", {})),
        "",
        f"Evaluation items per family: {corpus.get('eval_items', {})}; dropped for sharing a 13-gram with a training "
        f"input: {corpus.get('eval_dropped_13gram', {})}. Suite: `{paths.eval_suite}` (score any exported model "
        f"with `python -m megatron_ipt.eval.suite --model DIR --suite {paths.eval_suite}`).",
        "",
    ]


def _synthesizer(size: DemoSize, corpus: dict[str, Any], tune: dict[str, Any]) -> list[str]:
    before = tune.get("pair_loss_before", {}).get("loss", {}).get("pair_loss")
    after = tune.get("pair_loss_after", {}).get("loss", {}).get("pair_loss")
    return [
        "## Synthesizer (stage 3)",
        "",
        f"Tuned from `{tune.get('start_model', 'n/a')}` on {corpus.get('mined_examples', 'n/a')} context-based "
        f"examples mined from structured PubMed abstracts ({corpus.get('mined_pairs', 'n/a')} pairs, "
        f"{len(corpus.get('manifest', {}).get('a_tuning', {}))} families with varied phrasings), "
        f"{tune.get('steps', 'n/a')} steps x {size.tune_batch} sequences x {size.tune_seq_len} tokens, loss on the pairs only.",
        "",
        "| | held-out pair loss ↓ |",
        "|---|---|",
        f"| before tuning | {_num(before)} |",
        f"| after tuning | {_num(after)} |",
        "",
    ]


def _synthesis(size: DemoSize, paths: DemoPaths, corpus: dict[str, Any], synth: dict[str, Any]) -> list[str]:
    counts = pairs_per_text(Path(synth.get("synthesis_output", "")))
    hist_png = plot_pairs_histogram(counts, paths.plots / "pairs_per_text.png")
    div = synthesis_diversity(Path(synth.get("synthesis_output", "")))
    goal_parts = {">= 2 pairs per text": div["pairs_per_text"] >= 2,
                  "no template above 30%": div["top_template_share"] <= 0.30}
    goal = ", ".join(goal_parts)
    goal_missed = ", ".join(name for name, ok in goal_parts.items() if not ok)
    mixture = synth.get("mixture", {})
    return [
        "## Synthesis (stage 4)",
        "",
        f"{div['texts']} unstructured abstracts the synthesizer never saw, {size.rounds} rounds (M-shot): "
        f"**{div['pairs_per_text']:.2f} pairs per text**, {div['distinct_families']} distinct instruction families, "
        f"**{div['copied_share']:.0%} of pairs copy a tuning template verbatim**, the most used template "
        f"({div['top_template'] or 'none'!r}) is {div['top_template_share']:.0%} of pairs. "
        + (f"Goal ({goal}) met." if all(goal_parts.values()) else
           f"**Goal ({goal}) not met** (missed: {goal_missed}) by the 135M "
           "synthesizer within this size's tuning budget; the numbers above are what it produced."),
        "",
        f"Families seen: {div['families']}",
        "",
        "```json",
        json.dumps(synth.get("synthesis_stats", {}), indent=1)[:2500],
        "```",
        "",
        f"![pairs per text]({hist_png.relative_to(paths.out)})",
        "",
        "The `domain` recipe templated every synthesized text and mixed it 1:1 by tokens with general "
        f"instructions: {corpus.get('general_instructions', 'n/a')} records mined offline from Python's standard "
        "library docstrings (no general-instruction set ships inside an installable package; the paper uses "
        "OpenOrca). What the recipe read, kept and dropped (its quality gate's drops by reason), and how often "
        "each component's documents repeat in the blend: "
        + (json.dumps({k: {**c.get("counts", {}), **c.get("quality", {}).get("dropped", {}),
                           **({"repeat": c["repeat"]} if "repeat" in c else {})}
                       for k, c in mixture.get("components", {}).items()}) or "none") + ".",
        "",
        *question_concentration(mixture.get("components", {}).get("instruct", {}).get("quality", {})),
    ]


def _pretrain(size: DemoSize, paths: DemoPaths, tune: dict[str, Any], train: dict[str, Any]) -> list[str]:
    runs = train.get("runs", {})
    loss_png = plot_losses({name: Path(r["metrics"]) for name, r in runs.items()}, paths.plots / "training_loss.png")
    return [
        "## Continual pre-training (stage 5)",
        "",
        f"Every run starts from the same model with the same budget: {train.get('steps', 'n/a')} steps x "
        f"{size.global_batch} sequences x {size.seq_len} tokens = {train.get('tokens_per_run', 'n/a')} "
        f"tokens; tokens per arm (all seeds, asserted equal): {train.get('tokens_per_arm', {})}.",
        "",
        *tokens_per_source(train.get("tokens_per_source", {})),
        "",
        "| run | steps logged | final loss | median tokens/s (all ranks) |",
        "|---|---|---|---|",
        *[throughput_row(name, read_metrics(Path(r["metrics"]))) for name, r in runs.items()],
        "",
        f"![training loss]({loss_png.relative_to(paths.out)})",
        "",
        "The arms' losses are over different data (instruction-augmented vs raw text) and are not directly comparable.",
        "",
    ]


def _logs_and_times(paths: DemoPaths, stages: list[dict], tune: dict[str, Any], train: dict[str, Any],
                    tuning: dict[str, Any]) -> list[str]:
    boards = [r["tensorboard"] for r in train.get("runs", {}).values()]
    boards += [r["tensorboard"] for r in tuning.get("runs", {}).values()]
    if tune.get("run_dir"):
        boards.append(f"{tune['run_dir']}/tensorboard")
    return [
        "TensorBoard logs: " + ", ".join(f"`{b}`" for b in boards)
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


def write_report(size: DemoSize, paths: DemoPaths, stages: list[dict], total_seconds: float) -> Path:
    by_key = {s["stage"]: s for s in stages}
    corpus, tune = by_key.get("corpus", {}), by_key.get("synthesizer", {})
    synth, train = by_key.get("synthesis", {}), by_key.get("pretrain", {})
    tuning = by_key.get("instruction_tune", {})
    powered = size.seeds >= 3 and size.eval_items >= 300 and size.eval_texts >= 200
    out = [
        *_header(size, total_seconds, powered),
        *_results(by_key.get("evaluate", {}).get("results", {}), powered),
        *_families(paths, corpus),
        *_synthesizer(size, corpus, tune),
        *_synthesis(size, paths, corpus, synth),
        *_pretrain(size, paths, tune, train),
        *tuning_section(size, paths, tuning, corpus, powered),
        *_logs_and_times(paths, stages, tune, train, tuning),
    ]
    atomic_write_text(paths.report, "\n".join(out))
    return paths.report
