"""In-loop downstream evaluation: lm-eval tasks scored on the model being trained, as curves.

A trainer callback (the shape of OLMo-core's in-loop evaluator callbacks): after every
``eval.downstream_interval`` optimizer steps it scores ``eval.downstream_tasks`` (folders of lm-eval
task YAMLs such as the demo's suite, or lm-eval task names available offline) through
lm-evaluation-harness's ``hf`` model wrapped around the live module, and writes one ``downstream``
record (``TASK/acc``, ``TASK/acc_norm``, ``TASK/gold_loglik``, ``mean/acc``...) to metrics.jsonl and TensorBoard.

- ZeRO-3: every rank scores every task in lockstep through the module's own forward (its hooks
  gather each layer's parameters on all ranks), so no rank waits on a collective another never
  joins. ZeRO-0/1/2: each rank holds the whole model; the tasks are sharded over the ranks and the
  scores gathered.
- Training state is untouched: the Python, NumPy and torch RNG states (lm-eval seeds them) are saved
  and restored, the module returns to train mode, and the data stream is never read. Scores are a
  function of the weights only, so a resumed run logs the same curve.

Scoring lives here rather than in :mod:`megatron_ipt.eval.suite` because the trainer may not import
the eval room (tests/test_layering.py); both drive the same lm-eval entry, ``simple_evaluate``, and
both refuse a task folder with code (:mod:`megatron_ipt.task_code`) unless told to trust it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_ipt.config import ConfigError
from megatron_ipt.lmeval_items import ITEM_METRICS, item_scores
from megatron_ipt.log import get_logger
from megatron_ipt.task_code import TaskFolderError, folder_code, packaged_suite

log = get_logger(__name__)
# Per-task metrics logged as curves (lm-eval's "METRIC,FILTER" keys; stderr is not a curve), plus the
# mean log-likelihood of the gold choice: it moves with the weights when accuracy does not yet.
METRICS = ITEM_METRICS


@dataclass
class EvalConfig:
    # Steps between in-loop downstream evaluations (0: none); the last step is always scored.
    downstream_interval: int = 0
    # Also score the weights the run starts from, as step 0 (the first point of a tuning curve); a
    # resumed run keeps the step-0 record it logged.
    downstream_at_start: bool = False
    # lm-eval tasks scored on the model being trained: task folders (e.g. the demo's suite) or task names
    # available offline. Each score is a curve in metrics.jsonl and TensorBoard ("downstream" records).
    downstream_tasks: list[str] = field(default_factory=list)
    downstream_limit: int | None = None  # score only the first N items of each task (null: all)
    downstream_batch_size: int = 8  # log-likelihood requests per forward pass
    # A task folder with code (!function tags, .py files, Jinja templates, hooks: megatron_ipt.task_code)
    # would run it inside the training processes, so it is refused unless this is true: only for folders
    # you trust. Data-only folders (write_suite's format) and lm-eval's own task names need no flag.
    downstream_trust_task_code: bool = False

    def validate(self) -> None:
        if self.downstream_interval < 0:
            raise ConfigError(f"eval.downstream_interval must be 0 (off) or positive, got {self.downstream_interval}")
        if self.downstream_interval and not self.downstream_tasks:
            raise ConfigError("eval.downstream_interval is set but eval.downstream_tasks is empty")

    def build(self, tokenizer_spec: str, total_steps: int, lockstep: bool) -> DownstreamEvaluator | None:
        """The in-loop evaluator callback (its tasks and tokenizer checked now), or None when switched off.
        ``lockstep``: every rank scores every task (ZeRO-3, where each forward gathers over all ranks)."""
        if not self.downstream_interval:
            return None
        return DownstreamEvaluator(self, tokenizer_spec, total_steps, lockstep)


class Callback:
    """A trainer hook: ``pre_train(trainer)`` runs once before the first step of a run (fresh or
    resumed), ``post_step(trainer)`` after every optimizer step, both on every rank. The trainer is
    passed as it is (this module may not import it): ``step``, ``engine``, ``plan``, ``rank``,
    ``world`` and ``metrics`` are what a callback reads."""

    def pre_train(self, trainer: Any) -> None:
        """Nothing by default."""

    def post_step(self, trainer: Any) -> None:  # pragma: no cover - the interface
        raise NotImplementedError


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Python, NumPy, torch CPU and CUDA RNG states as they were on entry, whatever runs inside."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def check_task_folder(spec: str, trust_task_code: bool) -> None:
    """A task folder is data only, or trusted (the flag, or shipped in the package); else a one-line
    :class:`ConfigError` naming the first file with code and what it found."""
    if trust_task_code or packaged_suite(spec):
        return
    try:
        code = folder_code(spec)
    except TaskFolderError as err:
        raise ConfigError(f"eval.downstream_tasks: {spec}: {err}") from None
    if code:
        raise ConfigError(f"eval.downstream_tasks: {spec}: {code[0]}; it would run inside training: "
                          "set eval.downstream_trust_task_code=true if you trust it")


def resolve_tasks(specs: list[str], trust_task_code: bool = False) -> tuple[list[str], list[str]]:
    """(task names, include folders): a folder (data only, or trusted) contributes every task defined in
    it, anything else is a task name for lm-eval's own registry (offline only)."""
    from lm_eval.tasks import TaskManager

    names: list[str] = []
    folders: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            check_task_folder(spec, trust_task_code)
            found = sorted(TaskManager(include_path=str(path.resolve()), include_defaults=False).all_tasks)
            if not found:
                raise ConfigError(f"eval.downstream_tasks: {spec}: no lm-eval task YAML in this folder")
            folders.append(str(path.resolve()))
            names += found
        elif path.suffix in (".yaml", ".yml", ".json", ".jsonl") or os.sep in spec:
            raise ConfigError(f"eval.downstream_tasks: {spec}: no such folder (give a task folder or a task name)")
        else:
            names.append(spec)
    return names, folders


