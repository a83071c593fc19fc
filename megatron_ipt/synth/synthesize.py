"""The resumable synthesis runner over work units: ``{id, text}`` inputs → output units of
``{id, text, pairs, round, linked, slot}`` plus a stats JSON per unit.

Work units do not depend on files: each input file is cut into units of ``unit_texts`` lines (rows
of parquet files and saved datasets), streamed from their line range, so a large file is many
units and a task never holds more than one unit. The plan (every unit, in merge order) is the
same for any array size and is written to ``OUTPUT_DIR/units.plan``; array task ``i`` of ``n``
takes units ``i, i+n, ...``, so 1 task or 1,000 produce the same output set. A unit's output is
``<stem>.jsonl`` when its file is one unit, else ``<stem>.<k>.jsonl`` (k zero-padded). M-shot
chains stay within a unit. Each generated batch is appended as one JSON line to a hidden partial
file (flushed and fsynced), so a kill loses at most the batch in flight; the unit's stats and then
its output are written atomically and the partial file removed. A unit is finished when its output
has the size and hash its stats record (a torn or edited output is redone); finished units are
skipped on rerun. Each unit's stats and partial file record a hash of the texts it read, so an
input edited since is noticed: a partial unit restarts, and finished units over changed inputs or
made with other settings are refused (``start_over`` discards them). The output contract and its
reader are :mod:`megatron_ipt.synth.units`; the dry run is :mod:`megatron_ipt.synth.plan`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from megatron_ipt.config import ConfigError
from megatron_ipt.data.inputs import DataError, InputFile, expand_inputs
from megatron_ipt.dist_env import LaunchError, array_task
from megatron_ipt.io import OutputLocked, atomic_path, atomic_write_json, output_lock
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress
from megatron_ipt.synth.config import CONTENT_KEYS, SynthesizeConfig, config_dict, content_settings, jsonable
from megatron_ipt.synth.engine_types import Engine
from megatron_ipt.synth.plan import dry_run
from megatron_ipt.synth.provenance import model_fingerprint
from megatron_ipt.synth.rounds import Entry, run_rounds
from megatron_ipt.synth.stats import PAPER_DEVICE_HOURS_PER_1B, cost_stats, speculation_counts, summarize
from megatron_ipt.synth.units import (
    PLAN_NAME,
    Unit,
    discard_units,
    file_signature,
    plan_units,
    read_texts,
    saved_units,
    texts_digest,
    unit_state,
)

log = get_logger(__name__)


def _plan_changes(saved: dict, spec: dict, old: list[Unit], units: list[Unit]) -> str:
    """What differs between a saved plan and a new one, in words."""
    changes = [f"{k} {saved.get('spec', {}).get(k)} -> {v}" for k, v in spec.items()
               if saved.get("spec", {}).get(k) != v]
    by_file: dict[str, tuple[list, list]] = {}
    for which, us in enumerate((old, units)):
        for u in us:
            by_file.setdefault(u.file, ([], []))[which].append((u.start, u.stop, u.name))
    changed = [f for f, (a, b) in by_file.items() if a != b]
    if changed and not changes:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        changes.append("inputs changed: " + ", ".join(changed[:3]) + more)
    return "; ".join(changes)


def load_plan(cfg: SynthesizeConfig, files: list[InputFile], out_dir: Path) -> list[Unit]:
    """The units of this output folder: the saved plan when the inputs are unchanged (no recount),
    else a new plan (saved); a plan over other inputs or another ``unit_texts`` is refused while
    units of it are finished (they would not fit the new one), unless ``start_over`` discards them."""
    path = out_dir / PLAN_NAME
    spec = {"unit_texts": cfg.unit_texts, "limit": cfg.limit}
    signature = [file_signature(f) for f in files]
    saved = None
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = None
    if saved is not None and saved.get("spec") == spec and saved.get("files") == signature:
        return saved_units(saved, path, {str(f.path) for f in files})
    units = plan_units(files, cfg.unit_texts, cfg.limit)
    if saved is not None:
        old = saved_units(saved, path)
        finished = [u for u in old if (out_dir / f"{u.name}.jsonl").exists()]
        if finished and (saved.get("spec") != spec or old != units):
            what = _plan_changes(saved, spec, old, units)
            if not cfg.start_over:
                raise ConfigError(f"{out_dir} holds {len(finished)} finished units planned over other inputs or "
                                  f"another unit_texts ({what}): use a new output_dir, the same inputs and "
                                  "unit_texts, or start_over=true to discard them")
            if cfg.dry_run:
                log.warning("dry run: start_over would discard %d finished units (%s)", len(finished), what)
                return units
            log.warning("start_over: discarding %d finished units of %s (%s)", discard_units(out_dir, old), out_dir,
                        what)
    atomic_write_json(path, {"spec": spec, "files": signature, "units": [dataclasses.asdict(u) for u in units]})
    return units


def settings_changes(cfg: SynthesizeConfig, stats: dict, model_hash: str | None) -> list[str]:
    """The content settings (and the synthesizer) that differ between a finished unit's stats and ``cfg``."""
    prov = stats.get("provenance") if isinstance(stats.get("provenance"), dict) else {}
    recorded = prov.get("config") if isinstance(prov.get("config"), dict) else {}
    old, new = content_settings(recorded), content_settings(jsonable(config_dict(cfg)))
    changes = [f"{k} {old[k]!r} -> {new[k]!r}" for k in CONTENT_KEYS if k in old and old[k] != new[k]]
    engine = recorded.get("engine") if isinstance(recorded.get("engine"), dict) else {}
    if "max_model_len" in engine and engine["max_model_len"] != cfg.engine.max_model_len:
        changes.append(f"engine.max_model_len {engine['max_model_len']} -> {cfg.engine.max_model_len}")
    old_hash = (prov.get("synthesizer") or {}).get("hash") if isinstance(prov.get("synthesizer"), dict) else None
    if old_hash and model_hash:  # the same weights moved elsewhere are the same synthesizer
        if old_hash != model_hash:
            changes.append(f"the synthesizer (model hash {old_hash} -> {model_hash})")
    elif "model" in engine and engine["model"] != cfg.engine.model:
        changes.append(f"engine.model {engine['model']!r} -> {cfg.engine.model!r}")
    return changes


