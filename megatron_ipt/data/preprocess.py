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

The parts: :mod:`~megatron_ipt.data.encode_pool` (the worker pool and the input order),
:mod:`~megatron_ipt.data.preprocess_run` (writers, counters, checkpoints, resume); this module runs
them and writes the summary.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from megatron_ipt.data.encode import EncodeOptions
from megatron_ipt.data.encode_pool import encoded_in_order
from megatron_ipt.data.indexed import best_dtype, bin_path, idx_path, lossmask_prefix, summary_path
from megatron_ipt.data.inputs import DataError, FileFault, InputFile, expand_inputs
from megatron_ipt.data.preprocess_run import (
    PreprocessRun,
    fingerprint,
    finished_summary,
    open_run,
    progress_path,
)
from megatron_ipt.data.provenance import tokenizer_record
from megatron_ipt.data.readers import BadRecord, parse_record, read_records
from megatron_ipt.io import OutputLocked, atomic_write_json, output_lock
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress as progress_of
from megatron_ipt.tokenizer import Tokenizer, gigatoken_version, load_tokenizer, select_engine

log = get_logger(__name__)


def dataset_prefix(output_prefix: str | Path, key: str = "text") -> str:
    """Megatron's naming: ``OUT`` → ``OUT_text_document``."""
    return f"{output_prefix}_{key}_document"


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
    fp = fingerprint(files, tok, opts, dtype, skip_bad)
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
    """The resumable tokenize-and-write run of :func:`preprocess` (input faults come as DataError)."""
    done = None if overwrite else finished_summary(prefix, fp)
    if done is not None:
        log.info("%s is already complete (same inputs and options): nothing to do", prefix)
        return done
    run = open_run(prefix, dtype, tok.vocab_size, fp, overwrite)
    resumed_docs, resumed_tokens = run.written, run.writer.n_tokens
    _write_batches(run, files, tok, opts, fp, workers=workers, skip_bad=skip_bad, batch_size=batch_size,
                   checkpoint_s=checkpoint_s, progress=progress)
    if run.written == 0:
        # Nothing to publish: an empty dataset would only fail later, in training, far from its cause.
        run.abort()
        names = ", ".join(str(f.path) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        skipped = f", {sum(run.skipped.values())} skipped {dict(run.skipped)}" if run.skipped else ""
        raise DataError(f"{names}: no documents to write (read {run.read} records{skipped}); "
                        f"{prefix} was not published")
    run.finalize()
    elapsed = time.time() - t0
    summary = _summary(run, files, tok, opts, skip_bad, fp, elapsed, resumed=(resumed_docs, resumed_tokens))
    assert summary["written"] + summary["skipped_total"] == summary["read"], summary
    atomic_write_json(summary_path(prefix), summary)
    progress_path(prefix).unlink(missing_ok=True)
    log.info("%s: %d documents, %d tokens, %d skipped %s in %.1fs", prefix, run.written, run.writer.n_tokens,
             summary["skipped_total"], dict(run.skipped), elapsed)
    return summary


def _write_batches(run: PreprocessRun, files: list[InputFile], tok: Tokenizer, opts: EncodeOptions, fp: str, *,
                   workers: int, skip_bad: bool, batch_size: int, checkpoint_s: float, progress: bool) -> None:
    """Encode from the run's place in the inputs to their end and write every batch in input order,
    checkpointing every ``checkpoint_s`` seconds."""
    bar = progress_of(desc="tokenizing", unit="doc", initial=run.written, enabled=progress, unit_scale=True,
                      smoothing=0.1)
    tok0 = run.writer.n_tokens
    last_ckpt = time.time()
    batches = encoded_in_order(files, run.file_index, run.record, tok, opts, workers=workers, batch_size=batch_size)
    try:
        with contextlib.closing(batches):  # an error here terminates the workers first
            for fi, done, ends_file in batches:
                if isinstance(done, FileFault):
                    run.fault(done, skip_bad)
                    batch_last = None
                else:
                    run.add(done, files[fi].path, skip_bad)
                    batch_last = done.last_record
                    el = max(time.monotonic() - bar.start, 1e-9)
                    bar.set_postfix(tok_s=f"{(run.writer.n_tokens - tok0) / el:,.0f}")
                    bar.update(done.lengths.size)
                run.file_index, run.record = (fi + 1, 0) if ends_file else (fi, batch_last or run.record)
                if time.time() - last_ckpt >= checkpoint_s:
                    run.checkpoint(fp)
                    last_ckpt = time.time()
    except BaseException:
        run.close()  # the partial files and the last checkpoint stay for a resume
        raise
    finally:
        bar.close()


def _summary(run: PreprocessRun, files: list[InputFile], tok: Tokenizer, opts: EncodeOptions, skip_bad: bool,
             fp: str, elapsed: float, resumed: tuple[int, int]) -> dict[str, Any]:
    """The published dataset's ``PREFIX.summary.json``; ``resumed``: the documents and tokens written
    before this process (left out of the rates)."""
    seconds = max(elapsed, 1e-9)
    return {
        "prefix": run.prefix,
        "lossmask_prefix": lossmask_prefix(run.prefix) if run.mask is not None else None,
        "inputs": [str(f.path) for f in files],
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "dtype": str(run.dtype),
        "tokenizer_fingerprint": tokenizer_record(tok, run.dtype),  # checked by the trainer and merge
        "tokenizer_engine": f"gigatoken {gigatoken_version()}" if tok.engine == "gigatoken" else tok.engine,
        "read": run.read,
        "written": run.written,
        "skipped": dict(run.skipped),
        "skipped_total": sum(run.skipped.values()),
        "skip_examples": run.examples,
        "tokens": run.writer.n_tokens,
        "max_token_id": run.max_token_id,
        "resumed_documents": resumed[0],
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round((run.written - resumed[0]) / seconds, 1),
        "tokens_per_s": round((run.writer.n_tokens - resumed[1]) / seconds, 1),
        "options": {
            "json_key": opts.key,
            "append_eod": opts.append_eod,
            "prepend_bos": opts.prepend_bos,
            "skip_bad": skip_bad,
        },
        "fingerprint": fp,
    }


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


__all__ = ["preprocess", "dataset_prefix", "summary_path", "progress_path", "DataError", "bin_path", "idx_path"]
