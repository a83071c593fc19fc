"""The one place that tokenizes corpora into indexed datasets: :func:`preprocess`.

The main process reads records (bytes) and keeps at most a few batches in flight; a pool of workers
decodes, validates and tokenizes each batch (one ``encode_flat`` call); results return in input
order and stream into :class:`IndexedDatasetWriter` (plus the ``_lossmask`` twin once a record with
``segments`` appears: earlier documents are back-filled with ones). Memory is bounded by the batches
in flight, whatever the corpus size.

Engine: before the run, :func:`megatron_ipt.tokenizer.select_engine` checks gigatoken against the
tokenizer on the first batch of the first input and fixed hard cases; the run then tokenizes with
gigatoken where it gives the same ids, else with the tokenizer itself. The output bytes are the same.

Resume: every ``checkpoint_s`` seconds the writers are flushed and ``PREFIX.progress.json`` records
(file, last record, documents, tokens, counters). A rerun with the same inputs and options truncates
the partial files to that checkpoint and continues; a finished run is detected and returned as is.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import pickle
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np

from megatron_ipt.data.encode import EncodedBatch, EncodeOptions, encode_batch, encode_in_worker, init_worker
from megatron_ipt.data.indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    best_dtype,
    bin_path,
    exists,
    idx_path,
    lossmask_prefix,
    summary_path,
)
from megatron_ipt.data.inputs import DataError, FileFault, InputFile, expand_inputs
from megatron_ipt.data.provenance import tokenizer_record
from megatron_ipt.data.readers import BadRecord, parse_record, read_records
from megatron_ipt.io import OutputLocked, atomic_write_json, output_lock
from megatron_ipt.log import get_logger
from megatron_ipt.park import park_point
from megatron_ipt.progress import progress as progress_of
from megatron_ipt.tokenizer import Tokenizer, gigatoken_version, load_tokenizer, select_engine

log = get_logger(__name__)
MAX_EXAMPLES = 10


def dataset_prefix(output_prefix: str | Path, key: str = "text") -> str:
    """Megatron's naming: ``OUT`` → ``OUT_text_document``."""
    return f"{output_prefix}_{key}_document"


def progress_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.progress.json")


def _fingerprint(
    files: list[InputFile], tok: Tokenizer, opts: EncodeOptions, dtype: np.dtype, skip_bad: bool
) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.path.stat()
        h.update(f"{f.path.resolve()}|{f.kind}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(
        f"{tok.name}|{tok.vocab_hash}|{tok.vocab_size}|{opts.key}|{opts.append_eod}|{opts.prepend_bos}|{dtype}|{skip_bad}".encode()
    )
    return h.hexdigest()[:16]


class _Run:
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


def _remove_dataset(prefix: str) -> None:
    idx_path(prefix).unlink(missing_ok=True)
    bin_path(prefix).unlink(missing_ok=True)


def _remove_partials(prefix: str) -> None:
    for p in (prefix, lossmask_prefix(prefix)):
        for suffix in (".bin.partial", ".lengths.partial", ".idx.partial"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)
    progress_path(prefix).unlink(missing_ok=True)