def input_changed(cfg: SynthesizeConfig, unit: Unit, stats: dict) -> bool:
    """Whether a finished unit's input lines read otherwise now than when it was made (re-read only
    when the file's size or mtime moved)."""
    record = stats.get("input_fingerprint")
    if not isinstance(record, dict):
        return False
    try:
        st = Path(unit.file).stat()
    except OSError:
        return True
    if [st.st_size, st.st_mtime_ns] == [record.get("file_bytes"), record.get("file_mtime_ns")]:
        return False
    counts: Counter = Counter()
    return texts_digest(read_texts(Path(unit.file), cfg, counts, unit.start, unit.stop), counts) != record.get(
        "texts_sha256")


def check_finished(cfg: SynthesizeConfig, units: list[Unit], out_dir: Path) -> None:
    """Refuse (or with ``start_over`` discard) finished units that this run would not write the same:
    made with other settings or another synthesizer, or over input lines edited since."""
    model_hash = model_fingerprint(cfg.engine.model)["hash"]
    other: dict[str, list[str]] = {}
    edited: list[Unit] = []
    for u in units:
        stats, _ = unit_state(out_dir, u, verify=False)
        if stats is None:
            continue
        changes = settings_changes(cfg, stats, model_hash)
        if changes:
            other[u.name] = changes
        elif input_changed(cfg, u, stats):
            edited.append(u)
    if not other and not edited:
        return
    if other:
        first = next(iter(other))
        what = (f"{len(other)} finished units made with other settings ({'; '.join(other[first])}, in {first}"
                f"{' and others' if len(other) > 1 else ''})")
    else:
        changed = sorted({u.file for u in edited})
        what = (f"{len(edited)} finished units whose input changed since ({', '.join(changed[:3])}"
                f"{f' and {len(changed) - 3} more' if len(changed) > 3 else ''}: {edited[0].name} and others)")
    if not cfg.start_over:
        raise ConfigError(f"{out_dir} holds {what}: rerun with its settings and inputs, use a new output_dir, or "
                          "start_over=true to redo them")
    gone = [u for u in units if u.name in other] + edited
    if cfg.dry_run:
        log.warning("dry run: start_over would redo %s", what)
        return
    discard_units(out_dir, gone)
    log.warning("start_over: redoing %s", what)


