"""Log-likelihood multiple-choice suites scored through lm-evaluation-harness, fully offline.

A suite is a folder of task YAMLs over local JSONL files (``dataset_path: json``; no hub at run
time). Each item is ``{id, query, choices, gold}``; lm-eval scores every choice's log-likelihood
after the query and reports ``acc`` and ``acc_norm`` (by characters). Any HF directory the project
exports loads in lm-eval's ``hf`` model as it is, on CPU or GPU::

    python -m megatron_ipt.eval.suite --model DIR --suite SUITE_DIR --out scores.json [--device cuda]

``scores.json`` holds, per task, the aggregate metrics and the per-item ``acc`` / ``acc_norm``
(the demo bootstraps its intervals from those).

**Trust.** An lm-eval task folder can be code: ``!function`` tags import Python from the folder (or
any module), and Jinja templates and hooks run in lm-eval's process. A suite is therefore read as
plain data first (:mod:`megatron_ipt.task_code`): every YAML must be in :func:`write_suite`'s format
(bare field names, local JSON items, ``acc``/``acc_norm``), and no ``.py`` file may sit in the
folder. Anything else needs ``--trust-task-code``. Suites shipped inside the package (:func:`packaged_suite`) are trusted.
The model is handed to lm-eval as an object built here (``trust_remote_code`` off), never as a
``model_args`` string, so no model path runs code and a comma in it is just a comma.
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
from megatron_ipt.data.inputs import DataError
from megatron_ipt.data.readers import iter_records
from megatron_ipt.io import (
    OutputRefused,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_output_file,
)
from megatron_ipt.lmeval_items import item_scores
from megatron_ipt.log import get_logger, setup_logging
from megatron_ipt.task_code import (
    TaskFolderError,
    folder_code,
    packaged_suite,
    plain_format_gap,
    read_task_yaml,
)

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


@dataclass(frozen=True)
class SuiteTask:
    """One task YAML of a suite: its lm-eval name, file, config and (plain tasks) item file."""

    name: str
    path: Path
    config: dict[str, Any]
    items: Path | None  # None: a trusted task outside the plain format (its items are lm-eval's business)


def suite_tasks(suite_dir: str | Path, trust_task_code: bool = False) -> list[SuiteTask]:
    """The tasks of a suite folder (one per YAML, found as lm-eval finds them: ``**/*.yaml``).

    Refused with a :class:`SuiteError` naming the file: a folder that is missing or holds no task, a
    malformed YAML, a missing or non-string ``task:``, two YAMLs of one task name, and, unless
    ``trust_task_code`` (or the suite ships in the package), any code (:func:`megatron_ipt.task_code.folder_code`:
    ``!`` tags, ``.py`` files, keys outside the plain format). Plain tasks' item files are checked too
    (:func:`check_items`).
    """
    suite = Path(suite_dir)
    if not suite.is_dir():
        raise SuiteError(f"{suite}: no such suite folder")
    trusted = trust_task_code or packaged_suite(suite)
    yamls = sorted(suite.rglob("*.yaml"))
    if not yamls:
        raise SuiteError(f"{suite}: no task YAML in it (write one with megatron_ipt.eval.suite.write_suite)")
    hint = f"pass --trust-task-code only if you trust {suite}"
    try:
        code = [] if trusted else folder_code(suite)
        if code:
            raise SuiteError(f"{code[0]}; {hint}")
        configs = [(path, read_task_yaml(path)[0]) for path in yamls]
    except TaskFolderError as err:
        raise SuiteError(str(err)) from None
    tasks: dict[str, SuiteTask] = {}
    for path, config in configs:
        name = config.get("task")
        if not isinstance(name, str) or not name.strip():
            if trusted and ("group" in config or "task" not in config):
                continue  # a group or an included base of trusted task code: lm-eval resolves it
            raise SuiteError(f"{path}: field 'task' is missing or not a string: {name!r}")
        if name in tasks:
            raise SuiteError(f"{path}: task {name!r} is also defined in {tasks[name].path}; each task name once")
        items = None
        if plain_format_gap(config) is None:
            items = Path(config["dataset_kwargs"]["data_files"]["test"])  # lm-eval reads it from the cwd
            check_items(items, config, path)
        tasks[name] = SuiteTask(name, path, config, items)
    if not tasks:
        raise SuiteError(f"{suite}: no task in its YAMLs")
    return list(tasks.values())


def check_items(items: Path, config: dict[str, Any], task_yaml: Path) -> int:
    """Every item of a plain task is well-formed: the query a string, the choices a non-empty list of
    strings, the gold an index into them; returns the count (a :class:`SuiteError` names file and line)."""
    text, choices, target = config["doc_to_text"], config["doc_to_choice"], config["doc_to_target"]
    if not items.is_file():
        raise SuiteError(f"{task_yaml}: item file {items} does not exist")
    n = 0
    try:
        for rec, where in iter_records(items):
            if not isinstance(rec.get(text), str):
                raise DataError("missing or not a string", where=where, field=text)
            options = rec.get(choices)
            if not isinstance(options, list) or not options or not all(isinstance(c, str) for c in options):
                raise DataError("missing, empty or not a list of strings", where=where, field=choices)
            gold = rec.get(target)
            if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(options):
                raise DataError(f"{gold!r} is not an index into its {len(options)} choices", where=where,
                                field=target)
            n += 1
    except DataError as err:
        raise SuiteError(str(err)) from None
    if n == 0:
        raise SuiteError(f"{items}: no items (task {config['task']!r} of {task_yaml})")
    return n


def load_lm(model_dir: str | Path, *, device: str, batch_size: int, dtype: str) -> Any:
    """lm-eval's ``HFLM`` over ``model_dir``, built here with ``trust_remote_code`` off: the path is
    an argument, never text pasted into a ``model_args`` string."""
    from lm_eval.models.huggingface import HFLM

    from megatron_ipt.eval.scoring import check_model_dir

    path = check_model_dir(model_dir)
    try:
        return HFLM(pretrained=str(path.resolve()), dtype=dtype, device=device, batch_size=batch_size,
                    trust_remote_code=False)
    except Exception as err:  # transformers raises OSError, ValueError, safetensors errors, ...: one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise SuiteError(f"{path}: cannot load the model ({first})") from None


def score_suite(model_dir: str | Path, suite_dir: str | Path, *, device: str = "cpu", batch_size: int = 8,
                dtype: str = "float32", limit: int | None = None, trust_task_code: bool = False) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` over every task of the suite; aggregates and per-item scores.

    ``trust_task_code`` lets a suite outside the package run its own code (see the module's Trust)."""
    # Local files only: no hub look-ups (they wait on timeouts where there is no network).
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    t0 = time.perf_counter()
    tasks = [t.name for t in suite_tasks(suite_dir, trust_task_code)]  # before lm-eval reads the folder
    lm = load_lm(model_dir, device=device, batch_size=batch_size, dtype=dtype)
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model=lm, tasks=tasks,
        # Only the suite's own tasks: indexing lm-eval's thousands of built-in YAMLs costs tens of seconds.
        task_manager=TaskManager(include_path=str(Path(suite_dir).resolve()), include_defaults=False),
        limit=limit, log_samples=True)
    out: dict[str, Any] = {"model": str(model_dir), "suite": str(suite_dir), "tasks": {}}
    for name in tasks:
        agg = res["results"][name]
        items = item_scores(res["samples"][name])
        out["tasks"][name] = {
            "n": len(items["id"]),
            "acc": agg["acc,none"], "acc_stderr": agg.get("acc_stderr,none"),
            "acc_norm": agg["acc_norm,none"], "acc_norm_stderr": agg.get("acc_norm_stderr,none"),
            "items": items,
        }
        log.info("%s %s: acc %.3f, acc_norm %.3f (%d items)", model_dir, name, agg["acc,none"], agg["acc_norm,none"],
                 len(items["id"]))
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
    # Run code from the suite folder (!function, .py files, templates, hooks): only for suites you trust.
    trust_task_code: bool = False

    ALIASES: ClassVar[dict[str, str]] = {"out": "output"}

    def validate(self) -> None:
        if not self.model or not self.suite:
            raise ConfigError("--model and --suite are required")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1 (or left out for every item), got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be at least 1, got {self.batch_size}")


def run(args: SuiteArgs) -> int:
    setup_logging()
    if args.output:
        check_output_file(args.output)  # before any scoring
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    scores = score_suite(args.model, args.suite, device=device, batch_size=args.batch_size, dtype=args.dtype,
                         limit=args.limit, trust_task_code=args.trust_task_code)
    if args.output:
        atomic_write_json(args.output, scores)
    else:
        print(json.dumps({k: {m: v[m] for m in ("n", "acc", "acc_norm")} for k, v in scores["tasks"].items()}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(SuiteArgs, argv, run, __doc__, errors=(SuiteError, DataError, OutputRefused))


if __name__ == "__main__":
    sys.exit(main())
