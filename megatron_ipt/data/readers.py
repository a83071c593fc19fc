"""Records of every file input of the project: JSON lines, parquet, folders, globs and saved ``datasets``.

Inputs: ``.jsonl`` / ``.json`` / ``.ndjson`` holding JSON lines, plain or compressed (``.gz``,
``.zst``), ``.parquet``, a folder of those (recursive, sorted), a glob, or a ``datasets`` dataset
saved with ``save_to_disk``, found and opened by ``data/inputs.py``.

Three ways to read them:

- :func:`iter_records`: a stream of ``(record, where)`` with ``where`` = ``"file:line"`` (``"file:row"``
  for columnar files); a bad line raises :class:`DataError` or, with ``skip_bad``, is counted.
- :func:`scan_records`: the same stream with bad lines handed to the caller as
  ``(where, None, DataError)`` (callers with their own skip policy); ``start``/``stop`` select a
  line range ``[start, stop)`` (0-based line indices), read streaming.
- :func:`read_records`: batches of raw payloads for the tokenizing workers (bytes for JSON lines,
  decoded and validated there by :func:`parse_record`).

Every error is a :class:`DataError` whose message names the file, the line and the field.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from megatron_ipt.data.inputs import (
    DataError,
    FileFault,
    InputFile,
    as_input_file,
    expand_inputs,
    iter_lines,
)
from megatron_ipt.log import get_logger

log = get_logger(__name__)


class BadRecord(DataError):
    """A record that does not validate; the caller adds file and line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)


