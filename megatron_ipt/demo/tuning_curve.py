"""The report's tuning curve (stage 7): in-loop suite scores of every instruction-tuning run, per arm,
with 95% intervals over seeds and items, the arm difference at each point and each arm's gain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_ipt.demo.paths import ARMS, DemoPaths
from megatron_ipt.demo.sizes import DemoSize
from megatron_ipt.eval.bootstrap import Interval, diff_interval, mean_interval

# Curves shown: accuracy (what the paper plots) and the gold choice's mean log-likelihood, which
# moves with the weights when a few items' accuracy does not yet.
METRICS = {"acc": "accuracy ↑", "gold_loglik": "gold log-likelihood ↑"}


def downstream_records(metrics: Path) -> dict[int, dict]:
    """Step -> the run's in-loop evaluation record (the last one logged for that step)."""
    out: dict[int, dict] = {}
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("kind") == "downstream":
                out[row["step"]] = row
    return out


def _row(record: dict, metric: str) -> list[float]:
    """One run's per-item scores at one point, the tasks in name order (the same items in every run)."""
    items = record.get("items", {})
    return [v for task in sorted(items) for v in items[task].get(metric, [])]


def curve_matrices(runs: dict[str, dict]) -> dict[str, dict[int, dict[str, list[list[float]]]]]:
    """Arm -> step -> metric -> runs x items matrix, over the steps every run of the arm logged."""
    by_arm: dict[str, list[dict[int, dict]]] = {arm: [] for arm in ARMS}
    for run in runs.values():
        by_arm[run["arm"]].append(downstream_records(Path(run["metrics"])))
    out: dict[str, dict[int, dict[str, list[list[float]]]]] = {}
    for arm, records in by_arm.items():
        if not records:
            continue
        steps = sorted(set.intersection(*(set(r) for r in records)))
        out[arm] = {s: {m: [_row(r[s], m) for r in records] for m in METRICS} for s in steps}
    return out


def _ci(iv: Interval | None, digits: int = 3) -> str:
    return "n/a" if iv is None else f"{iv.mean:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def _interval(matrix: list[list[float]]) -> Interval | None:
    return mean_interval(matrix) if matrix and all(matrix) else None


def _diff(a: list[list[float]] | None, b: list[list[float]] | None) -> Interval | None:
    if not a or not b or not all(a) or not all(b) or len(a[0]) != len(b[0]):
        return None
    return diff_interval(a, b)


def curve_table(curves: dict[str, dict[int, dict[str, list[list[float]]]]]) -> list[str]:
    """One row per evaluation point: each arm's mean [95% interval] and instruct − vanilla."""
    steps = sorted(set.union(*(set(c) for c in curves.values()))) if curves else []
    head = [f"{arm} {label}" for label in METRICS.values() for arm in ARMS] + \
           [f"instruct − vanilla {label}" for label in METRICS.values()]
    lines = ["| step | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for step in steps:
        cells = [_ci(_interval(curves.get(arm, {}).get(step, {}).get(m, []))) for m in METRICS for arm in ARMS]
        cells += [_ci(_diff(curves.get("instruct", {}).get(step, {}).get(m), curves.get("vanilla", {}).get(step, {}).get(m)))
                  for m in METRICS]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def curve_reading(curves: dict[str, dict[int, dict[str, list[list[float]]]]], powered: bool) -> list[str]:
    """The sign of each arm's gain from tuning and of the arm difference at the end, with its noise."""
    out = []
    for metric, label in METRICS.items():
        for arm, curve in curves.items():
            if len(curve) < 2:
                continue
            first, last = min(curve), max(curve)
            iv = _diff(curve[last][metric], curve[first][metric])
            if iv is not None:
                out.append(f"- **{arm}**, {label} from step {first} to {last}: {iv.mean:+.4f} "
                           f"[{iv.low:+.4f}, {iv.high:+.4f}], {_noise(iv)}.")
        common = sorted(set(curves.get("instruct", {})) & set(curves.get("vanilla", {})))
        iv = _diff(curves["instruct"][common[-1]][metric], curves["vanilla"][common[-1]][metric]) if common else None
        if iv is not None:
            end = common[-1]
            sign = "no difference" if iv.mean == 0 else ("instruct higher" if iv.mean > 0 else "vanilla higher")
            out.append(f"- **instruct − vanilla**, {label} after tuning (step {end}): {iv.mean:+.4f} "
                       f"[{iv.low:+.4f}, {iv.high:+.4f}] ({sign}), {_noise(iv)}.")
    if not powered:
        out.append("- This size is **not powered** for the curve: few tuning steps, seeds and items per point; "
                   "it shows the design, and `DEMO_SIZE=medium` scales it up.")
    return out


def _noise(iv: Interval) -> str:
    return ("outside the noise (95% interval excludes 0)" if iv.excludes_zero()
            else "within the noise (95% interval includes 0)")


def plot_tuning_curve(curves: dict[str, dict[int, dict[str, list[list[float]]]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(10, 4))
    for ax, (metric, label) in zip(axes, METRICS.items(), strict=True):
        for arm, curve in curves.items():
            steps = [s for s in sorted(curve) if _interval(curve[s][metric]) is not None]
            ivs = [_interval(curve[s][metric]) for s in steps]
            ax.plot(steps, [iv.mean for iv in ivs], marker="o", label=arm)  # type: ignore[union-attr]
            ax.fill_between(steps, [iv.low for iv in ivs], [iv.high for iv in ivs], alpha=0.2)  # type: ignore[union-attr]
        ax.set_xlabel("instruction-tuning step")
        ax.set_ylabel(f"suite {label}")
        ax.legend()
    fig.suptitle("Instruction tuning after continual pre-training (95% intervals over seeds and items)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def tuning_section(size: DemoSize, paths: DemoPaths, stage: dict[str, Any], corpus: dict[str, Any],
                   powered: bool) -> list[str]:
    """The report's stage-7 section: what was tuned on, the curve table and plot, and its reading."""
    if not stage.get("runs"):
        return []
    curves = curve_matrices(stage["runs"])
    png = plot_tuning_curve(curves, paths.plots / "tuning_curve.png")
    data = stage.get("data_summary", {})
    ins = data.get("instructions", {})
    return [
        "## Instruction tuning after continual pre-training (stage 7)",
        "",
        f"Every continually pre-trained model of both arms ({len(stage['runs'])} runs) is tuned on the same "
        f"{ins.get('written', 'n/a')} chats for {stage['steps']} steps x {size.instruction_batch} sequences x "
        f"{size.instruction_seq_len} tokens at lr {size.instruction_lr:g}, loss on the answers only, packed "
        f"chats never attending to each other. The chats are set (d): {corpus.get('instruction_examples', 'n/a')} "
        "context-based examples mined from structured training-side PubMed records that the synthesizer's "
        "tuning did not use (families of (a); disjoint from the evaluation families and from the general "
        f"instructions); skipped: {ins.get('skipped', {}) or 'none'}. The suite's first "
        f"{stage['items_per_family']} items per family are scored in the loop at the start, every "
        f"{stage['interval']} steps and at the end.",
        "",
        *curve_table(curves),
        "",
        "Each cell: mean [95% bootstrap interval] over seeds and items (both families' items together).",
        "",
        f"![tuning curve]({png.relative_to(paths.out)})",
        "",
        "### Reading",
        "",
        *curve_reading(curves, powered),
        "",
    ]
