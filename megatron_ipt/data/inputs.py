"""Every file input of the project, found and opened: JSON lines, parquet, folders, globs and saved ``datasets``.

Inputs: ``.jsonl`` / ``.json`` / ``.ndjson`` holding JSON lines, plain or compressed (``.gz``,
``.zst``), ``.parquet``, a folder of those (recursive, sorted), a glob, or a ``datasets`` dataset
saved with ``save_to_disk``. :func:`expand_inputs` turns input specs into :class:`InputFile` s;
:func:`open_binary` and :func:`iter_lines` open and stream them (records are read by
``data/readers.py``).

Every error is a :class:`DataError` whose message names the file, the line and the field.
"""

from __future__ import annotations

import glob
import gzip
import io
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

COMPRESSIONS = ("", ".gz", ".zst")
JSONL_SUFFIXES = tuple(base + c for base in (".jsonl", ".json", ".ndjson") for c in COMPRESSIONS)
PARQUET_SUFFIXES = (".parquet",)
INPUT_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
_GLOB_CHARS = frozenset("*?[")


class DataError(ValueError):
    """Bad input: ``file:line: field 'x': message``. ``reason`` names its skip category."""

    def __init__(
        self, message: str, *, where: str | None = None, field: str | None = None, reason: str = "bad_record"
    ) -> None:
        self.detail, self.where, self.field, self.reason = message, where, field, reason
        loc = f"{where}: " if where else ""
        loc += f"field '{field}': " if field else ""
        super().__init__(loc + message)