def decode_json_line(raw: bytes | bytearray) -> dict:
    """One JSON line as its object; raises :class:`BadRecord` (invalid_utf8, malformed_json,
    not_an_object) without file and line, which the caller adds."""
    try:
        obj = json.loads(raw)  # bytes: decoded as UTF-8 (strict) inside json
    except UnicodeDecodeError as err:
        raise BadRecord("invalid_utf8", f"invalid UTF-8 at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise BadRecord("malformed_json", f"malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise BadRecord("not_an_object", f"a JSON {type(obj).__name__}, expected an object")
    return obj


def scan_records(
    source: InputFile | str | Path, start: int = 0, stop: int | None = None, columns: list[str] | None = None
) -> Iterator[tuple[str, dict | None, DataError | None]]:
    """``(where, record, None)`` per record, ``(where, None, error)`` per bad line, streaming.

    ``start``/``stop``: the 0-based line (row) range ``[start, stop)``; ``columns``: the columns of
    columnar files to read (default all). File faults raise :class:`FileFault`.
    """
    f = as_input_file(source)
    if f.kind == "jsonl":
        for line_no, raw in iter_lines(f.path, start, stop):
            where = f"{f.path}:{line_no}"
            try:
                yield where, decode_json_line(raw), None
            except BadRecord as err:
                yield where, None, DataError(err.detail, where=where, reason=err.reason)
        return
    reader = _read_parquet if f.kind == "parquet" else _read_hf
    for batch in reader(f.path, columns, start, 1000):
        for row, rec in batch:
            if stop is not None and row > stop:
                return
            yield f"{f.path}:{row}", rec, None


def iter_records(
    inputs: Iterable[InputFile | str | Path] | InputFile | str | Path,
    skip_bad: bool = False,
    stats: Counter | None = None,
    columns: list[str] | None = None,
) -> Iterator[tuple[dict, str]]:
    """``(record, "file:line")`` over every input; a bad line raises :class:`DataError`, or with
    ``skip_bad`` is counted in ``stats`` under its reason and skipped (with a warning)."""
    if isinstance(inputs, InputFile | str | Path):
        inputs = [inputs]
    files = [f for s in inputs for f in ([s] if isinstance(s, InputFile) else expand_inputs([s]))]
    for f in files:
        for where, rec, err in scan_records(f, columns=columns):
            if err is not None:
                if not skip_bad:
                    raise err
                if stats is not None:
                    stats[err.reason] += 1
                log.warning("%s; skipped", err)
                continue
            assert rec is not None
            yield rec, where


def read_jsonl_lines(path: str | Path, start: int = 0, stop: int | None = None) -> Iterator[tuple[dict, str]]:
    """The records of lines ``[start, stop)`` (0-based) of one JSON-lines file (plain, gz or zst),
    streaming; a bad line raises :class:`DataError`."""
    f = InputFile(Path(path), "jsonl")
    for where, rec, err in scan_records(f, start, stop):
        if err is not None:
            raise err
        assert rec is not None
        yield rec, where


def read_records(
    f: InputFile, columns: list[str], start: int = 0, batch_size: int = 1000
) -> Iterator[list[tuple[int, Any]]]:
    """Batches of ``(record_number, payload)``; record numbers are 1-based lines/rows.

    Records numbered ``<= start`` are skipped (resume). JSON-lines payloads are raw ``bytes``;
    columnar payloads are dicts restricted to ``columns`` present in the file.
    """
    if f.kind == "jsonl":
        yield from _read_jsonl(f.path, start, batch_size)
    elif f.kind == "parquet":
        yield from _read_parquet(f.path, columns, start, batch_size)
    else:
        yield from _read_hf(f.path, columns, start, batch_size)


def _read_jsonl(path: Path, start: int, batch_size: int) -> Iterator[list[tuple[int, Any]]]:
    batch: list[tuple[int, Any]] = []
    try:
        for line_no, line in iter_lines(path, start):
            batch.append((line_no, line))
            if len(batch) >= batch_size:
                yield batch
                batch = []
    except FileFault:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _read_parquet(
    path: Path, columns: list[str] | None, start: int, batch_size: int
) -> Iterator[list[tuple[int, Any]]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        present = names if columns is None else [c for c in columns if c in names]
        row = 0
        for rb in pf.iter_batches(batch_size=batch_size, columns=present or None):
            rows = rb.to_pylist()
            first = row + 1
            row += len(rows)
            if row <= start:
                continue
            batch = [(first + i, {c: r[c] for c in present}) for i, r in enumerate(rows) if first + i > start]
            yield batch
    except FileFault:
        raise
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        if "ArrowInvalid" in type(err).__name__ or isinstance(err, OSError | ValueError):
            raise FileFault("unreadable_parquet", f"{path}: unreadable parquet ({err})") from err
        raise


def _read_hf(
    path: Path, columns: list[str] | None, start: int, batch_size: int
) -> Iterator[list[tuple[int, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise FileFault("unreadable_dataset", f"{path}: cannot load saved dataset ({err})") from err
    splits = [ds[k] for k in sorted(ds.keys())] if isinstance(ds, datasets.DatasetDict) else [ds]
    row = 0
    for split in splits:
        names = split.column_names
        present = names if columns is None else [c for c in columns if c in names]
        n = len(split)
        for s in range(0, n, batch_size):
            size = min(batch_size, n - s)
            if row + size <= start:
                row += size
                continue
            cols = split[s : s + batch_size]
            batch = []
            for i in range(size):
                row += 1
                if row > start:
                    batch.append((row, {c: cols[c][i] for c in present}))
            yield batch


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in ``text`` (JSON's ``"\\ud800"``; not encodable as UTF-8)."""
    if text.isascii():
        return None
    m = _SURROGATE.search(text)
    return m.start() if m else None


def check_text(text: str, key: str) -> None:
    """A record's text must be non-blank and encodable (no lone surrogate)."""
    if not text.strip():
        raise BadRecord("empty_text", f"field {key!r} is empty")
    pos = lone_surrogate(text)
    if pos is not None:
        raise BadRecord("lone_surrogate", f"field {key!r} holds a lone surrogate at character {pos} (not valid Unicode)")


try:  # orjson parses JSON lines several times faster than json; json stays the judge of bad ones
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _orjson_loads = None


def _fast_text(payload: bytes | bytearray, key: str) -> str | None:
    """The text of a good plain-text record via orjson, or None to take the json path.

    Only a record whose text is a clean string is taken: every other case (orjson refusing a line
    json accepts, such as NaN or a lone-surrogate escape, or numbers it reads differently) gets the
    json path's result and messages, so both paths give the same texts and the same errors.
    """
    if _orjson_loads is None:
        return None
    try:
        obj = _orjson_loads(payload)
    except ValueError:
        return None
    text = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(text, str) or not text.strip() or lone_surrogate(text) is not None:
        return None
    return text


def parse_record(payload: Any, key: str) -> dict | str:
    """Decode one raw record into its text (``str``) or its segments (``{"segments": [...]}``).

    Raises :class:`BadRecord` with a skip reason: invalid_utf8, malformed_json, not_an_object,
    missing_key, non_string_text, empty_text, bad_segments.
    """
    if isinstance(payload, bytes | bytearray):
        fast = _fast_text(payload, key)
        if fast is not None:
            return fast
        obj = decode_json_line(payload)
    else:
        obj = payload
    if key not in obj and obj.get("segments") is not None:
        return {"segments": check_segments(obj["segments"])}
    if key not in obj or obj[key] is None:
        raise BadRecord("missing_key", f"field {key!r} missing (keys: {sorted(obj)[:8]})")
    text = obj[key]
    if not isinstance(text, str):
        raise BadRecord("non_string_text", f"field {key!r} is a {type(text).__name__}, expected a string")
    check_text(text, key)
    return text


def check_segments(segments: Any) -> list[dict]:
    if not isinstance(segments, list) or not segments:
        raise BadRecord("bad_segments", "field 'segments' must be a non-empty list")
    for i, seg in enumerate(segments):
        where = f"field 'segments[{i}]'"
        if not isinstance(seg, dict):
            raise BadRecord("bad_segments", f"{where} is not an object")
        if not isinstance(seg.get("loss"), bool):
            raise BadRecord("bad_segments", f"{where}.loss must be true or false")
        if "special" in seg:  # bos, eos or a special piece of the tokenizer (checked where encoded)
            if not isinstance(seg["special"], str) or not seg["special"]:
                raise BadRecord("bad_segments", f"{where}.special must be 'bos', 'eos' or a special token")
        elif not isinstance(seg.get("text"), str):
            raise BadRecord("bad_segments", f"{where}.text must be a string")
        elif lone_surrogate(seg["text"]) is not None:
            raise BadRecord("lone_surrogate", f"{where}.text holds a lone surrogate (not valid Unicode)")
    if not any(s.get("text", "").strip() for s in segments if "special" not in s):
        raise BadRecord("empty_text", "field 'segments' holds no text")
    return segments
