"""Log-likelihood multiple-choice suites scored through lm-evaluation-harness, fully offline.

A suite is a folder of task YAMLs over local JSONL files (``dataset_path: json``; no hub at run
time). Each item is ``{id, query, choices, gold}``; lm-eval scores every choice's log-likelihood
after the query and reports ``acc`` and ``acc_norm`` (by characters). Any HF directory the project
exports loads in lm-eval's ``hf`` model as it is, on CPU or GPU::

    python -m megatron_ipt.eval.suite --model DIR --suite SUITE_DIR --out scores.json [--device cuda]

``scores.json`` holds, per task, the aggregate metrics and the per-item ``acc`` / ``acc_norm``
(the demo bootstraps its intervals from those).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from megatron_ipt.config import ConfigError, run_cli
from megatron_ipt.io import atomic_path, atomic_write_json, atomic_write_text
from megatron_ipt.log import get_logger, setup_logging

log = get_logger("megatron_ipt.eval.suite")
TASK_PREFIX = "ipt_"  # lm-eval task names of the project's suites (never clash with lm-eval's own)


class SuiteError(ValueError):
    """A suite folder or item file that cannot be used; the message names the file."""


def task_yaml(name: str, items_path: Path) -> str:
    """The lm-eval task config of one family (the data path absolute: lm-eval resolves it from the cwd)."""
    return "\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(items_path.resolve()))}",
        "test_split: test",
        "output_type: multiple_choice",
        "doc_to_text: query",
        "doc_to_choice: choices",
        "doc_to_target: gold",
        "target_delimiter: \"\"",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: acc_norm",
        "    aggregation: mean",
        "    higher_is_better: true",
        "", ])


def write_suite(families: dict[str, Sequence[dict]], out_dir: str | Path) -> list[str]:
    """Write ``FAMILY.jsonl`` and ``FAMILY.yaml`` per family; the lm-eval task names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for family, items in families.items():
        if not items:
            raise SuiteError(f"family {family!r} has no items")
        for i, it in enumerate(items):
            if not (isinstance(it.get("query"), str) and isinstance(it.get("choices"), list)
                    and isinstance(it.get("gold"), int) and 0 <= it["gold"] < len(it["choices"])):
                raise SuiteError(f"family {family!r} item {i}: needs query (str), choices (list), gold (index)")
        data = out / f"{family}.jsonl"
        with atomic_path(data) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for it in items:
                fh.write(json.dumps({k: it[k] for k in ("id", "query", "choices", "gold") if k in it}) + "\n")
        name = TASK_PREFIX + family
        atomic_write_text(out / f"{family}.yaml", task_yaml(name, data))
        names.append(name)
    return names


def suite_tasks(suite_dir: str | Path) -> list[str]:
    """The task names of a suite folder (one per YAML)."""
    suite = Path(suite_dir)
    yamls = sorted(suite.glob("*.yaml"))
    if not yamls:
        raise SuiteError(f"{suite}: no task YAML in it (write one with megatron_ipt.eval.suite.write_suite)")
    names = []
    for y in yamls:
        first = next((ln for ln in y.read_text().splitlines() if ln.startswith("task:")), None)
        if first is None:
            raise SuiteError(f"{y}: no 'task:' line")
        names.append(first.split(":", 1)[1].strip())
    return names


def score_suite(model_dir: str | Path, suite_dir: str | Path, *, device: str = "cpu", batch_size: int = 8,
                dtype: str = "float32", limit: int | None = None) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` over every task of the suite; aggregates and per-item scores."""
    # Local files only: no hub look-ups (they wait on timeouts where there is no network).
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    tasks = suite_tasks(suite_dir)
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={Path(model_dir).resolve()},dtype={dtype}", tasks=tasks,
        # Only the suite's own tasks: indexing lm-eval's thousands of built-in YAMLs costs tens of seconds.
        task_manager=TaskManager(include_path=str(Path(suite_dir).resolve()), include_defaults=False),
        batch_size=batch_size,
        device=device, limit=limit, log_samples=True)
    out: dict[str, Any] = {"model": str(model_dir), "suite": str(suite_dir), "tasks": {}}
    for name in tasks:
        agg = res["results"][name]
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        out["tasks"][name] = {
            "n": len(samples),
            "acc": agg["acc,none"], "acc_stderr": agg.get("acc_stderr,none"),
            "acc_norm": agg["acc_norm,none"], "acc_norm_stderr": agg.get("acc_norm_stderr,none"),
            "items": {"id": [s["doc"].get("id", s["doc_id"]) for s in samples],
                      "acc": [float(s["acc"]) for s in samples], "acc_norm": [float(s["acc_norm"]) for s in samples]},
        }
        log.info("%s %s: acc %.3f, acc_norm %.3f (%d items)", model_dir, name, agg["acc,none"], agg["acc_norm,none"],
                 len(samples))
    out["seconds"] = time.perf_counter() - t0
    return out


@dataclass
class SuiteArgs:
    model: str = ""  # HF model directory (config, safetensors, tokenizer)
    suite: str = ""  # folder of task YAMLs and their JSONL items (megatron_ipt.eval.suite.write_suite)
    output: str | None = None  # write the scores as JSON here (else print the aggregates)
    device: str | None = None  # cpu or cuda (null: cuda when available)
    batch_size: int = 8  # log-likelihood requests per forward pass
    dtype: Literal["float32", "bfloat16"] = "float32"  # model dtype of lm-eval's hf model
    limit: int | None = None  # score only the first N items of each task

    ALIASES: ClassVar[dict[str, str]] = {"out": "output"}

    def validate(self) -> None:
        if not self.model or not self.suite:
            raise ConfigError("--model and --suite are required")


def run(args: SuiteArgs) -> int:
    setup_logging()
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    scores = score_suite(args.model, args.suite, device=device, batch_size=args.batch_size, dtype=args.dtype,
                         limit=args.limit)
    if args.output:
        atomic_write_json(args.output, scores)
    else:
        print(json.dumps({k: {m: v[m] for m in ("n", "acc", "acc_norm")} for k, v in scores["tasks"].items()}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(SuiteArgs, argv, run, __doc__, errors=(SuiteError,))


if __name__ == "__main__":
    sys.exit(main())
