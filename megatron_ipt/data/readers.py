"""Input corpora as a stream of raw records, and the per-record validation policy.

Inputs: ``.jsonl``, ``.jsonl.gz`` (also ``.json``/``.json.gz`` holding JSON lines), ``.parquet``, a
directory of those (recursive, sorted), or a ``datasets`` dataset saved with ``save_to_disk``.

The reading process only splits files into records (raw bytes for JSON lines, Python objects for
columnar files); decoding and validation (:func:`parse_record`) run in the tokenizing workers.
File-level faults (truncated gzip, unreadable parquet) surface as :class:`FileFault`.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)


class DataError(ValueError):
    """Bad input, with the file, line and field it concerns."""


class FileFault(Exception):
    """A file that cannot be read any further (``reason`` is a skip category)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BadRecord(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: str  # "jsonl" | "parquet" | "hf_dataset"


def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").is_file()
        or (path / "state.json").is_file()
        or (path / "dataset_dict.json").is_file()
    )


def _kind_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def expand_inputs(inputs: list[str | Path] | str | Path) -> list[InputFile]:
    """Files to read, in order: explicit files as given, directories expanded recursively (sorted)."""
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    files: list[InputFile] = []
    for item in inputs:
        path = Path(item)
        if is_hf_dataset_dir(path):
            files.append(InputFile(path, "hf_dataset"))
        elif path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file() and _kind_of(p)]
            hf_dirs = sorted(p for p in path.iterdir() if is_hf_dataset_dir(p))
            if not found and not hf_dirs:
                raise DataError(f"{path}: directory holds no .jsonl, .jsonl.gz or .parquet file")
            files.extend(InputFile(p, "hf_dataset") for p in hf_dirs)
            files.extend(InputFile(p, _kind_of(p)) for p in found if not any(d in p.parents for d in hf_dirs))
        elif path.is_file():
            kind = _kind_of(path)
            if kind is None:
                raise DataError(f"{path}: unknown input type (want .jsonl, .jsonl.gz, .parquet)")
            files.append(InputFile(path, kind))
        else:
            raise DataError(f"{path}: no such file or directory")
    return files


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
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    batch: list[tuple[int, Any]] = []
    line_no = 0
    try:
        with opener(path, "rb") as fh:
            for line_no, line in enumerate(fh, 1):  # noqa: B007 - line_no is reported on faults
                if line_no <= start or not line.strip():
                    continue
                batch.append((line_no, line))
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        if batch:
            yield batch
        raise FileFault("truncated_gzip", f"{path}:{line_no + 1}: corrupt or truncated gzip ({err})") from err
    except OSError as err:
        if batch:
            yield batch
        raise FileFault("unreadable_file", f"{path}:{line_no + 1}: cannot read ({err})") from err
    if batch:
        yield batch


def _read_parquet(
    path: Path, columns: list[str], start: int, batch_size: int
) -> Iterator[list[tuple[int, Any]]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        present = [c for c in columns if c in pf.schema_arrow.names]
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


def _read_hf(path: Path, columns: list[str], start: int, batch_size: int) -> Iterator[list[tuple[int, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise FileFault("unreadable_dataset", f"{path}: cannot load saved dataset ({err})") from err
    splits = [ds[k] for k in sorted(ds.keys())] if isinstance(ds, datasets.DatasetDict) else [ds]
    row = 0
    for split in splits:
        present = [c for c in columns if c in split.column_names]
        n = len(split)
        for s in range(0, n, batch_size):
            if row + min(batch_size, n - s) <= start:
                row += min(batch_size, n - s)
                continue
            cols = split[s : s + batch_size]
            size = min(batch_size, n - s)
            batch = []
            for i in range(size):
                row += 1
                if row > start:
                    batch.append((row, {c: cols[c][i] for c in present}))
            yield batch


def parse_record(payload: Any, key: str) -> dict | str:
    """Decode one raw record into its text (``str``) or its segments (``{"segments": [...]}``).

    Raises :class:`BadRecord` with a skip reason: invalid_utf8, malformed_json, missing_key,
    non_string_text, empty_text, bad_segments.
    """
    if isinstance(payload, bytes | bytearray):
        try:
            obj = json.loads(payload)  # bytes: decoded as UTF-8 (strict) inside json
        except UnicodeDecodeError as err:
            raise BadRecord("invalid_utf8", f"invalid UTF-8 at byte {err.start}") from None
        except json.JSONDecodeError as err:
            raise BadRecord("malformed_json", f"malformed JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise BadRecord("malformed_json", f"a JSON {type(obj).__name__}, expected an object")
    else:
        obj = payload
    if key not in obj and obj.get("segments") is not None:
        return {"segments": check_segments(obj["segments"])}
    if key not in obj or obj[key] is None:
        raise BadRecord("missing_key", f"field {key!r} missing (keys: {sorted(obj)[:8]})")
    text = obj[key]
    if not isinstance(text, str):
        raise BadRecord("non_string_text", f"field {key!r} is a {type(text).__name__}, expected a string")
    if not text.strip():
        raise BadRecord("empty_text", f"field {key!r} is empty")
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
        if "special" in seg:
            if seg["special"] not in ("bos", "eos"):
                raise BadRecord("bad_segments", f"{where}.special must be 'bos' or 'eos'")
        elif not isinstance(seg.get("text"), str):
            raise BadRecord("bad_segments", f"{where}.text must be a string")
    if not any(s.get("text", "").strip() for s in segments if "special" not in s):
        raise BadRecord("empty_text", "field 'segments' holds no text")
    return segments
