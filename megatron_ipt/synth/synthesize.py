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
made with other settings are refused (``start_over`` discards them). Readers take the finished
units in plan order (:func:`synthesis_outputs`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shlex
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
from megatron_ipt.dist_env import LaunchError, array_task
from megatron_ipt.io import OutputLocked, atomic_path, atomic_write_json, output_lock
from megatron_ipt.log import get_logger
from megatron_ipt.pairs import escape_markers, find_marker
from megatron_ipt.progress import progress
from megatron_ipt.synth.engine_types import Engine
from megatron_ipt.synth.engines import EngineConfig
from megatron_ipt.synth.provenance import model_fingerprint
from megatron_ipt.synth.rounds import SCHEDULES, Entry, RoundsConfig, run_rounds

log = get_logger(__name__)

# The settings that decide a unit's content (with the model): finished units made with others are refused.
CONTENT_KEYS = ("rounds", "max_new_tokens", "temperature", "top_p", "n", "seed", "max_pairs", "stop",
                "repetition_penalty", "batch_texts", "fraction", "text_key", "id_key")


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
    task_index: int | None = None  # this task's index among num_tasks; unset: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, else 0
    num_tasks: int | None = None  # tasks that share the work units; unset: $SLURM_ARRAY_TASK_COUNT, else 1
    start_over: bool = False  # discard output_dir's units made from other inputs or settings (one task, never in an array)
    progress: bool = True  # show a progress bar
    dry_run: bool = False  # plan only: texts and tokens per unit, GPU-hours, array size and the sbatch line; nothing generated
    plan_tokens_per_s: float = 0.0  # dry run: generated tokens/s of one task (GPU) to plan with; 0: measure on a sample (loads the model)
    plan_output_tokens: int = 0  # dry run: generated tokens per text to plan with; 0: the sample's, or max_new_tokens x n when plan_tokens_per_s is given
    plan_sample_texts: int = 256  # dry run: at most this many texts synthesized to measure throughput (when plan_tokens_per_s is 0)
    plan_sample_seconds: float = 60.0  # dry run: the measurement stops after the group of texts that passes this many seconds
    plan_sample_tokens: int = 16  # dry run: tokens generated per text and round while measuring
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
        if self.task_index is not None and self.task_index < 0:
            raise ConfigError(f"task_index must be 0 or more (unset: the array task's), got {self.task_index}")
        if self.num_tasks is not None and self.num_tasks < 1:
            raise ConfigError(f"num_tasks must be 1 or more (unset: the array's task count), got {self.num_tasks}")

    def rounds_config(self) -> RoundsConfig:
        return RoundsConfig(rounds=self.rounds, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                            top_p=self.top_p, n=self.n, seed=self.seed, max_pairs=self.max_pairs,
                            stop=tuple(self.stop), repetition_penalty=self.repetition_penalty)

    def fingerprint(self) -> str:
        """What decides a shard's content: a partial file from another setting is not reused."""
        spec = {k: getattr(self, k) for k in CONTENT_KEYS} | {"model": self.engine.model,
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
    ``limit`` caps ``stop``). A format marker in a text (``</CON>``, ``<QUE>`` ...) would end its
    context early in the prompt and smuggle a "pair" into the corpus: it is escaped (as
    ``build_synthesizer_data`` does) and the text counted as ``markers_escaped``."""
    if cfg.limit:
        stop = min(stop, cfg.limit) if stop is not None else cfg.limit
    out: list[tuple[str, str]] = []
    for rid, text in iter_texts(path, stats, cfg.text_key, cfg.id_key, cfg.skip_bad_records, start, stop):
        if cfg.fraction < 1 and not selected(rid, cfg.fraction, cfg.seed):
            stats["not_selected"] += 1
            continue
        if find_marker(text) is not None:
            stats["markers_escaped"] += 1
            text = escape_markers(text)
        out.append((rid, text))
    return out


def texts_digest(texts: list[tuple[str, str]], input_stats: Counter) -> str:
    """A hash of what a unit read (its texts and skip counts): an input edited since reads as another."""
    spec = [texts, sorted(input_stats.items())]
    return hashlib.sha256(json.dumps(spec, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()[:32]


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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def saved_units(saved: object, path: Path, inputs: set[str] | None = None) -> list[Unit]:
    """The units of a saved plan, each checked, so a crafted plan cannot point reads or writes
    outside the output folder: a name is a plain file name (no separator, not ``.`` or ``..``), and
    with ``inputs`` given a unit's file must be one of them."""
    units = saved.get("units") if isinstance(saved, dict) else None
    if not isinstance(units, list):
        raise DataError("must be a list of {file, start, stop, name}", where=str(path), field="units",
                        reason="bad_plan")
    out = []
    for i, u in enumerate(units):
        at = f"units[{i}]"
        if not isinstance(u, dict) or set(u) != {"file", "start", "stop", "name"}:
            raise DataError("must be {file, start, stop, name}", where=str(path), field=at, reason="bad_plan")
        name = u["name"]
        if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise DataError(f"{name!r} is not a unit name (a file name in the output folder: no separator, "
                            "not '..')", where=str(path), field=f"{at}.name", reason="bad_plan")
        if not (_is_int(u["start"]) and _is_int(u["stop"]) and 0 <= u["start"] <= u["stop"]):
            raise DataError("start and stop must be line numbers, start <= stop", where=str(path), field=at,
                            reason="bad_plan")
        if not isinstance(u["file"], str) or (inputs is not None and u["file"] not in inputs):
            raise DataError(f"{u['file']!r} is not one of this run's inputs", where=str(path), field=f"{at}.file",
                            reason="bad_plan")
        out.append(Unit(**u))
    return out


def _file_signature(f: InputFile) -> list:
    st = f.path.stat()
    return [str(f.path), st.st_size, st.st_mtime_ns]


def discard_units(out_dir: Path, units: list[Unit]) -> int:
    """Remove what synthesize wrote for ``units`` (output, stats, partial file); returns how many units had any."""
    n = 0
    for u in units:
        paths = [out_dir / f"{u.name}.jsonl", out_dir / f"{u.name}.stats.json", out_dir / f".{u.name}.partial.jsonl"]
        n += any(p.exists() for p in paths)
        for p in paths:
            p.unlink(missing_ok=True)
    return n


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
    signature = [_file_signature(f) for f in files]
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


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def unit_state(out_dir: Path, unit: Unit, verify: bool = True) -> tuple[dict | None, str | None]:
    """``(stats, None)`` for a finished unit, else ``(None, why)``; ``why`` is None when the unit has
    no output at all. Finished means: its stats record the output's size and hash (the completion
    record) and, with ``verify``, the output on disk has them (a torn or edited output has not)."""
    out = out_dir / f"{unit.name}.jsonl"
    if not out.exists():
        return None, None
    try:
        stats = json.loads((out_dir / f"{unit.name}.stats.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, "has no readable stats (its completion record)"
    record = stats.get("output") if isinstance(stats, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return None, "has no completion record (output size and hash) in its stats"
    if verify:
        st = out.stat()
        if st.st_size != record.get("bytes"):
            return None, f"holds {st.st_size:,} bytes, its stats record {record.get('bytes')}: a torn or edited output"
        if _file_digest(str(out), st.st_size, st.st_mtime_ns) != record["sha256"]:
            return None, "differs from the hash its stats record: an edited output"
    return stats, None


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value))


def settings_changes(cfg: SynthesizeConfig, stats: dict, model_hash: str | None) -> list[str]:
    """The content settings (and the synthesizer) that differ between a finished unit's stats and ``cfg``."""
    prov = stats.get("provenance") if isinstance(stats.get("provenance"), dict) else {}
    old = prov.get("config") if isinstance(prov.get("config"), dict) else {}
    changes = [f"{k} {old[k]!r} -> {_jsonable(getattr(cfg, k))!r}" for k in CONTENT_KEYS
               if k in old and old[k] != _jsonable(getattr(cfg, k))]
    engine = old.get("engine") if isinstance(old.get("engine"), dict) else {}
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


@dataclass
class SynthesisOutputs:
    """Synthesis output files to read, in plan order, and what of the folders is not among them."""

    files: list[Path]
    unfinished: list[str] = field(default_factory=list)  # planned units with no complete output (why, by unit)
    unlisted: list[Path] = field(default_factory=list)  # unit files in a planned folder that its units.plan does not list


def synthesis_outputs(specs: list[str] | list[Path]) -> SynthesisOutputs:
    """Synthesis outputs to read, in a deterministic order: a folder with a ``units.plan`` gives its
    finished units in plan order (a torn output counts as unfinished; a ``.jsonl`` there that the
    plan does not list is left out and listed); other folders and files expand as inputs (stats
    files left out)."""
    found = SynthesisOutputs([])
    for spec in specs:
        folder = Path(spec)
        plan = folder / PLAN_NAME
        if plan.is_file():
            try:
                saved = json.loads(plan.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise DataError(f"{plan}: not a units plan ({err})", reason="bad_plan") from None
            units = saved_units(saved, plan)
            for u in units:
                stats, why = unit_state(folder, u)
                if stats is not None:
                    found.files.append(folder / f"{u.name}.jsonl")
                else:
                    found.unfinished.append(f"{u.name} ({why or 'not synthesized yet'})")
            listed = {f"{u.name}.jsonl" for u in units}
            found.unlisted += [p for p in sorted(folder.glob("*.jsonl"))
                               if p.name not in listed and not p.name.startswith(".")]
            continue
        found.files += [f.path for f in expand_inputs([spec]) if not f.path.name.startswith(".")]
    return found


def selected(text_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether a text falls in the converted ``fraction`` (stable across runs and shards)."""
    digest = hashlib.blake2b(f"select:{seed}:{text_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


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
        log.warning("%s was written with other settings; starting the shard over", path)
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
                    "cached_tokens", "output_tokens", "capped", "text_tokens"):
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
        "raw_tokens": s["text_tokens"],  # the texts' own tokens in their prompts (BOS + context): the raw input
        "texts_truncated": s["text_truncated"],
        # Every input count, the usual ones even when zero: a skip counted while reading is never left out.
        "input": {**{k: 0 for k in ("bad_utf8", "bad_records", "empty_texts", "duplicate_ids", "not_selected",
                                    "markers_escaped")},
                  **input_stats},
        "seconds": round(seconds, 2),
        "texts_per_s": round(texts / seconds, 3) if seconds > 0 else None,
        "output_tokens_per_s": round(s["output_tokens"] / seconds, 1) if seconds > 0 else None,
    }


PAPER_DEVICE_HOURS_PER_1B = 24.0  # the paper: about one A100-day per 1B raw tokens


def device_label(engine: Engine) -> tuple[str, int]:
    """What the engine decodes on, in words, and how many devices one model takes."""
    import torch

    device = getattr(engine, "device", None)
    count = int(getattr(engine, "tensor_parallel_size", 1) or 1)
    if device is None:  # vLLM: CUDA GPUs
        device = torch.device("cuda")
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}", count
    return f"{device.type} ({torch.get_num_threads()} threads)", count


def cost_stats(entries: list[Entry], seconds: float, engine: Engine, speculation: tuple[int, int] | None) -> dict:
    """What ``entries`` (generated in this run, in ``seconds``) cost in the paper's units: device-hours
    per 1B raw input tokens, output tokens/s, and per round the prompt tokens prefilled vs served
    from the prefix cache. ``speculation``: (drafted, accepted) tokens when the engine counts them."""
    device, count = device_label(engine)
    raw = sum(int(e.stats.get("text_tokens", 0)) for e in entries)
    out = sum(int(e.stats.get("output_tokens", 0)) for e in entries)
    rounds: dict[str, Counter] = {}
    for e in entries:
        r = rounds.setdefault(str(e.round), Counter())
        prompt, cached = int(e.stats.get("prompt_tokens", 0)), int(e.stats.get("cached_tokens", 0))
        r.update(texts=1, prompt_tokens=prompt, prefilled=prompt - cached, cached=cached,
                 output_tokens=int(e.stats.get("output_tokens", 0)))
    cost = {"device": device, "devices": count, "seconds": round(seconds, 2), "texts": len(entries),
            "raw_tokens": raw, "output_tokens": out,
            "output_tokens_per_s": round(out / seconds, 1) if seconds > 0 else None,
            "device_hours_per_1b_raw_tokens": round(seconds * count / 3600 / raw * 1e9, 1) if raw and seconds > 0
            else None,
            "paper_device_hours_per_1b_raw_tokens": PAPER_DEVICE_HOURS_PER_1B,
            "rounds": {k: dict(v) for k, v in sorted(rounds.items(), key=lambda kv: int(kv[0]))}}
    if speculation is not None:
        drafted, accepted = speculation
        cost["speculation"] = {"drafted": drafted, "accepted": accepted,
                               "acceptance_rate": round(accepted / drafted, 3) if drafted else None}
    return cost


def _speculation_counts(engine: Engine) -> tuple[int, int] | None:
    if not hasattr(engine, "drafted_tokens"):
        return None
    return int(engine.drafted_tokens), int(engine.accepted_tokens)


def synthesize_unit(engine: Engine, cfg: SynthesizeConfig, unit: Unit, out_dir: Path) -> dict:
    """Synthesize one work unit (resuming from its partial file); returns its stats."""
    stem, path = unit.name, Path(unit.file)
    final, stats_path = out_dir / f"{stem}.jsonl", out_dir / f"{stem}.stats.json"
    partial = out_dir / f".{stem}.partial.jsonl"
    input_stats: Counter = Counter()
    file_stat = path.stat()  # before reading: an edit while the unit runs shows as a change on rerun
    texts = read_texts(path, cfg, input_stats, unit.start, unit.stop)
    digest = texts_digest(texts, input_stats)
    provenance = shard_provenance(cfg, engine)
    # A partial file from another model at the same path (retrained in place) is not reused.
    fingerprint = f"{cfg.fingerprint()}-{provenance['synthesizer']['hash']}"
    done = _read_partial(partial, fingerprint, digest, unit)
    if not done:
        with open(partial, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"fingerprint": fingerprint, "input": str(path), "lines": [unit.start, unit.stop],
                                "texts_sha256": digest}) + "\n")
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
    fresh: list[Entry] = []  # generated in this run (not resumed): what the cost is measured on
    spec_before = _speculation_counts(engine)

    def checkpoint(rnd: int, b: int, entries: list[Entry]) -> None:
        nonlocal new_texts, new_tokens
        fresh.extend(entries)
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
    seconds = time.time() - t0
    spec_after = _speculation_counts(engine)
    spec = None if spec_before is None or spec_after is None else (spec_after[0] - spec_before[0],
                                                                   spec_after[1] - spec_before[1])
    summary = summarize(entries, input_stats, seconds) | {
        "input_file": str(path), "input_lines": [unit.start, unit.stop], "resumed_texts": resumed,
        "input_fingerprint": {"file_bytes": file_stat.st_size, "file_mtime_ns": file_stat.st_mtime_ns,
                              "texts_sha256": digest},
        "cost": cost_stats(fresh, seconds, engine, spec), "provenance": provenance}
    # Stats first, the output last: the stats record the output's size and hash (the completion
    # record), so a kill between the two leaves stats without an output (redone from the partial
    # file), and an output torn later no longer matches its record (redone).
    with atomic_path(final) as tmp:
        h, size = hashlib.sha256(), 0
        with open(tmp, "wb") as fh:
            for e in entries:
                line = (json.dumps(e.record(), ensure_ascii=False) + "\n").encode("utf-8")
                h.update(line)
                size += len(line)
                fh.write(line)
        summary["output"] = {"bytes": size, "sha256": h.hexdigest()}
        atomic_write_json(stats_path, summary)
    partial.unlink(missing_ok=True)
    log.info("%s: %d texts, %d pairs (%.2f per text), %d degenerate outputs -> %s", path, summary["texts"],
             summary["pairs"], summary["pairs_per_text"], summary["degenerate_outputs"], final)
    cost = summary["cost"]
    if cost["device_hours_per_1b_raw_tokens"] is not None:
        log.info("%s: %s output tokens/s, %s device-hours per 1B raw tokens on %s (the paper: about %g on an A100)",
                 stem, cost["output_tokens_per_s"], f"{cost['device_hours_per_1b_raw_tokens']:,}", cost["device"],
                 PAPER_DEVICE_HOURS_PER_1B)
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


def synthesize(cfg: SynthesizeConfig, engine: Engine | None = None) -> dict:
    """Run this task's work units; finished ones are skipped. Returns per-unit stats by unit name."""
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
        return dry_run(cfg, units, engine)
    mine = units[index::count]
    results = {}
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
    return results


def measure_throughput(cfg: SynthesizeConfig, units: list[Unit], engine: Engine | None) -> tuple[float, str]:
    """Generated tokens/s of real M-round runs over the first texts, written nowhere, and how it was
    measured. Bounded: ``plan_sample_tokens`` tokens per text and round, groups of texts (one engine
    batch per round) until ``plan_sample_seconds`` pass or ``plan_sample_texts`` are done. Short
    outputs weigh prefill more than a real run does, so the rate is a lower bound (hours an upper one)."""
    sample: list[tuple[str, str]] = []
    for u in units:
        sample += read_texts(Path(u.file), cfg, Counter(), u.start, u.stop)[: cfg.plan_sample_texts - len(sample)]
        if len(sample) >= cfg.plan_sample_texts:
            break
    if not sample:
        raise ConfigError("dry run: the inputs hold no text to measure throughput on")
    engine = engine or cfg.engine.build()
    rounds = dataclasses.replace(cfg.rounds_config(), max_new_tokens=min(cfg.max_new_tokens, cfg.plan_sample_tokens))
    group = cfg.rounds * int(getattr(engine, "batch_size", 8))
    done = out_tokens = 0
    seconds = 0.0
    with progress(total=len(sample), desc="measuring", unit="text", enabled=cfg.progress) as bar:
        while done < len(sample) and (done == 0 or seconds < cfg.plan_sample_seconds):
            part = sample[done : done + group]
            t0 = time.perf_counter()
            entries = run_rounds(engine, part, rounds, cfg.batch_texts, schedule=cfg.schedule)
            seconds += time.perf_counter() - t0
            out_tokens += sum(e.stats.get("output_tokens", 0) for e in entries)
            done += len(part)
            bar.update(len(part))
    device, _ = device_label(engine)
    how = (f"measured on {done} texts x {cfg.rounds} rounds, at most {rounds.max_new_tokens} tokens each: "
           f"{out_tokens:,} tokens in {seconds:.1f} s on {device}")
    log.info("dry run: %s", how)
    return out_tokens / max(seconds, 1e-9), how


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
        rate, source = measure_throughput(cfg, units, engine)
        per_text = float(cfg.max_new_tokens * cfg.n)  # the most a text can take: the sample's outputs were cut short
    if cfg.plan_output_tokens > 0:
        per_text = float(cfg.plan_output_tokens)
    gpu_hours = texts * per_text / rate / 3600 if rate > 0 else float("inf")
    tasks, task_hours = array_size(gpu_hours, len(units), cfg.plan_hours_per_task) if texts else (1, 0.0)
    sbatch = sbatch_line(cfg, tasks)
    plan = {"units": rows, "total_units": len(units), "texts": texts,
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "throughput_tokens_per_s": round(rate, 2), "throughput_source": source,
            "output_tokens_per_text": round(per_text, 1), "output_tokens": round(texts * per_text),
            "gpu_hours": round(gpu_hours, 3), "array_tasks": tasks, "hours_per_task": round(task_hours, 3),
            "device_hours_per_1b_raw_tokens": round(gpu_hours / raw * 1e9, 1) if (raw := sum(r["prompt_tokens"] for r in rows))
            else None,
            "sbatch": sbatch}
    if task_hours * TIME_MARGIN + LOAD_HOURS > cfg.plan_hours_per_task:
        log.warning("dry run: even %d tasks (one per unit) need %.1f h each with a margin, over "
                    "plan_hours_per_task=%.1f: make unit_texts smaller", tasks, task_hours * TIME_MARGIN + LOAD_HOURS,
                    cfg.plan_hours_per_task)
    return plan


TIME_MARGIN, LOAD_HOURS = 1.2, 0.25  # an array task's estimate is stretched for slow units, plus model loading


def array_size(gpu_hours: float, units: int, hours_per_task: float) -> tuple[int, float]:
    """The fewest array tasks whose busiest task (units go round-robin: ``ceil(units / tasks)`` of
    them) fits ``hours_per_task`` with the margin, and that task's hours; one task per unit at most."""
    per_unit = gpu_hours / max(1, units)

    def busiest(tasks: int) -> float:
        return math.ceil(units / tasks) * per_unit

    low, high = 1, max(1, units)
    while low < high:  # busiest() only falls as tasks grow
        mid = (low + high) // 2
        if busiest(mid) * TIME_MARGIN + LOAD_HOURS <= hours_per_task:
            high = mid
        else:
            low = mid + 1
    return low, busiest(low)


# What slurm/synthesize.sh takes from the environment, and keys no submitted run repeats (the task
# is the array's; planning and discarding are this command's).
SBATCH_ENV = {"input": "INPUTS", "output_dir": "OUTPUT_DIR", "engine.model": "MODEL", "engine.kind": "ENGINE",
              "engine.tensor_parallel_size": "TP"}
SBATCH_NOT_PASSED = ("task_index", "num_tasks", "start_over", "dry_run", "progress", "plan_tokens_per_s",
                     "plan_output_tokens", "plan_sample_texts", "plan_hours_per_task")


def _flat(obj: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out |= _flat(value, f"{prefix}{f.name}.")
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _cli_value(value: object) -> str:
    """A value in the command grammar: strings as they are, lists as JSON, booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    if value is None:
        return "null"
    return str(value)


def sbatch_line(cfg: SynthesizeConfig, tasks: int) -> str:
    """The ``sbatch`` command that runs this configuration as ``tasks`` array tasks of
    ``plan_hours_per_task`` each: every setting that is not the default is passed, so the job runs
    exactly what was planned, with or without the ``--config`` file it came from."""
    if any(any(c.isspace() for c in i) for i in cfg.input):
        log.warning("dry run: INPUTS is split on spaces: an input path with a space cannot be passed through it")
    values, defaults = _flat(cfg), _flat(SynthesizeConfig())
    env = {var: " ".join(cfg.input) if key == "input" else _cli_value(values[key]) for key, var in SBATCH_ENV.items()}
    if cfg.engine.kind == "auto":
        del env["ENGINE"]
    args = [f"--{k}={_cli_value(v)}" for k, v in values.items()
            if k not in SBATCH_ENV and k not in SBATCH_NOT_PASSED and _jsonable(v) != _jsonable(defaults[k])]
    minutes = max(1, math.ceil(round(cfg.plan_hours_per_task * 60, 6)))
    words = [f"{var}={shlex.quote(v)}" for var, v in env.items()]
    words += ["sbatch", f"--array=0-{tasks - 1}", f"--time={minutes // 60}:{minutes % 60:02d}:00", "slurm/synthesize.sh"]
    return " ".join(words + [shlex.quote(a) for a in args])


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
              f"{plan['hours_per_task']:.3g} h each",
              f"cost: {plan['device_hours_per_1b_raw_tokens'] or 0:,} device-hours per 1B raw input tokens (the paper: "
              f"about {PAPER_DEVICE_HOURS_PER_1B:g}, one A100-day)", "submit with:", "  " + plan["sbatch"]]
    return "\n".join(lines)


def shard_provenance(cfg: SynthesizeConfig, engine: Engine) -> dict:
    """What made a shard: the synthesizer's model fingerprint, its tokenizer's, and the settings."""
    settings = {k: v for k, v in config_dict(cfg).items() if k not in ("input", "output_dir", "progress",
                                                                       "task_index", "num_tasks", "start_over")}
    return {"synthesizer": model_fingerprint(cfg.engine.model), "tokenizer": engine.tokenizer.fingerprint(),
            "config": settings}


def config_dict(cfg: SynthesizeConfig) -> dict:
    return dataclasses.asdict(cfg)
