"""The contamination gate: nothing that shares an n-gram with an evaluation item enters a corpus.

Evaluation sets are JSON-lines or parquet files, lm-evaluation-harness task YAMLs that read local
files (``dataset_path: json`` with ``data_files``, at the top level or under ``dataset_kwargs``),
or folders of them. Each record's string fields (all of them, or ``fields``) joined by spaces form
one evaluation item.

Normalization follows lm-evaluation-harness's decontamination (its ``Janitor``): ASCII letters
lower-cased, ASCII punctuation deleted, words split on whitespace, n-grams of ``ngram`` (13) words.
An item shorter than ``ngram`` words has no n-gram and cannot be matched (counted in the report).

Memory is about 10 bytes per distinct evaluation n-gram: each word is hashed once to 64 bits
(blake2b, stable across processes), an n-gram's hash is a polynomial of its words' hashes computed
for a whole batch of texts at once in numpy, and each evaluation set keeps a sorted ``uint64``
array with a bucket directory over its top bits (see :class:`EvalSet`). A Python set of ints
would take about 70 bytes per n-gram (``benchmarks/decontaminate.py`` measures both).
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from megatron_ipt.config import ConfigError
from megatron_ipt.data.inputs import DataError, expand_inputs, input_stem, kind_of
from megatron_ipt.data.readers import iter_records
from megatron_ipt.log import get_logger
from megatron_ipt.pairs import Pair

log = get_logger(__name__)

TASK_SUFFIXES = (".yaml", ".yml")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling n-gram hash


@dataclass
class ContaminationConfig:
    eval_sets: list[str] | str = field(default_factory=list)  # evaluation sets to keep out: JSONL/parquet, lm-eval task YAMLs, or folders
    ngram: int = 13  # words per n-gram shared with an evaluation item that removes a pair (lm-eval uses 13)
    fields: list[str] = field(default_factory=list)  # evaluation record fields to read (empty: every string field)

    def validate(self) -> None:
        if isinstance(self.eval_sets, str):
            self.eval_sets = [self.eval_sets]
        if self.ngram < 1:
            raise ConfigError(f"contamination.ngram must be >= 1, got {self.ngram}")


# lm-evaluation-harness's decontamination normalization, applied to UTF-8 bytes (bytes.translate is
# a table lookup in C; str.translate with a mapping looks up every character in a dict): ASCII letters lower-cased,
# ASCII punctuation deleted, the ASCII separators str.split knows (0x1c-0x1f) turned into spaces.
_BYTE_TABLE = bytes.maketrans(string.ascii_uppercase.encode() + bytes(range(0x1C, 0x20)),
                              string.ascii_lowercase.encode() + b" " * 4)
_BYTE_DELETE = string.punctuation.encode()
_SPACE_BYTES = np.zeros(256, dtype=bool)
_SPACE_BYTES[[9, 10, 11, 12, 13, 32]] = True


def _normalized_bytes(text: str) -> bytes:
    """lm-evaluation-harness's decontamination normalization (ASCII lower-case, no punctuation) as
    UTF-8 bytes whose words are separated by ASCII whitespace."""
    if not text.isascii():
        text = " ".join(text.split())  # Unicode whitespace separates words, as in str.split
    return text.encode("utf-8", "surrogatepass").translate(_BYTE_TABLE, _BYTE_DELETE)


_BASE = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_BASE_INV = pow(_BASE, -1, 2**64)
_MAX_BLOB = 1 << 20  # bytes of normalized text hashed in one numpy pass (bounds the temporaries)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads a polynomial hash's bits over all 64."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class NgramHasher:
    """64-bit n-gram hashes of many texts at once, all in numpy after one normalization pass.

    A word's hash is a polynomial of its UTF-8 bytes, computed for every word of a batch from one
    prefix sum (``Q[i] = sum c_k B^-k``, so bytes ``s..e`` hash to ``B^s (Q[e] - Q[s-1])``), then
    mixed; an n-gram's hash is a polynomial of its words' hashes.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._pow = np.ones(1, np.uint64)  # B^k
        self._inv = np.ones(1, np.uint64)  # B^-k

    def _powers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._pow) < size:
            size = max(size, 2 * len(self._pow))
            with np.errstate(over="ignore"):
                self._pow = np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, _BASE, np.uint64))])
                self._inv = np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, _BASE_INV, np.uint64))])
        return self._pow, self._inv

    def word_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hash of every normalized word in order, words per text)."""
        norm = [_normalized_bytes(t) for t in texts]
        lengths = np.zeros(len(texts), dtype=np.int64)
        parts: list[np.ndarray] = []
        first = 0
        while first < len(norm):  # batches of at most _MAX_BLOB bytes (one text may exceed it alone)
            last, size = first, 0
            while last < len(norm) and (last == first or size + len(norm[last]) < _MAX_BLOB):
                size += len(norm[last]) + 1
                last += 1
            blob = np.frombuffer(b" ".join(norm[first:last]), np.uint8)
            if len(blob):
                text_starts = np.cumsum([0] + [len(b) + 1 for b in norm[first : last - 1]])
                sep = _SPACE_BYTES[blob]
                edge = np.diff(np.concatenate(([True], sep, [True])).astype(np.int8))
                starts, ends = np.flatnonzero(edge == -1), np.flatnonzero(edge == 1)  # words: [start, end)
                text_of = np.searchsorted(text_starts, starts, side="right") - 1 + first
                lengths += np.bincount(text_of, minlength=len(texts))
                pw, inv = self._powers(len(blob) + 1)
                with np.errstate(over="ignore"):
                    q = np.concatenate(([np.uint64(0)], np.cumsum((blob.astype(np.uint64) + np.uint64(1)) * inv[: len(blob)])))
                    parts.append(_mix(pw[starts] * (q[ends] - q[starts]) + (ends - starts).astype(np.uint64)))
            first = last
        words = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        return words, lengths

    def hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n-gram hashes, index of the text each came from, words per text) for ``texts``."""
        n = self.n
        w, lengths = self.word_hashes(texts)
        windows = np.maximum(lengths - n + 1, 0)
        total = int(windows.sum())
        if total == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), lengths
        span = len(w) - n + 1
        h = np.zeros(span, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(n):
                h = h * _MULT + w[j : j + span]
        # Windows that start in a text and end inside the same text.
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        owner = np.repeat(np.arange(len(texts)), windows)
        offset = np.arange(total) - np.repeat(np.cumsum(windows) - windows, windows)
        return h[starts[owner] + offset], owner, lengths


@dataclass
class EvalSet:
    """One evaluation set's distinct n-gram hashes, sorted, with a directory by their top bits.

    Hashes are uniform, so bucket ``b`` (the top ``bits`` bits) holds one or two of them: a probe
    reads the directory and then one or two neighbouring array entries, instead of the ~30
    scattered reads of a binary search over a large array (those cache misses dominated).
    """

    name: str
    source: str
    ngrams: np.ndarray  # sorted distinct uint64 hashes
    items: int
    items_shorter_than_n: int
    directory: np.ndarray = field(init=False, repr=False)
    bits: int = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.ngrams)
        self.bits = max(1, int(np.ceil(np.log2(max(n, 2)))) - 1)  # about 2 hashes per bucket
        edges = np.arange(2**self.bits + 1, dtype=np.uint64) << np.uint64(64 - self.bits)
        directory = np.searchsorted(self.ngrams, edges[:-1])
        self.directory = np.append(directory, n).astype(np.uint32 if n < 2**32 else np.int64)

    @property
    def nbytes(self) -> int:
        return int(self.ngrams.nbytes + self.directory.nbytes)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        if not len(self.ngrams) or not len(hashes):
            return found
        bucket = (hashes >> np.uint64(64 - self.bits)).astype(np.int64)
        pos = self.directory[bucket].astype(np.int64)
        end = self.directory[bucket + 1].astype(np.int64)
        todo = np.flatnonzero(pos < end)
        while len(todo):  # one step through every probed bucket at a time (buckets hold ~2 entries)
            hit = self.ngrams[pos[todo]] == hashes[todo]
            found[todo[hit]] = True
            pos[todo] += 1
            todo = todo[~hit & (pos[todo] < end[todo])]
        return found


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (numpy's hash-based ``unique`` is several times slower on uint64 here)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


# ---- reading evaluation sets ---------------------------------------------------------------------


class _TaskLoader(yaml.SafeLoader):
    """YAML loader for lm-eval task files: a ``!function`` tag (code) reads as None, never runs."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _item_text(obj: Any, fields: Sequence[str]) -> str:
    def strings(v: Any) -> Iterator[str]:
        if isinstance(v, str):
            yield v
        elif isinstance(v, list | tuple):
            for x in v:
                yield from strings(x)
        elif isinstance(v, dict):
            for x in v.values():
                yield from strings(x)

    if fields:
        return " ".join(s for f in fields if f in obj for s in strings(obj[f]))
    return " ".join(strings(obj))


def _data_items(path: Path, fields: Sequence[str]) -> Iterator[tuple[str, bool]]:
    """Evaluation items of one JSONL/parquet file (or saved dataset), through the reader layer, each
    with whether it has any of ``fields`` (always true when no fields are named)."""
    for rec, _where in iter_records([path]):
        yield _item_text(rec, fields), not fields or any(f in rec for f in fields)


def _task_files(task: Path) -> tuple[str, list[Path]]:
    """(task name, its local data files) from an lm-eval task YAML."""
    try:
        spec = yaml.load(task.read_text(), Loader=_TaskLoader) or {}
    except yaml.YAMLError as err:
        raise DataError(f"{task}: invalid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise DataError(f"{task}: a task file must be a mapping")
    for inc in ([spec["include"]] if isinstance(spec.get("include"), str) else []):
        base = yaml.load((task.parent / inc).read_text(), Loader=_TaskLoader) or {}
        spec = {**base, **spec} if isinstance(base, dict) else spec
    if spec.get("dataset_path") not in ("json", "parquet"):
        raise DataError(f"{task}: field 'dataset_path' is {spec.get('dataset_path')!r}; only local task files "
                        "(dataset_path: json or parquet, with data_files) can be read")
    files = (spec.get("dataset_kwargs") or {}).get("data_files", spec.get("data_files"))
    if isinstance(files, dict):
        files = [x for v in files.values() for x in ([v] if isinstance(v, str) else v)]
    elif isinstance(files, str):
        files = [files]
    if not files:
        raise DataError(f"{task}: field 'data_files' is missing (dataset_kwargs.data_files)")
    resolved = []
    for name in files:
        p = Path(name)
        local = p if p.is_absolute() else task.parent / p
        resolved.append(local if local.exists() else p)  # lm-eval itself resolves from the working directory
    return str(spec.get("task", task.stem)), resolved


def eval_sources(specs: Iterable[str | Path]) -> list[tuple[str, str, list[Path]]]:
    """(name, source, data files) per evaluation set; a folder's task YAMLs claim the files they name."""
    sets: list[tuple[str, str, list[Path]]] = []
    for spec in specs:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"{path}: no such evaluation set (file or folder)")
        tasks = sorted(p for p in path.rglob("*") if p.suffix in TASK_SUFFIXES) if path.is_dir() else (
            [path] if path.suffix in TASK_SUFFIXES else [])
        before = len(sets)
        claimed: set[Path] = set()
        for task in tasks:
            name, files = _task_files(task)
            claimed.update(f.resolve() for f in files)
            sets.append((name, str(task), files))
        if path.is_dir():
            data = [f.path for f in expand_inputs([path])] if any(kind_of(p) for p in path.rglob("*")) else []
            sets += [(input_stem(f), str(f), [f]) for f in data if f.resolve() not in claimed]
        elif not tasks:
            sets.append((input_stem(path), str(path), [path]))
        if len(sets) == before:  # a gate that checks nothing must not pass for one that checks
            raise DataError(f"contamination.eval_sets: {path} holds no evaluation set (JSON-lines or parquet files, "
                            "or lm-eval task YAMLs with local data_files)")
    names = Counter(n for n, _, _ in sets)
    seen: Counter = Counter()
    out = []
    for name, source, files in sets:  # same-named sets (two test.jsonl) get their source appended
        seen[name] += 1
        out.append((name if names[name] == 1 else f"{name}#{seen[name]}", source, files))
    return out


