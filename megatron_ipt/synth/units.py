"""The on-disk contract of synthesis, shared by the runner and its readers (``corpora/``).

An input file is cut into work units of ``unit_texts`` lines (rows); the plan, every unit in merge
order, is ``OUTPUT_DIR/units.plan``. A unit ``<name>`` writes ``<name>.jsonl`` (its records),
``<name>.stats.json`` (its stats, whose ``output`` field records the output's size and hash: the
completion record) and, while running, ``.<name>.partial.jsonl``. Readers take the finished units
in plan order (:func:`synthesis_outputs`) and their ``{id, text}`` records (:func:`iter_texts`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from megatron_ipt.config import ConfigError
from megatron_ipt.data.inputs import (
    DataError,
    InputFile,
    as_input_file,
    count_lines,
    expand_inputs,
    input_stem,
)
from megatron_ipt.data.readers import lone_surrogate, scan_records
from megatron_ipt.log import get_logger
from megatron_ipt.pairs import escape_markers, find_marker
from megatron_ipt.synth.config import SynthesizeConfig

log = get_logger(__name__)


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
        rid = f"{input_stem(f.path)}:{where.rsplit(':', 1)[1]}" if rid is None else str(rid)
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
        if cfg.fraction < 1 and not selected(rid, cfg.fraction, cfg.sampling.seed):
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


def selected(text_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether a text falls in the converted ``fraction`` (stable across runs and units)."""
    digest = hashlib.blake2b(f"select:{seed}:{text_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


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
        stem = input_stem(f.path)
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


def file_signature(f: InputFile) -> list:
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