def _read_partial(path: Path, fingerprint: str, digest: str, unit: Unit) -> dict[tuple[int, int], list[Entry]]:
    """Finished batches from a partial file; a torn last line (the batch in flight) is ignored. A
    partial file of other settings or of input lines that read otherwise now is not reused."""
    done: dict[tuple[int, int], list[Entry]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = {}
    if header.get("fingerprint") != fingerprint:
        log.warning("%s was written with other settings; starting the unit over", path)
        return done
    if header.get("texts_sha256") != digest:
        log.warning("%s: lines %d-%d of %s changed since %s was written; starting the unit over", unit.name,
                    unit.start, unit.stop, unit.file, path.name)
        return done
    for line in lines[1:]:
        try:
            batch = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[(batch["round"], batch["batch"])] = [Entry.from_record(r) for r in batch["entries"]]
    return done


def _resume_partial(partial: Path, header: dict, unit: Unit) -> dict[tuple[int, int], list[Entry]]:
    """The finished batches of the unit's partial file when it was written under ``header`` (its torn
    last batch cut off, so the next append starts clean); else a new partial file with ``header``."""
    done = _read_partial(partial, header["fingerprint"], header["texts_sha256"], unit)
    if not done:
        with open(partial, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(header) + "\n")
    elif partial.read_bytes()[-1:] != b"\n":
        with open(partial, "r+b") as fh:
            data = fh.read()
            fh.seek(data.rfind(b"\n") + 1)
            fh.truncate()
    return done


class _Checkpoint:
    """``run_rounds``'s ``on_batch``: each generated batch appended to the partial file (flushed and
    fsynced), and the rate on the progress bar."""

    def __init__(self, partial: Path, bar) -> None:
        self.partial, self.bar = partial, bar
        self.t0 = time.time()
        self.fresh: list[Entry] = []  # generated in this run (not resumed): what the cost is measured on
        self.tokens = 0

    def __call__(self, rnd: int, b: int, entries: list[Entry]) -> None:
        self.fresh.extend(entries)
        records = [e.record() | {"stats": e.stats} for e in entries]
        with open(self.partial, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"round": rnd, "batch": b, "entries": records}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.tokens += sum(e.stats.get("output_tokens", 0) for e in entries)
        dt = max(time.time() - self.t0, 1e-9)
        self.bar.set_postfix(texts_s=f"{len(self.fresh) / dt:.2f}", gen_tok_s=f"{self.tokens / dt:.0f}", round=rnd)
        self.bar.update(len(entries))


def _write_unit(out_dir: Path, stem: str, entries: list[Entry], summary: dict) -> None:
    """The unit's stats and then its output, each atomically. The stats record the output's size and
    hash (the completion record), so a kill between the two leaves stats without an output (redone
    from the partial file), and an output torn later no longer matches its record (redone)."""
    with atomic_path(out_dir / f"{stem}.jsonl") as tmp:
        h, size = hashlib.sha256(), 0
        with open(tmp, "wb") as fh:
            for e in entries:
                line = (json.dumps(e.record(), ensure_ascii=False) + "\n").encode("utf-8")
                h.update(line)
                size += len(line)
                fh.write(line)
        summary["output"] = {"bytes": size, "sha256": h.hexdigest()}
        atomic_write_json(out_dir / f"{stem}.stats.json", summary)


def _log_unit(stem: str, path: Path, out_dir: Path, summary: dict) -> None:
    log.info("%s: %d texts, %d pairs (%.2f per text), %d degenerate outputs -> %s", path, summary["texts"],
             summary["pairs"], summary["pairs_per_text"], summary["degenerate_outputs"], out_dir / f"{stem}.jsonl")
    cost = summary["cost"]
    if cost["device_hours_per_1b_raw_tokens"] is not None:
        log.info("%s: %s output tokens/s, %s device-hours per 1B raw tokens on %s (the paper: about %g on an A100)",
                 stem, cost["output_tokens_per_s"], f"{cost['device_hours_per_1b_raw_tokens']:,}", cost["device"],
                 PAPER_DEVICE_HOURS_PER_1B)


def synthesize_unit(engine: Engine, cfg: SynthesizeConfig, unit: Unit, out_dir: Path) -> dict:
    """Synthesize one work unit (resuming from its partial file); returns its stats."""
    stem, path = unit.name, Path(unit.file)
    partial = out_dir / f".{stem}.partial.jsonl"
    input_stats: Counter = Counter()
    file_stat = path.stat()  # before reading: an edit while the unit runs shows as a change on rerun
    texts = read_texts(path, cfg, input_stats, unit.start, unit.stop)
    digest = texts_digest(texts, input_stats)
    provenance = unit_provenance(cfg, engine)
    # A partial file from another model at the same path (retrained in place) is not reused.
    fingerprint = f"{cfg.fingerprint()}-{provenance['synthesizer']['hash']}"
    done = _resume_partial(partial, {"fingerprint": fingerprint, "input": str(path), "lines": [unit.start, unit.stop],
                                     "texts_sha256": digest}, unit)
    resumed = sum(len(v) for v in done.values())
    if resumed:
        log.info("%s: resuming with %d texts already synthesized", path, resumed)
    bar = progress(total=len(texts), initial=resumed, desc=stem, unit="text", enabled=cfg.progress)
    checkpoint = _Checkpoint(partial, bar)
    spec_before = speculation_counts(engine)
    entries = run_rounds(engine, texts, cfg.rounds_config(), cfg.batch_texts, done, checkpoint, cfg.schedule)
    bar.close()
    seconds = time.time() - checkpoint.t0
    spec_after = speculation_counts(engine)
    spec = None if spec_before is None or spec_after is None else (spec_after[0] - spec_before[0],
                                                                   spec_after[1] - spec_before[1])
    summary = summarize(entries, input_stats, seconds) | {
        "input_file": str(path), "input_lines": [unit.start, unit.stop], "resumed_texts": resumed,
        "input_fingerprint": {"file_bytes": file_stat.st_size, "file_mtime_ns": file_stat.st_mtime_ns,
                              "texts_sha256": digest},
        "cost": cost_stats(checkpoint.fresh, seconds, engine, spec), "provenance": provenance}
    _write_unit(out_dir, stem, entries, summary)
    partial.unlink(missing_ok=True)
    _log_unit(stem, path, out_dir, summary)
    return summary


def task_of(task_index: int | None, num_tasks: int | None) -> tuple[int, int]:
    """The ``(index, count)`` of this task: the values given, else the launcher's array task."""
    if task_index is not None and task_index < 0 or num_tasks is not None and num_tasks < 1:
        raise ConfigError(f"task_index must be >= 0 and num_tasks >= 1, got {task_index} and {num_tasks}")
    if task_index is None or num_tasks is None:
        try:
            task = array_task()
        except LaunchError as err:  # an array that is not a range (--array=0,7): its message says what to do
            raise ConfigError(str(err)) from None
        task_index = task.index if task_index is None else task_index
        num_tasks = task.count if num_tasks is None else num_tasks
    if not 0 <= task_index < num_tasks:
        raise ConfigError(f"task_index {task_index} is outside 0..{num_tasks - 1}")
    return task_index, num_tasks


@dataclass
class SynthesisResult:
    """What :func:`synthesize` did: the stats of this task's units by unit name (finished before or
    made now), or on a dry run the plan (:func:`megatron_ipt.synth.plan.dry_run`) and no unit."""

    units: dict[str, dict] = field(default_factory=dict)
    plan: dict | None = None


def synthesize(cfg: SynthesizeConfig, engine: Engine | None = None) -> SynthesisResult:
    """Run this task's work units; finished ones are skipped."""
    cfg.validate()
    out_dir = Path(cfg.output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output_dir: cannot write {err.filename or out_dir}: {err.strerror or err}") from None
    files = expand_inputs(cfg.input)
    index, count = (0, 1) if cfg.dry_run else task_of(cfg.task_index, cfg.num_tasks)
    if cfg.start_over and count > 1:
        raise ConfigError(f"start_over discards units of every task: run it as one task, not as task {index} of {count}")
    units = load_plan(cfg, files, out_dir)
    check_finished(cfg, units, out_dir)
    if cfg.dry_run:
        return SynthesisResult(plan=dry_run(cfg, units, engine))
    mine = units[index::count]
    results: dict[str, dict] = {}
    todo = []
    for u in mine:
        stats, why = unit_state(out_dir, u)
        if stats is not None:
            results[u.name] = stats
            continue
        if why is not None:
            log.warning("%s %s; redoing the unit", out_dir / f"{u.name}.jsonl", why)
        todo.append(u)
    log.info("array task %d of %d takes %d of %d work units over %d input files (%d already finished)", index,
             count, len(mine), len(units), len(files), len(mine) - len(todo))
    if todo and engine is None:
        try:
            engine = cfg.engine.build()
        except (OSError, ValueError) as err:  # no config/weights/tokenizer files, or unreadable ones
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise ConfigError(f"engine.model: cannot load the synthesizer {cfg.engine.model!r} ({first})") from err
    for u in todo:
        try:
            with output_lock(out_dir / u.name):  # one writer per unit; other units run in parallel
                results[u.name] = synthesize_unit(engine, cfg, u, out_dir)
        except OutputLocked as err:
            raise DataError(str(err), reason="output_locked") from None
        except OSError as err:  # inputs fail as DataError: this is the output side (full or read-only disk)
            raise DataError(f"{out_dir}: cannot write {err.filename or u.name}: {err.strerror or err}; "
                            "a rerun resumes from the last checkpointed batch", reason="unwritable_output") from None
    return SynthesisResult(units=results)


def unit_provenance(cfg: SynthesizeConfig, engine: Engine) -> dict:
    """What made a unit: the synthesizer's model fingerprint, its tokenizer's, and the settings."""
    settings = {k: v for k, v in config_dict(cfg).items() if k not in ("input", "output_dir", "progress",
                                                                       "task_index", "num_tasks", "start_over")}
    return {"synthesizer": model_fingerprint(cfg.engine.model), "tokenizer": engine.tokenizer.fingerprint(),
            "config": jsonable(settings)}