# ---- the gate ------------------------------------------------------------------------------------


class ContaminationGate:
    """Evaluation n-gram sets, and the filters that drop pairs and documents overlapping them."""

    def __init__(self, cfg: ContaminationConfig, batch_items: int = 4096) -> None:
        cfg.validate()
        self.cfg = cfg
        self.hasher = NgramHasher(cfg.ngram)
        self.sets: list[EvalSet] = []
        for name, source, files in eval_sources(cfg.eval_sets):
            self.sets.append(self._index(name, source, files, batch_items))
        self.removed: dict[str, Counter] = {s.name: Counter() for s in self.sets}
        self.checked: Counter = Counter()  # kind -> pairs/documents checked
        self.dropped: Counter = Counter()  # kind -> pairs/documents removed (once, whatever the sets)

    def _index(self, name: str, source: str, files: list[Path], batch_items: int) -> EvalSet:
        parts: list[np.ndarray] = []
        items = short = with_fields = 0
        batch: list[str] = []

        def flush() -> None:
            nonlocal short
            h, _, lengths = self.hasher.hashes(batch)
            short += int((lengths < self.cfg.ngram).sum())
            parts.append(_sorted_unique(h))
            batch.clear()

        for f in files:
            if not f.exists():
                raise DataError(f"{source}: data file {f} not found")
            for text, has_field in _data_items(f, self.cfg.fields):
                items += 1
                with_fields += has_field
                batch.append(text)
                if len(batch) >= batch_items:
                    flush()
        if batch:
            flush()
        if items == 0:
            log.warning("evaluation set %s (%s) has no items: it removes nothing", name, source)
        elif with_fields == 0:
            raise DataError(f"{source}: no item has any of the fields {list(self.cfg.fields)} "
                            "(contamination.fields): the set would remove nothing")
        ngrams = _sorted_unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        found = EvalSet(name, source, ngrams, items, short)
        log.info("evaluation set %s: %d items, %d distinct %d-grams (%.1f MB), %d items shorter than %d words",
                 name, items, len(ngrams), self.cfg.ngram, found.nbytes / 1e6, short, self.cfg.ngram)
        return found

    def contaminated(self, texts: Sequence[str], kind: str) -> list[bool]:
        """Which texts share an n-gram with any evaluation set; counts them under ``kind`` per set."""
        hashes, owner, _ = self.hasher.hashes(texts)
        hit_any = np.zeros(len(texts), dtype=bool)
        for s in self.sets:
            hit = np.zeros(len(texts), dtype=bool)
            hit[owner[s.contains(hashes)]] = True
            if hit.any():
                self.removed[s.name][kind] += int(hit.sum())
            hit_any |= hit
        self.checked[kind] += len(texts)
        self.dropped[kind] += int(hit_any.sum())
        return hit_any.tolist()

    def filter_texts(self, texts: Sequence[Sequence[Pair]]) -> list[list[Pair]]:
        """A pair filter for ``chains.synthesized_documents``: many texts' pairs in one vectorized pass."""
        flat = [f"{p.instruction} {p.response}" for pairs in texts for p in pairs]
        hits = iter(self.contaminated(flat, "synthesized_pairs"))
        return [[p for p in pairs if not next(hits)] for pairs in texts]

    def filter_documents(self, docs: Iterable[dict], kind: str) -> Iterator[dict]:
        """Documents (instruction records, tuning examples) that share no n-gram with an evaluation item."""
        for doc in docs:
            if not self.contaminated([doc["text"]], kind)[0]:
                yield doc

    def report(self) -> dict:
        return {
            "ngram": self.cfg.ngram,
            "checked": dict(self.checked),
            "removed": dict(self.dropped),
            "sets": {s.name: {"source": s.source, "items": s.items, "items_shorter_than_ngram": s.items_shorter_than_n,
                              "ngrams": len(s.ngrams), "removed": dict(self.removed[s.name])} for s in self.sets},
        }
