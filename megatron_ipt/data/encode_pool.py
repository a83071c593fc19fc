"""Every batch of the inputs, encoded and handed back in the order read.

Batches are encoded by a pool of forked workers (or in this process with ``workers=0``) as soon as
they are read; at most a few batches are in flight, so memory is bounded whatever the corpus size.
Each batch comes back with its file's index and whether it ends that file, which is what a resume
checkpoint records.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from megatron_ipt.data.encode import EncodedBatch, EncodeOptions, encode_batch, encode_in_worker, init_worker
from megatron_ipt.data.inputs import FileFault, InputFile
from megatron_ipt.data.readers import read_records
from megatron_ipt.tokenizer import Tokenizer

# (file index, an encoded batch or the read fault that ended the file, whether it ends the file)
Encoded = tuple[int, EncodedBatch | FileFault, bool]


def encoded_in_order(files: list[InputFile], first_file: int, first_record: int, tok: Tokenizer,
                     opts: EncodeOptions, *, workers: int, batch_size: int) -> Iterator[Encoded]:
    """The batches of ``files[first_file:]`` (the first from record ``first_record``), encoded, in input
    order. Closing the iterator early (or an error while encoding) terminates the workers."""
    pool = None
    if workers > 0:
        pool = mp.get_context("fork").Pool(workers, initializer=init_worker, initargs=(pickle.dumps(tok), opts))

    def encode(batch: list[tuple[int, Any]]) -> Any:
        return pool.apply_async(encode_in_worker, (batch,)) if pool else encode_batch(batch, tok, opts)

    in_flight: deque = deque()
    max_in_flight = 2 * max(workers, 1) + 2
    try:
        for entry in _file_batches(files, first_file, first_record, [opts.key, "segments"], batch_size, encode):
            in_flight.append(entry)
            while len(in_flight) >= max_in_flight:
                yield _resolved(in_flight.popleft())
        while in_flight:
            yield _resolved(in_flight.popleft())
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    if pool is not None:
        pool.close()
        pool.join()


def _file_batches(files: list[InputFile], first_file: int, first_record: int, columns: list[str], batch_size: int,
                  encode: Callable[[list[tuple[int, Any]]], Any]) -> Iterator[tuple[int, Any, bool]]:
    """Each batch passed to ``encode`` as soon as it is read and yielded (encoding) once the next read
    tells whether it ends its file. A read fault ends its file; a file with no records yields one empty
    batch, so that its end is recorded too."""
    for fi in range(first_file, len(files)):
        start = first_record if fi == first_file else 0
        records = read_records(files[fi], columns, start=start, batch_size=batch_size)
        pending, any_yielded = None, False
        while True:
            try:
                batch = next(records)
            except StopIteration:
                break
            except FileFault as fault:
                if pending is not None:
                    yield fi, pending, False
                pending, any_yielded = None, True
                yield fi, fault, True
                break
            submitted = encode(batch)
            if pending is not None:
                yield fi, pending, False
                any_yielded = True
            pending = submitted
        if pending is not None:
            yield fi, pending, True
        elif not any_yielded:
            yield fi, _empty_batch(start), True


def _resolved(entry: tuple[int, Any, bool]) -> Encoded:
    fi, pending, ends_file = entry
    done = pending if isinstance(pending, EncodedBatch | FileFault) else pending.get()
    return fi, done, ends_file


def _empty_batch(last: int) -> EncodedBatch:
    return EncodedBatch(np.zeros(0, np.int64), np.zeros(0, np.int64), None, 0, last)
