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
its output (the completion marker) are written atomically and the partial file removed. A unit
whose output exists is skipped on rerun. Readers take the finished units in plan order
(:func:`synthesis_outputs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from megatron_ipt.config import ConfigError
from megatron_ipt.data.readers import (
    DataError,
    InputFile,
    as_input_file,
    count_lines,
    expand_inputs,
    input_stem,
    lone_surrogate,
    scan_records,
)
from megatron_ipt.dist_env import array_task
from megatron_ipt.io import OutputLocked, atomic_path, atomic_write_json, output_lock
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress
from megatron_ipt.synth.engine_types import Engine
from megatron_ipt.synth.engines import EngineConfig
from megatron_ipt.synth.provenance import model_fingerprint
from megatron_ipt.synth.rounds import SCHEDULES, Entry, RoundsConfig, run_rounds

log = get_logger(__name__)

@dataclass
class SynthesizeConfig:
    ALIASES: ClassVar[dict[str, str]] = {"inputs": "input", "shard_index": "task_index", "num_shards": "num_tasks"}

    input: list[str] | str = field(default_factory=list)  # files, folders or globs of {id, text} records
    output_dir: str = ""  # OUTPUT_DIR/<unit>.jsonl (+ .stats.json) per work unit, and units.plan
    engine: EngineConfig = field(default_factory=EngineConfig)
    rounds: int = 2  # M: 2 for general corpora, 3 for domain corpora
    max_new_tokens: int = 400  # tokens generated per round
    temperature: float = 0.0  # sampling temperature (0: greedy)
    top_p: float = 1.0  # nucleus sampling mass
    n: int = 1  # samples per text (their pairs are merged)
    seed: int = 0  # sampling seed
    max_pairs: int = 0  # cap on pairs per text; 0 = no cap
    stop: list[str] = field(default_factory=lambda: ["<CON>", "</CON>"])  # generation stops at these strings
    repetition_penalty: float = 1.0  # > 1 guards untuned/small synthesizers against loops
    batch_texts: int = 256  # texts per checkpointed batch
    schedule: str = "chain"  # chain: each batch of slots through all M rounds (its prefix still cached) | round: round by round (the reference's order); same output
    fraction: float = 1.0  # convert only this share of texts (chosen by a hash of the id)
    unit_texts: int = 10000  # lines (rows) of input per work unit: what array tasks share out; chains stay within one
    limit: int = 0  # read at most this many lines (rows) of each input file; 0 = all
    text_key: str = "text"  # record field holding the text
    id_key: str = "id"  # record field holding the id
    skip_bad_records: bool = False  # count and skip invalid JSON / missing text instead of failing
    task_index: int = -1  # this task's index among num_tasks; -1: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, else 0
    num_tasks: int = -1  # tasks that share the work units; -1: $SLURM_ARRAY_TASK_COUNT, else 1
    progress: bool = True  # show a progress bar
    dry_run: bool = False  # plan only: texts and tokens per unit, GPU-hours, array size and the sbatch line; nothing generated
    plan_tokens_per_s: float = 0.0  # dry run: generated tokens/s of one task (GPU) to plan with; 0: measure on a sample (loads the model)
    plan_output_tokens: int = 0  # dry run: generated tokens per text to plan with; 0: the sample's, or max_new_tokens x n when plan_tokens_per_s is given
    plan_sample_texts: int = 32  # dry run: texts synthesized to measure throughput (when plan_tokens_per_s is 0)
    plan_hours_per_task: float = 24.0  # dry run: wall-clock hours one array task may run (its sbatch --time)

    def validate(self) -> None:
        if isinstance(self.input, str):
            self.input = [self.input]
        if not self.input:
            raise ConfigError("input: give at least one input file, folder or glob")
        if not self.output_dir:
            raise ConfigError("output_dir: required")
        if not self.engine.model:
            raise ConfigError("engine.model: give the synthesizer's model directory")
        try:
            self.engine.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.rounds < 1 or self.batch_texts < 1 or self.unit_texts < 1:
            raise ConfigError("rounds, batch_texts and unit_texts must be >= 1")

    def rounds_config(self) -> RoundsConfig:
        return RoundsConfig(rounds=self.rounds, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                            top_p=self.top_p, n=self.n, seed=self.seed, max_pairs=self.max_pairs,
                            stop=tuple(self.stop), repetition_penalty=self.repetition_penalty)

    def fingerprint(self) -> str:
        """What decides a shard's content: a partial file from another setting is not reused."""
        keys = ("rounds", "max_new_tokens", "temperature", "top_p", "n", "seed", "max_pairs", "stop", "repetition_penalty",
                "batch_texts", "fraction", "text_key", "id_key")
        spec = {k: getattr(self, k) for k in keys} | {"model": self.engine.model,
                                                      "max_model_len": self.engine.max_model_len}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def shard_stem(path: Path) -> str:
    return input_stem(path)


def iter_texts(path: Path | InputFile, stats: Counter, text_key: str = "text", id_key: str = "id",
               skip_bad_records: bool = False, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, str]]:
    """``(id, text)`` records of one file: lines that are not UTF-8, empty texts and repeated ids are
    counted and skipped; a record without a text raises :class:`DataError` naming file, line and
    field (or, with ``skip_bad_records``, is counted). ``start``/``stop``: the 0-based line (row)
    range to read; ids repeated within it are caught."""
    f = as_input_file(path)
    seen: set[str] = set()
    for where, obj, error in scan_records(f, start, stop):
        if error is not None and error.reason == "invalid_utf8":
            stats["bad_utf8"] += 1
            log.warning("%s; skipped", error)
            continue
        if error is None and obj is not None and not isinstance(obj.get(text_key), str):
            error = DataError("missing or not a string", where=where, field=text_key, reason="missing_key")
        if error is None and obj is not None and lone_surrogate(obj[text_key]) is not None:
            error = DataError("holds a lone surrogate (not valid Unicode)", where=where, field=text_key,
                              reason="lone_surrogate")
        if error is not None:
            if not skip_bad_records:
                raise DataError(f"{error.detail} (skip_bad_records=true counts and skips it)", where=error.where,
                                field=error.field, reason=error.reason)
            stats["bad_records"] += 1
            log.warning("%s; skipped", error)
            continue
        assert obj is not None
        text = obj[text_key]
        rid = obj.get(id_key)
        rid = f"{shard_stem(f.path)}:{where.rsplit(':', 1)[1]}" if rid is None else str(rid)
        if not text.strip():
            stats["empty_texts"] += 1
            continue
        if rid in seen:
            stats["duplicate_ids"] += 1
            log.warning("%s: id %r repeats an earlier record; skipped", where, rid)
            continue
        seen.add(rid)
        yield rid, text


def read_texts(path: Path | InputFile, cfg: SynthesizeConfig, stats: Counter, start: int = 0,
               stop: int | None = None) -> list[tuple[str, str]]:
    """The texts of lines ``[start, stop)`` of one file this run converts (``fraction`` applied;
    ``limit`` caps ``stop``)."""
    if cfg.limit:
        stop = min(stop, cfg.limit) if stop is not None else cfg.limit
    out: list[tuple[str, str]] = []
    for rid, text in iter_texts(path, stats, cfg.text_key, cfg.id_key, cfg.skip_bad_records, start, stop):
        if cfg.fraction < 1 and not selected(rid, cfg.fraction, cfg.seed):
            stats["not_selected"] += 1
            continue
        out.append((rid, text))
    return out


PLAN_NAME = "units.plan"


@dataclass(frozen=True)
class Unit:
    """Lines (rows) ``[start, stop)`` of one input file; ``name`` is its output's stem."""

    file: str
    start: int
    stop: int
    name: str


def plan_units(files: list[InputFile], unit_texts: int, limit: int = 0) -> list[Unit]:
    """Every work unit of the inputs, in merge order (files in input order, then by line)."""
    units: list[Unit] = []
    for f in files:
        lines = count_lines(f)
        if limit:
            lines = min(lines, limit)
        n = max(1, -(-lines // unit_texts))
        stem = shard_stem(f.path)
        width = max(5, len(str(n - 1)))
        for k in range(n):
            name = stem if n == 1 else f"{stem}.{k:0{width}d}"
            units.append(Unit(str(f.path), k * unit_texts, min(lines, (k + 1) * unit_texts), name))
    names = Counter(u.name for u in units)
    clash = [n for n, c in names.items() if c > 1]
    if clash:
        raise ConfigError(f"two work units would both write {clash[0]!r}.jsonl: rename one of the input files")
    return units


def _file_signature(f: InputFile) -> list:
    st = f.path.stat()
    return [str(f.path), st.st_size, st.st_mtime_ns]


def load_plan(cfg: SynthesizeConfig, files: list[InputFile], out_dir: Path) -> list[Unit]:
    """The units of this output folder: the saved plan when the inputs are unchanged (no recount),
    else a new plan (saved); a plan over other inputs or another ``unit_texts`` is refused, since
    finished units of it would not fit the new one."""
    path = out_dir / PLAN_NAME
    spec = {"unit_texts": cfg.unit_texts, "limit": cfg.limit}
    signature = [_file_signature(f) for f in files]
    saved = None
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = None
    if saved is not None and saved.get("spec") == spec and saved.get("files") == signature:
        return [Unit(**u) for u in saved["units"]]
    units = plan_units(files, cfg.unit_texts, cfg.limit)
    if saved is not None:
        old = [Unit(**u) for u in saved.get("units", [])]
        finished = [u for u in old if (out_dir / f"{u.name}.jsonl").exists()]
        if finished and (saved.get("spec") != spec or old != units):
            raise ConfigError(f"{out_dir} holds units of other inputs or another unit_texts ({len(finished)} "
                              "finished): use a new output_dir, or the same inputs and unit_texts")
    atomic_write_json(path, {"spec": spec, "files": signature, "units": [dataclasses.asdict(u) for u in units]})
    return units


def synthesis_outputs(specs: list[str] | list[Path]) -> tuple[list[Path], int]:
    """Synthesis outputs to read, in a deterministic order, and how many planned units are not
    finished: a folder with a ``units.plan`` gives its finished units in plan order; other
    folders and files expand as inputs (stats files left out)."""
    outputs: list[Path] = []
    unfinished = 0
    for spec in specs:
        plan = Path(spec) / PLAN_NAME
        if plan.is_file():
            for u in json.loads(plan.read_text())["units"]:
                out = Path(spec) / f"{u['name']}.jsonl"
                if out.exists():
                    outputs.append(out)
                else:
                    unfinished += 1
            continue
        outputs += [f.path for f in expand_inputs([spec]) if not f.path.name.startswith(".")]
    return outputs, unfinished


def selected(text_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether a text falls in the converted ``fraction`` (stable across runs and shards)."""
    digest = hashlib.blake2b(f"select:{seed}:{text_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def _read_partial(path: Path, fingerprint: str) -> dict[tuple[int, int], list[Entry]]:
    """Finished batches from a partial file; a torn last line (the batch in flight) is ignored."""
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
        log.warning("%s was written with other settings; starting the shard over", path)
        return done
    for line in lines[1:]:
        try:
            batch = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[(batch["round"], batch["batch"])] = [Entry.from_record(r) for r in batch["entries"]]
    return done


def summarize(entries: list[Entry], input_stats: Counter, seconds: float) -> dict:
    """The shard's stats: pairs per text, parse failures, degenerate outputs, token totals."""
    s: Counter = Counter()
    finish: Counter = Counter()
    hist: Counter = Counter()
    failed: Counter = Counter()
    for e in entries:
        st = e.stats
        if e.failure:
            failed[e.failure] += 1
        hist[len(e.pairs)] += 1
        for key in ("malformed", "duplicates", "unfinished", "degenerate", "degenerate_pairs", "prompt_tokens",
                    "cached_tokens", "output_tokens", "capped"):
            s[key] += int(st.get(key, 0))
        s["text_truncated"] += bool(st.get("text_truncated"))
        s["chained"] += bool(st.get("chained"))
        s["linked"] += e.linked
        finish.update(st.get("finish", {}))
    pairs = sum(len(e.pairs) for e in entries)
    pieces = pairs + s["malformed"] + s["duplicates"] + s["degenerate_pairs"]
    texts = len(entries)
    return {
        "texts": texts,
        "pairs": pairs,
        "pairs_per_text": round(pairs / texts, 3) if texts else 0.0,
        "pairs_per_text_histogram": {str(k): hist[k] for k in sorted(hist)},
        "texts_without_pairs": hist[0],
        "failed_texts": sum(failed.values()),  # no generation at all (kept raw, no pairs), by reason below
        "failures": dict(sorted(failed.items())),
        "rounds": dict(sorted(Counter(str(e.round) for e in entries).items())),
        "chained": s["chained"],
        "linked": s["linked"],
        "parse": {
            "malformed_pieces": s["malformed"],
            "duplicate_instructions": s["duplicates"],
            "unfinished_outputs": s["unfinished"],  # no closing </END>: last piece dropped
            "failure_rate": round(s["malformed"] / pieces, 4) if pieces else 0.0,
        },
        "degenerate_outputs": s["degenerate"],
        "degenerate_pairs_dropped": s["degenerate_pairs"],
        "pairs_capped": s["capped"],
        "finish_reasons": dict(finish),
        "prompt_tokens": s["prompt_tokens"],
        "prompt_tokens_cached": s["cached_tokens"],  # served from the engine's prefix cache, not prefilled
        "output_tokens": s["output_tokens"],
        "texts_truncated": s["text_truncated"],
        # Every input count, the usual ones even when zero: a skip counted while reading is never left out.
        "input": {**{k: 0 for k in ("bad_utf8", "bad_records", "empty_texts", "duplicate_ids", "not_selected")},
                  **input_stats},
        "seconds": round(seconds, 2),
        "texts_per_s": round(texts / seconds, 3) if seconds > 0 else None,
        "output_tokens_per_s": round(s["output_tokens"] / seconds, 1) if seconds > 0 else None,
    }


def synthesize_unit(engine: Engine, cfg: SynthesizeConfig, unit: Unit, out_dir: Path) -> dict:
    """Synthesize one work unit (resuming from its partial file); returns its stats."""
    stem, path = unit.name, Path(unit.file)
    final, stats_path = out_dir / f"{stem}.jsonl", out_dir / f"{stem}.stats.json"
    partial = out_dir / f".{stem}.partial.jsonl"
    input_stats: Counter = Counter()
    texts = read_texts(path, cfg, input_stats, unit.start, unit.stop)
    provenance = shard_provenance(cfg, engine)
    # A partial file from another model at the same path (retrained in place) is not reused.
    fingerprint = f"{cfg.fingerprint()}-{provenance['synthesizer']['hash']}"
    done = _read_partial(partial, fingerprint)
    if not done:
        with open(partial, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"fingerprint": fingerprint, "input": str(path), "lines": [unit.start, unit.stop]})
                     + "\n")
    elif partial.read_bytes()[-1:] != b"\n":  # drop the torn batch so the next append starts clean
        with open(partial, "r+b") as fh:
            data = fh.read()
            fh.seek(data.rfind(b"\n") + 1)
            fh.truncate()
    resumed = sum(len(v) for v in done.values())
    if resumed:
        log.info("%s: resuming with %d texts already synthesized", path, resumed)

    bar = progress(total=len(texts), initial=resumed, desc=stem, unit="text", enabled=cfg.progress)
    t0 = time.time()
    new_texts = new_tokens = 0

    def checkpoint(rnd: int, b: int, entries: list[Entry]) -> None:
        nonlocal new_texts, new_tokens
        records = [e.record() | {"stats": e.stats} for e in entries]
        with open(partial, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"round": rnd, "batch": b, "entries": records}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        new_texts += len(entries)
        new_tokens += sum(e.stats.get("output_tokens", 0) for e in entries)
        dt = max(time.time() - t0, 1e-9)
        bar.set_postfix(texts_s=f"{new_texts / dt:.2f}", gen_tok_s=f"{new_tokens / dt:.0f}", round=rnd)
        bar.update(len(entries))

    entries = run_rounds(engine, texts, cfg.rounds_config(), cfg.batch_texts, done, checkpoint, cfg.schedule)
    bar.close()
    summary = summarize(entries, input_stats, time.time() - t0) | {
        "input_file": str(path), "input_lines": [unit.start, unit.stop], "resumed_texts": resumed,
        "provenance": provenance}
    # Stats first, the shard last: the shard's existence marks it finished, so a kill between the
    # two leaves an unfinished shard (redone from its partial file), never a shard without stats.
    atomic_write_json(stats_path, summary)
    with atomic_path(final) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for e in entries:
            fh.write(json.dumps(e.record(), ensure_ascii=False) + "\n")
    partial.unlink(missing_ok=True)
    log.info("%s: %d texts, %d pairs (%.2f per text), %d degenerate outputs -> %s", path, summary["texts"],
             summary["pairs"], summary["pairs_per_text"], summary["degenerate_outputs"], final)
    return summary


def task_of(task_index: int, num_tasks: int) -> tuple[int, int]:
    """The ``(index, count)`` of this task: the values given, else the launcher's array task."""
    if task_index < 0 or num_tasks < 0:
        task = array_task()
        task_index = task.index if task_index < 0 else task_index
        num_tasks = task.count if num_tasks < 0 else num_tasks
    if not 0 <= task_index < num_tasks:
        raise ConfigError(f"task_index {task_index} is outside 0..{num_tasks - 1}")
    return task_index, num_tasks


def synthesize(cfg: SynthesizeConfig, engine: Engine | None = None) -> dict:
    """Run this task's work units; finished ones are skipped. Returns per-unit stats by unit name."""
    cfg.validate()
    out_dir = Path(cfg.output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output_dir: cannot write {err.filename or out_dir}: {err.strerror or err}") from None
    files = expand_inputs(cfg.input)
    units = load_plan(cfg, files, out_dir)
    if cfg.dry_run:
        return dry_run(cfg, units, engine)
    index, count = task_of(cfg.task_index, cfg.num_tasks)
    mine = units[index::count]
    todo = [u for u in mine if not (out_dir / f"{u.name}.jsonl").exists()]
    log.info("array task %d of %d takes %d of %d work units over %d input files (%d already finished)", index,
             count, len(mine), len(units), len(files), len(mine) - len(todo))
    results = {}
    for u in mine:
        if u not in todo:
            stats_file = out_dir / f"{u.name}.stats.json"
            results[u.name] = json.loads(stats_file.read_text()) if stats_file.exists() else {"skipped": True}
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
    return results


def measure_throughput(cfg: SynthesizeConfig, units: list[Unit], engine: Engine | None) -> tuple[float, float]:
    """Generated tokens/s and generated tokens per text of a real run over the first
    ``plan_sample_texts`` texts (M rounds, the configured batching), written nowhere."""
    sample: list[tuple[str, str]] = []
    for u in units:
        sample += read_texts(Path(u.file), cfg, Counter(), u.start, u.stop)[: cfg.plan_sample_texts - len(sample)]
        if len(sample) >= cfg.plan_sample_texts:
            break
    if not sample:
        raise ConfigError("dry run: the inputs hold no text to measure throughput on")
    engine = engine or cfg.engine.build()
    t0 = time.perf_counter()
    entries = run_rounds(engine, sample, cfg.rounds_config(), cfg.batch_texts, schedule=cfg.schedule)
    seconds = time.perf_counter() - t0
    out_tokens = sum(e.stats.get("output_tokens", 0) for e in entries)
    log.info("dry run: %d sample texts -> %d generated tokens in %.1fs", len(sample), out_tokens, seconds)
    return out_tokens / max(seconds, 1e-9), out_tokens / len(sample)


def dry_run(cfg: SynthesizeConfig, units: list[Unit], engine: Engine | None = None) -> dict:
    """The plan before the spend: texts and prompt tokens per unit (read and tokenized, nothing
    generated), the GPU-hours they need at a given or measured throughput, the array size that
    fits ``plan_hours_per_task``, and the ``sbatch`` line to submit."""
    from megatron_ipt.pairs import context_text
    from megatron_ipt.synth.engine_types import resolve_tokenizer

    tok = engine.tokenizer if engine is not None else resolve_tokenizer(cfg.engine.model, cfg.engine.tokenizer or None)
    rows = []
    for u in progress(units, desc="counting", unit="unit", enabled=cfg.progress):
        stats: Counter = Counter()
        texts = read_texts(Path(u.file), cfg, stats, u.start, u.stop)
        tokens = sum(len(ids) + 1 for ids in tok.encode_batch([context_text(t) for _, t in texts])) if texts else 0
        rows.append({"unit": u.name, "file": u.file, "lines": [u.start, u.stop], "texts": len(texts),
                     "prompt_tokens": tokens})
    texts = sum(r["texts"] for r in rows)
    if cfg.plan_tokens_per_s > 0:
        rate, per_text = cfg.plan_tokens_per_s, float(cfg.max_new_tokens * cfg.n)
        source = "given by plan_tokens_per_s"
    else:
        rate, per_text = measure_throughput(cfg, units, engine)
        source = f"measured on {min(cfg.plan_sample_texts, texts)} texts"
    if cfg.plan_output_tokens > 0:
        per_text = float(cfg.plan_output_tokens)
    gpu_hours = texts * per_text / rate / 3600 if rate > 0 else float("inf")
    tasks = max(1, min(len(units), math.ceil(gpu_hours / cfg.plan_hours_per_task))) if texts else 1
    # Units go round-robin: the busiest task has ceil(units / tasks) of them.
    per_unit_hours = gpu_hours / max(1, len(units))
    task_hours = math.ceil(len(units) / tasks) * per_unit_hours
    hours = max(1, math.ceil(task_hours * 1.2 + 0.25))  # a margin for model loading and slow units
    inputs = " ".join(cfg.input)
    sbatch = (f'INPUTS="{inputs}" OUTPUT_DIR={cfg.output_dir} MODEL={cfg.engine.model} sbatch --array=0-{tasks - 1} '
              f"--time={hours}:00:00 slurm/synthesize.sh --unit_texts={cfg.unit_texts} --rounds={cfg.rounds} "
              f"--max_new_tokens={cfg.max_new_tokens}")
    plan = {"units": rows, "total_units": len(units), "texts": texts,
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "throughput_tokens_per_s": round(rate, 2), "throughput_source": source,
            "output_tokens_per_text": round(per_text, 1), "output_tokens": round(texts * per_text),
            "gpu_hours": round(gpu_hours, 3), "array_tasks": tasks, "hours_per_task": round(task_hours, 3),
            "sbatch": sbatch}
    if task_hours > cfg.plan_hours_per_task:
        log.warning("dry run: even %d tasks (one per unit) need %.1f h each, over plan_hours_per_task=%.1f: make "
                    "unit_texts smaller", tasks, task_hours, cfg.plan_hours_per_task)
    return plan


def plan_text(plan: dict, max_rows: int = 20) -> str:
    """The dry run's plan as lines for a terminal."""
    lines = [f"{'unit':<32} {'lines':>15} {'texts':>9} {'prompt tokens':>14}"]
    for r in plan["units"][:max_rows]:
        lines.append(f"{r['unit']:<32} {r['lines'][0]:>7}-{r['lines'][1]:<7} {r['texts']:>9,} {r['prompt_tokens']:>14,}")
    if len(plan["units"]) > max_rows:
        lines.append(f"... {len(plan['units']) - max_rows} more units")
    lines += [f"{plan['total_units']} units, {plan['texts']:,} texts, {plan['prompt_tokens']:,} prompt tokens (round 1)",
              f"throughput {plan['throughput_tokens_per_s']:,} generated tokens/s per task ({plan['throughput_source']}), "
              f"{plan['output_tokens_per_text']} generated tokens per text",
              f"estimate: {plan['gpu_hours']:.3g} GPU-hours; {plan['array_tasks']} array tasks of about "
              f"{plan['hours_per_task']:.3g} h each", "submit with:", "  " + plan["sbatch"]]
    return "\n".join(lines)


def shard_provenance(cfg: SynthesizeConfig, engine: Engine) -> dict:
    """What made a shard: the synthesizer's model fingerprint, its tokenizer's, and the settings."""
    settings = {k: v for k, v in config_dict(cfg).items() if k not in ("input", "output_dir", "progress",
                                                                       "task_index", "num_tasks")}
    return {"synthesizer": model_fingerprint(cfg.engine.model), "tokenizer": engine.tokenizer.fingerprint(),
            "config": settings}


def config_dict(cfg: SynthesizeConfig) -> dict:
    return dataclasses.asdict(cfg)