def preprocess(
    inputs: list[str | Path] | str | Path,
    output_prefix: str | Path,
    tokenizer: Tokenizer | str,
    *,
    json_key: str = "text",
    workers: int = 1,
    append_eod: bool = False,
    prepend_bos: bool = False,
    skip_bad: bool = False,
    batch_size: int = 1000,
    checkpoint_s: float = 5.0,
    progress: bool = True,
    dataset_suffix: bool = True,
    overwrite: bool = False,
    tokenizer_engine: str = "auto",
) -> dict[str, Any]:
    """Tokenize ``inputs`` into ``OUT_{json_key}_document.bin/.idx`` (+ ``_lossmask`` twin); return the summary.

    ``dataset_suffix=False`` writes to ``output_prefix`` itself. ``workers=0`` tokenizes in this
    process. The summary (also written to ``PREFIX.summary.json``) has ``prefix``, ``lossmask_prefix``
    (or None), ``read``, ``written``, ``skipped`` (by reason), ``skip_examples``, ``tokens``,
    ``elapsed_s``, ``tokenizer_fingerprint`` (see :mod:`megatron_ipt.data.provenance`) and
    ``tokenizer_engine`` (``tokenizer_engine``: ``auto``, ``gigatoken`` or ``reference``, see
    :func:`megatron_ipt.tokenizer.select_engine`; the ids are the same either way, and so is the fingerprint,
    so a run resumed under another engine still writes the same bytes). With ``skip_bad=False`` the first
    bad record raises :class:`DataError`.
    """
    if workers < 0:
        raise ValueError(f"workers must be 0 (tokenize in this process) or more, got {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    t0 = time.time()
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
    prefix = dataset_prefix(output_prefix, json_key) if dataset_suffix else str(output_prefix)
    files = expand_inputs(inputs)
    tok = select_engine(tok, tokenizer_engine, _first_texts(files[0], json_key, batch_size) if files else [])
    dtype = best_dtype(tok.vocab_size)
    opts = EncodeOptions(key=json_key, append_eod=append_eod, prepend_bos=prepend_bos, token_dtype=dtype.name)
    fp = _fingerprint(files, tok, opts, dtype, skip_bad)
    try:
        with output_lock(prefix):  # a second run into the same prefix is refused, not interleaved
            return _preprocess_into(prefix, files, tok, opts, dtype, fp, t0, workers=workers, skip_bad=skip_bad,
                                    batch_size=batch_size, checkpoint_s=checkpoint_s, progress=progress,
                                    overwrite=overwrite)
    except OutputLocked as err:
        raise DataError(str(err), reason="output_locked") from None
    except OSError as err:  # the output side: a prefix under a file, a read-only or full disk
        where = err.filename or prefix
        raise DataError(f"cannot write {prefix} ({where}): {err.strerror or err}") from err


def _preprocess_into(prefix: str, files: list[InputFile], tok: Tokenizer, opts: EncodeOptions, dtype: np.dtype,
                     fp: str, t0: float, *, workers: int, skip_bad: bool, batch_size: int, checkpoint_s: float,
                     progress: bool, overwrite: bool) -> dict[str, Any]:
    """The resumable tokenize-and-write loop of :func:`preprocess` (input faults come as DataError)."""
    json_key, append_eod, prepend_bos = opts.key, opts.append_eod, opts.prepend_bos
    sp = summary_path(prefix)
    if not overwrite and exists(prefix) and sp.is_file():
        done = json.loads(sp.read_text())
        if done.get("fingerprint") == fp:
            IndexedDataset(prefix)  # validates the pair
            log.info("%s is already complete (same inputs and options): nothing to do", prefix)
            return done

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
        _remove_partials(prefix)
    run = None
    try:
        run = _Run(prefix, dtype, tok.vocab_size, state)
    except Exception as err:  # partial files lost or shorter than the checkpoint: redo cleanly
        log.warning("cannot resume %s (%s): starting over", prefix, err)
        _remove_partials(prefix)
        state, run = None, _Run(prefix, dtype, tok.vocab_size, None)
    if state:
        log.info(
            "resuming %s at file %d record %d (%d documents)",
            prefix,
            run.file_index,
            run.record,
            state["n_docs"],
        )
    resumed_docs = run.written

    columns = [json_key, "segments"]
    bar = progress_of(desc="tokenizing", unit="doc", initial=run.written, enabled=progress, unit_scale=True,
                      smoothing=0.1)
    last_ckpt = time.time()
    pool = None
    try:
        if workers > 0:
            ctx = mp.get_context("fork")
            pool = ctx.Pool(workers, initializer=init_worker, initargs=(pickle.dumps(tok), opts))
        in_flight: deque = deque()
        max_in_flight = 2 * max(workers, 1) + 2

        def drain_one() -> None:
            nonlocal last_ckpt
            fi, pending, done_file = in_flight.popleft()
            if isinstance(pending, FileFault):
                run.fault(pending, skip_bad)
                batch_last = None
            else:
                b = pending if isinstance(pending, EncodedBatch) else pending.get()
                run.add(b, files[fi].path, skip_bad)
                batch_last = b.last_record
                el = max(time.monotonic() - bar.start, 1e-9)
                bar.set_postfix(tok_s=f"{(run.writer.n_tokens - tok0) / el:,.0f}")
                bar.update(b.lengths.size)
            run.file_index, run.record = (fi + 1, 0) if done_file else (fi, batch_last or run.record)
            if time.time() - last_ckpt >= checkpoint_s:
                run.checkpoint(fp)
                last_ckpt = time.time()

        tok0 = run.writer.n_tokens
        for fi in range(run.file_index, len(files)):
            f = files[fi]
            start = run.record if fi == run.file_index else 0
            gen = read_records(f, columns, start=start, batch_size=batch_size)
            prev = None
            while True:
                try:
                    batch = next(gen)
                except StopIteration:
                    break
                except FileFault as fault:
                    if prev is not None:
                        in_flight.append((fi, prev, False))
                    prev = None
                    in_flight.append((fi, fault, True))
                    break
                if prev is not None:
                    in_flight.append((fi, prev, False))
                prev = (
                    pool.apply_async(encode_in_worker, (batch,)) if pool else encode_batch(batch, tok, opts)
                )
                while len(in_flight) >= max_in_flight:
                    drain_one()
            if prev is not None:
                in_flight.append((fi, prev, True))
            elif not in_flight or in_flight[-1][0] != fi:
                in_flight.append((fi, _empty_batch(start), True))
            while len(in_flight) >= max_in_flight:
                drain_one()
        while in_flight:
            drain_one()
    except BaseException:
        # Leave the partial files and the last checkpoint for a resume; close handles only.
        if pool is not None:
            pool.terminate()
        if run is not None:
            run.writer.close()
            if run.mask is not None:
                run.mask.close()
        raise
    finally:
        bar.close()
    if pool is not None:
        pool.close()
        pool.join()

    if run.written == 0:
        # Nothing to publish: an empty dataset would only fail later, in training, far from its cause.
        run.writer.abort()
        if run.mask is not None:
            run.mask.abort()
        progress_path(prefix).unlink(missing_ok=True)
        names = ", ".join(str(f.path) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        skipped = f", {sum(run.skipped.values())} skipped {dict(run.skipped)}" if run.skipped else ""
        raise DataError(f"{names}: no documents to write (read {run.read} records{skipped}); "
                        f"{prefix} was not published")
    if run.mask is not None:
        run.mask.finalize()
    run.writer.finalize()
    if run.mask is None:  # a twin left by an earlier run over other inputs would be wrong now
        _remove_dataset(lossmask_prefix(prefix))
    elapsed = time.time() - t0
    summary = {
        "prefix": prefix,
        "lossmask_prefix": lossmask_prefix(prefix) if run.mask is not None else None,
        "inputs": [str(f.path) for f in files],
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "dtype": str(dtype),
        "tokenizer_fingerprint": tokenizer_record(tok, dtype),  # checked by the trainer and merge
        "tokenizer_engine": f"gigatoken {gigatoken_version()}" if tok.engine == "gigatoken" else tok.engine,
        "read": run.read,
        "written": run.written,
        "skipped": dict(run.skipped),
        "skipped_total": sum(run.skipped.values()),
        "skip_examples": run.examples,
        "tokens": run.writer.n_tokens,
        "max_token_id": run.max_token_id,
        "resumed_documents": resumed_docs,
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round((run.written - resumed_docs) / max(elapsed, 1e-9), 1),
        "tokens_per_s": round((run.writer.n_tokens - tok0) / max(elapsed, 1e-9), 1),
        "options": {
            "json_key": json_key,
            "append_eod": append_eod,
            "prepend_bos": prepend_bos,
            "skip_bad": skip_bad,
        },
        "fingerprint": fp,
    }
    assert summary["written"] + summary["skipped_total"] == summary["read"], summary
    atomic_write_json(summary_path(prefix), summary)
    progress_path(prefix).unlink(missing_ok=True)
    log.info(
        "%s: %d documents, %d tokens, %d skipped %s in %.1fs",
        prefix,
        run.written,
        run.writer.n_tokens,
        summary["skipped_total"],
        dict(run.skipped),
        elapsed,
    )
    return summary


def _first_texts(f: InputFile, key: str, batch_size: int) -> list[str]:
    """The texts of the first batch of ``f`` (the engine's verification sample); bad records are left out."""
    texts: list[str] = []
    try:
        batch = next(read_records(f, [key, "segments"], batch_size=batch_size), [])
    except (FileFault, DataError, OSError):
        return texts  # the run itself reports the fault, with its place
    for _, payload in batch:
        try:
            rec = parse_record(payload, key)
        except BadRecord:
            continue
        texts.extend([rec] if isinstance(rec, str) else [s["text"] for s in rec["segments"] if "special" not in s])
    return texts


def _empty_batch(last: int) -> EncodedBatch:
    return EncodedBatch(np.zeros(0, np.int64), np.zeros(0, np.int64), None, 0, last)


__all__ = ["preprocess", "dataset_prefix", "summary_path", "DataError", "bin_path", "idx_path"]
