"""The output side of one :func:`~megatron_ipt.data.preprocess.preprocess` run and its resume.

:class:`PreprocessRun` holds the writers (the dataset and, once a record carries ``segments``, its
``_lossmask`` twin) and the counters; every checkpoint flushes them and records the place in the
inputs in ``PREFIX.progress.json``. :func:`open_run` resumes from that checkpoint when the inputs and
options (their :func:`fingerprint`) are the same, and starts over otherwise.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from megatron_ipt.data.encode import EncodedBatch, EncodeOptions
from megatron_ipt.data.indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    bin_path,
    exists,
    idx_path,
    lossmask_prefix,
    summary_path,
)
from megatron_ipt.data.inputs import DataError, FileFault, InputFile
from megatron_ipt.io import atomic_write_json
from megatron_ipt.log import get_logger
from megatron_ipt.park import park_point
from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)
MAX_EXAMPLES = 10


def progress_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.progress.json")


def fingerprint(files: list[InputFile], tok: Tokenizer, opts: EncodeOptions, dtype: np.dtype, skip_bad: bool) -> str:
    """What a resume must match: the inputs (path, size, mtime), the tokenizer and the options."""
    h = hashlib.sha256()
    for f in files:
        st = f.path.stat()
        h.update(f"{f.path.resolve()}|{f.kind}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(
        f"{tok.name}|{tok.vocab_hash}|{tok.vocab_size}|{opts.key}|{opts.append_eod}|{opts.prepend_bos}|{dtype}|{skip_bad}".encode()
    )
    return h.hexdigest()[:16]


class PreprocessRun:
    """Mutable state of one preprocessing run: writers, counters, checkpoints."""

    def __init__(self, prefix: str, dtype: np.dtype, vocab: int, state: dict | None) -> None:
        self.prefix = prefix
        self.dtype = dtype
        self.vocab = vocab
        st = state or {}
        self.read = st.get("read", 0)
        self.written = st.get("written", 0)
        self.skipped: Counter = Counter(st.get("skipped", {}))
        self.examples: list[str] = st.get("examples", [])
        self.max_token_id = st.get("max_token_id", -1)  # recorded so training checks ids without a scan
        self.file_index = st.get("file_index", 0)
        self.record = st.get("record", 0)
        resume = (st["n_docs"], st["n_tokens"]) if state else None
        self.writer = IndexedDatasetWriter(prefix, dtype, resume=resume, max_token=vocab - 1)
        self.mask: IndexedDatasetWriter | None = None
        if st.get("has_mask"):
            self.mask = IndexedDatasetWriter(lossmask_prefix(prefix), np.uint8, resume=resume)

    def add(self, b: EncodedBatch, path: Path, skip_bad: bool) -> None:
        for reason, rec_no, msg in b.bad:
            where = f"{path}:{rec_no}: {msg}"
            if not skip_bad:
                raise DataError(f"{where} (use --skip-bad to skip and count such records)")
            self.skipped[reason] += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(f"{reason}: {where}")
        if b.mask is not None and self.mask is None:
            self._start_mask()
        self.writer.add_documents(b.tokens, b.lengths)
        if b.tokens.size:
            self.max_token_id = max(self.max_token_id, int(b.tokens.max()))
        if self.mask is not None:
            mask = b.mask if b.mask is not None else np.ones(b.tokens.size, np.uint8)
            self.mask.add_documents(mask, b.lengths)
        self.read += b.n_read
        self.written += b.lengths.size

    def fault(self, err: FileFault, skip_bad: bool) -> None:
        if not skip_bad:
            raise DataError(f"{err} (use --skip-bad to skip the rest of this file and count it)") from err
        self.read += 1
        self.skipped[err.reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{err.reason}: {err}")

    def _start_mask(self) -> None:
        """First record with segments: back-fill earlier documents with loss 1."""
        self.mask = IndexedDatasetWriter(lossmask_prefix(self.prefix), np.uint8)
        n_docs, _ = self.writer.state()
        if n_docs:
            lengths = np.memmap(self.writer.len_partial, dtype=np.int32, mode="r", shape=(n_docs,))
            for s in range(0, n_docs, 1 << 20):
                chunk = np.asarray(lengths[s : s + (1 << 20)], dtype=np.int64)
                self.mask.add_documents(np.ones(int(chunk.sum()), np.uint8), chunk)
            del lengths

    def checkpoint(self, fingerprint: str) -> None:
        n_docs, n_tokens = self.writer.state()
        if self.mask is not None:
            self.mask.flush()
        atomic_write_json(progress_path(self.prefix), self.state(fingerprint, n_docs, n_tokens))
        park_point("preprocess_checkpoint", self.file_index)  # test-only (see megatron_ipt.park)

    def state(self, fingerprint: str, n_docs: int, n_tokens: int) -> dict:
        return {
            "fingerprint": fingerprint,
            "file_index": self.file_index,
            "record": self.record,
            "n_docs": n_docs,
            "n_tokens": n_tokens,
            "has_mask": self.mask is not None,
            "read": self.read,
            "written": self.written,
            "max_token_id": self.max_token_id,
            "skipped": dict(self.skipped),
            "examples": self.examples,
        }

    def close(self) -> None:
        """Close the handles only: the partial files and the last checkpoint stay for a resume."""
        self.writer.close()
        if self.mask is not None:
            self.mask.close()

    def abort(self) -> None:
        """Remove the partial files and the checkpoint: nothing of this run is kept."""
        self.writer.abort()
        if self.mask is not None:
            self.mask.abort()
        progress_path(self.prefix).unlink(missing_ok=True)

    def finalize(self) -> None:
        """Publish the dataset (and its loss-mask twin when there is one)."""
        if self.mask is not None:
            self.mask.finalize()
        self.writer.finalize()
        if self.mask is None:  # a twin left by an earlier run over other inputs would be wrong now
            remove_dataset(lossmask_prefix(self.prefix))


def finished_summary(prefix: str, fp: str) -> dict[str, Any] | None:
    """The summary of a finished run into ``prefix`` with the same fingerprint (its pair validated)."""
    sp = summary_path(prefix)
    if not (exists(prefix) and sp.is_file()):
        return None
    done = json.loads(sp.read_text())
    if done.get("fingerprint") != fp:
        return None
    IndexedDataset(prefix)  # validates the pair
    return done


def open_run(prefix: str, dtype: np.dtype, vocab: int, fp: str, overwrite: bool) -> PreprocessRun:
    """The run into ``prefix``: resumed from its checkpoint when that has fingerprint ``fp`` (and its
    partial files are intact), else started over."""
    state = None
    pp = progress_path(prefix)
    if not overwrite and pp.is_file():
        try:
            state = json.loads(pp.read_text())
        except json.JSONDecodeError:
            state = None
        if state is not None and state.get("fingerprint") != fp:
            log.info("%s: inputs or options changed since the interrupted run: starting over", prefix)
            state = None
    if state is None:
        remove_partials(prefix)
    try:
        run = PreprocessRun(prefix, dtype, vocab, state)
    except Exception as err:  # partial files lost or shorter than the checkpoint: redo cleanly
        log.warning("cannot resume %s (%s): starting over", prefix, err)
        remove_partials(prefix)
        return PreprocessRun(prefix, dtype, vocab, None)
    if state:
        log.info("resuming %s at file %d record %d (%d documents)", prefix, run.file_index, run.record,
                 state["n_docs"])
    return run


def remove_dataset(prefix: str) -> None:
    idx_path(prefix).unlink(missing_ok=True)
    bin_path(prefix).unlink(missing_ok=True)


def remove_partials(prefix: str) -> None:
    for p in (prefix, lossmask_prefix(prefix)):
        for suffix in (".bin.partial", ".lengths.partial", ".idx.partial"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)
    progress_path(prefix).unlink(missing_ok=True)