class FileFault(DataError):
    """A file that cannot be read any further (``reason`` is a skip category)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)

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


def kind_of(path: Path) -> str | None:
    """``"jsonl"``, ``"parquet"`` or None, from the file name."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def input_stem(path: Path) -> str:
    """The file name without its input suffix (``a.jsonl.gz`` -> ``a``)."""
    name = path.name
    for suffix in sorted(INPUT_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _expand_dir(path: Path) -> list[InputFile]:
    """A folder: its saved datasets and input files, recursively, sorted; files inside a saved
    dataset (its ``state.json`` ...) belong to the dataset."""
    hf_dirs = sorted(p for p in path.rglob("*") if is_hf_dataset_dir(p))
    hf_dirs = [d for d in hf_dirs if not any(o in d.parents for o in hf_dirs)]
    found = [
        p for p in sorted(path.rglob("*"))
        if p.is_file() and kind_of(p) and not any(d in p.parents for d in hf_dirs)
    ]
    return [InputFile(d, "hf_dataset") for d in hf_dirs] + [InputFile(p, kind_of(p) or "") for p in found]


def _expand_one(path: Path, spec: str) -> list[InputFile]:
    if is_hf_dataset_dir(path):
        return [InputFile(path, "hf_dataset")]
    if path.is_dir():
        files = _expand_dir(path)
        if not files:
            raise DataError(f"{path}: directory holds no .jsonl, .jsonl.gz, .jsonl.zst or .parquet file",
                            reason="no_input")
        return files
    if path.is_file():
        kind = kind_of(path)
        if kind is None:
            raise DataError(f"{path}: unknown input type (want .jsonl, .jsonl.gz, .jsonl.zst, .parquet "
                            "or a saved dataset folder)", reason="no_input")
        return [InputFile(path, kind)]
    raise DataError(f"{spec}: no such file or directory", reason="no_input")


def expand_inputs(inputs: Iterable[str | Path] | str | Path) -> list[InputFile]:
    """Files to read, in the order given: a file as is, a folder expanded recursively (sorted), a
    glob (``*``, ``?``, ``[``; ``**`` recursive) to its sorted matches, a saved dataset folder as
    one input. A file named twice is read once (first place kept)."""
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    files: list[InputFile] = []
    seen: set[Path] = set()
    for item in inputs:
        spec = str(item)
        path = Path(spec)
        if not path.exists() and _GLOB_CHARS & set(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            if not matches:
                raise DataError(f"{spec}: the glob matches no file", reason="no_input")
            # A glob names input files (or folders); anything else it matches, and the files
            # inside a saved dataset, are left out.
            hf_dirs = {m for m in matches if is_hf_dataset_dir(m)}
            expanded = [
                f for m in matches
                if (m.is_dir() or kind_of(m)) and not any(p in hf_dirs or is_hf_dataset_dir(p) for p in m.parents)
                for f in _expand_one(m, str(m))
            ]
            if not expanded:
                raise DataError(f"{spec}: the glob matches no .jsonl, .jsonl.gz, .jsonl.zst or .parquet file",
                                reason="no_input")
        else:
            expanded = _expand_one(path, spec)
        for f in expanded:
            key = f.path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    return files


def as_input_file(source: InputFile | str | Path) -> InputFile:
    """One input file (a path is classified as :func:`expand_inputs` would)."""
    if isinstance(source, InputFile):
        return source
    files = expand_inputs([source])
    if len(files) != 1:
        raise DataError(f"{source}: expected one input file, found {len(files)}", reason="no_input")
    return files[0]


# --------------------------------------------------------------------------- compressed streams


class _ZstdReader(io.RawIOBase):
    """Decompresses a (multi-frame) zstd file; a frame cut short raises ``EOFError`` at its end
    (``zstandard``'s own stream reader ends silently there)."""

    def __init__(self, path: Path) -> None:
        import zstandard

        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._pending = b""
        self._started = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        import zstandard

        while not self._pending:
            chunk = self._fh.read(1 << 17)
            if not chunk:
                if self._started and not self._obj.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                return 0
            try:
                while chunk:
                    self._started = True
                    self._pending += self._obj.decompress(chunk)
                    chunk = b""
                    if self._obj.eof:  # the next frame starts in the unused bytes
                        chunk = self._obj.unused_data
                        self._obj = self._dctx.decompressobj()
                        self._started = bool(chunk)
            except zstandard.ZstdError as err:
                raise EOFError(f"corrupt zstd data ({err})") from err
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_binary(path: Path) -> IO[bytes]:
    """The decompressed bytes of a plain, ``.gz`` or ``.zst`` file."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 17)
    return open(path, "rb")


def _compression(path: Path) -> str:
    name = path.name.lower()
    return "zstd" if name.endswith(".zst") else "gzip" if name.endswith(".gz") else ""


def iter_lines(path: Path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(line_number, raw_line)`` (1-based) of the 0-based line range ``[start, stop)``, blank lines
    left out; a cut-short or corrupt file raises :class:`FileFault` naming the line it reached."""
    line_no = 0
    comp = _compression(path)
    try:
        with open_binary(path) as fh:
            for line_no, line in enumerate(fh, 1):  # noqa: B007 - line_no is reported on faults
                if line_no <= start:
                    continue
                if stop is not None and line_no > stop:
                    return
                if line.strip():
                    yield line_no, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise FileFault(f"truncated_{comp or 'file'}",
                        f"{path}:{line_no + 1}: corrupt or truncated {comp or 'file'} ({err})") from err
    except OSError as err:
        raise FileFault("unreadable_file", f"{path}:{line_no + 1}: cannot read ({err})") from err

def count_lines(source: InputFile | str | Path) -> int:
    """Lines (blank ones included) of a JSON-lines file, rows of a parquet file or saved dataset:
    the index space of ``readers.scan_records``'s ``start``/``stop``. Streams; reads metadata only for
    parquet."""
    f = as_input_file(source)
    if f.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(f.path).metadata.num_rows)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise FileFault("unreadable_parquet", f"{f.path}: unreadable parquet ({err})") from err
    if f.kind == "hf_dataset":
        import datasets

        ds = datasets.load_from_disk(str(f.path))
        return sum(len(ds[k]) for k in ds) if isinstance(ds, datasets.DatasetDict) else len(ds)
    n, last = 0, b"\n"
    try:
        with open_binary(f.path) as fh:
            while chunk := fh.read(1 << 20):
                n += chunk.count(b"\n")
                last = chunk[-1:]
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise FileFault("unreadable_file", f"{f.path}: cannot count its lines ({err})") from err
    return n + (last != b"\n")