class DownstreamEvaluator(Callback):
    """Scores lm-eval tasks on the trainer's live module every ``interval`` steps."""

    def __init__(self, cfg: EvalConfig, tokenizer_spec: str, total_steps: int, lockstep: bool = False) -> None:
        from lm_eval.tasks import TaskManager

        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")  # local files only: hub look-ups wait on timeouts offline
        self.cfg, self.total_steps, self.lockstep = cfg, total_steps, lockstep
        self.tasks, folders = resolve_tasks(list(cfg.downstream_tasks), cfg.downstream_trust_task_code)
        named = len(self.tasks) > sum(len(TaskManager(include_path=f, include_defaults=False).all_tasks)
                                      for f in folders)
        # Indexing lm-eval's thousands of built-in YAMLs costs tens of seconds: only when a name needs it.
        self.task_manager = TaskManager(include_path=folders or None, include_defaults=named)
        unknown = [t for t in self.tasks if t not in self.task_manager.all_tasks]
        if unknown:
            raise ConfigError(f"eval.downstream_tasks: unknown lm-eval task(s) {unknown}")
        self.tokenizer = _hf_tokenizer(tokenizer_spec)
        self.lm: Any = None
        self.seconds = 0.0  # time spent scoring in this process (the overhead figure)

    def due(self, step: int) -> bool:
        return step % self.cfg.downstream_interval == 0 or step == self.total_steps

    def pre_train(self, trainer: Any) -> None:
        if self.cfg.downstream_at_start and trainer.step == 0:
            self._log_scores(trainer)

    def post_step(self, trainer: Any) -> None:
        if self.due(trainer.step):
            self._log_scores(trainer)

    def _log_scores(self, trainer: Any) -> None:
        t0 = time.perf_counter()
        scores = self.score(trainer.engine.module, self.lockstep, trainer.rank, trainer.world)
        self.seconds += time.perf_counter() - t0
        trainer.metrics.write(trainer.step, "downstream", {**scores, "seconds": time.perf_counter() - t0})

    def score(self, module: torch.nn.Module, lockstep: bool, rank: int, world: int) -> dict[str, Any]:
        """``{TASK/METRIC: value, mean/METRIC: value, "items": {TASK: {METRIC: [per item]}}}`` over
        every task; the same on every rank. The per-item scores let a report put intervals over items
        and seeds on a curve (metrics.jsonl keeps them; TensorBoard takes the scalars only)."""
        mine = self.tasks if lockstep or world == 1 else self.tasks[rank::world]
        was_training = module.training
        module.eval()
        try:
            with preserved_rng(), torch.no_grad():
                results = self._simple_evaluate(module, mine) if mine else {}
        finally:
            module.train(was_training)
        if not lockstep and world > 1 and dist.is_initialized():
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, results)
            results = {k: v for part in gathered for k, v in part.items()}
        out: dict[str, Any] = {}
        for task in self.tasks:
            for metric in METRICS:
                if metric in results.get(task, {}):
                    out[f"{task}/{metric}"] = results[task][metric]
        for metric in METRICS:
            values = [results[t][metric] for t in self.tasks if metric in results.get(t, {})]
            if values:
                out[f"mean/{metric}"] = float(np.mean(values))
        out["items"] = {t: results[t]["items"] for t in self.tasks if "items" in results.get(t, {})}
        return out

    def _simple_evaluate(self, module: torch.nn.Module, tasks: list[str]) -> dict[str, dict[str, Any]]:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        quiet = [logging.getLogger(n) for n in ("lm_eval", "lm-eval")]
        levels = [q.level for q in quiet]
        for q in quiet:  # per-call notices (seeds, a passed-in model, task building) would flood the log
            q.setLevel(logging.ERROR)
        # lm-eval returns results only where LOCAL_RANK is 0; each rank's call here is a single process.
        local_rank = os.environ.get("LOCAL_RANK")
        os.environ["LOCAL_RANK"] = "0"
        try:
            if self.lm is None:  # wraps the module object itself: later weights are seen as they change
                self.lm = HFLM(pretrained=module, tokenizer=self.tokenizer, batch_size=self.cfg.downstream_batch_size)
            res = lm_eval.simple_evaluate(model=self.lm, tasks=tasks, task_manager=self.task_manager,
                                          limit=self.cfg.downstream_limit, log_samples=True)
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)
            if local_rank is None:
                os.environ.pop("LOCAL_RANK", None)
            else:
                os.environ["LOCAL_RANK"] = local_rank
        out: dict[str, dict[str, Any]] = {
            t: {m: float(res["results"][t][f"{m},none"]) for m in METRICS if f"{m},none" in res["results"][t]}
            for t in tasks}
        for t in tasks:
            items = item_scores(res["samples"].get(t, []))
            if "gold_loglik" in items:
                out[t]["gold_loglik"] = float(np.mean(items["gold_loglik"]))
            if items["id"]:
                out[t]["items"] = items
        return out


def _hf_tokenizer(spec: str) -> Any:
    """The training tokenizer as an HF tokenizer, the files written the way export writes them."""
    from transformers import AutoTokenizer

    from megatron_ipt.train.export import save_tokenizer

    with tempfile.TemporaryDirectory(prefix="downstream_tok_") as d:
        save_tokenizer(spec, Path(d))
        return AutoTokenizer.from_pretrained(d, local_files_only=True)
