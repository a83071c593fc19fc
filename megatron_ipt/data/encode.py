"""Turn a batch of raw records into token arrays (runs inside the tokenizing worker processes)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from megatron_ipt.data.indexed import IndexedDatasetError
from megatron_ipt.data.readers import BadRecord, parse_record
from megatron_ipt.tokenizer import Tokenizer, TokenizerError


@dataclass(frozen=True)
class EncodeOptions:
    key: str = "text"
    append_eod: bool = False
    prepend_bos: bool = False
    token_dtype: str = "int64"  # the output's dtype: workers return compact arrays (less IPC)


@dataclass
class EncodedBatch:
    """Documents of one batch, concatenated; ``mask`` is None when no record carried segments."""

    tokens: np.ndarray
    lengths: np.ndarray
    mask: np.ndarray | None
    n_read: int
    last_record: int
    bad: list[tuple[str, int, str]] = field(default_factory=list)  # (reason, record number, message)


_WORKER: dict[str, Any] = {}


def init_worker(tokenizer_pickle: bytes, options: EncodeOptions) -> None:
    """Pool initializer: each worker unpickles (reloads) its own tokenizer."""
    _WORKER["tok"] = pickle.loads(tokenizer_pickle)
    _WORKER["opt"] = options


def encode_in_worker(batch: list[tuple[int, Any]]) -> EncodedBatch:
    return encode_batch(batch, _WORKER["tok"], _WORKER["opt"])


def encode_batch(batch: list[tuple[int, Any]], tok: Tokenizer, opt: EncodeOptions) -> EncodedBatch:
    """Validate, tokenize (one ``encode_flat`` call for all texts) and assemble the documents."""
    bad: list[tuple[str, int, str]] = []
    parsed: list[dict | str] = []
    numbers: list[int] = []
    for rec_no, payload in batch:
        try:
            rec = parse_record(payload, opt.key)
            if not isinstance(rec, str):
                _check_specials(rec["segments"], tok)
        except BadRecord as err:
            bad.append((err.reason, rec_no, str(err)))
            continue
        parsed.append(rec)
        numbers.append(rec_no)
    specials = {"bos": tok.bos_id, "eos": tok.eos_id}
    if opt.prepend_bos and tok.bos_id is None:
        raise ValueError(f"--prepend-bos: tokenizer {tok.name} has no BOS token")
    if opt.append_eod and tok.eos_id is None:
        raise ValueError(f"--append-eod: tokenizer {tok.name} has no EOS token")
    texts = [t for rec in parsed for t in _texts_of(rec)]
    try:
        ids, counts = tok.encode_flat(texts) if texts else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    except TokenizerError:
        # A text this tokenizer refuses (NullTokenizer: not integers): find its record and report it.
        keep = []
        for rec_no, rec in zip(numbers, parsed, strict=True):
            try:
                tok.encode_flat(_texts_of(rec))
                keep.append(rec)
            except TokenizerError as err:
                bad.append(("untokenizable", rec_no, f"field {opt.key!r}: {err}"))
        bad.sort(key=lambda b: b[1])
        parsed = keep
        texts = [t for rec in parsed for t in _texts_of(rec)]
        ids, counts = tok.encode_flat(texts) if texts else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    has_segments = any(not isinstance(r, str) for r in parsed)
    if has_segments:
        ends = np.cumsum(counts).tolist()
        encoded = [ids[e - n : e].tolist() for e, n in zip(ends, counts.tolist(), strict=True)]
        flat, seg_lengths, mask = _assemble_segments(parsed, encoded, specials, opt, tok.name,
                                                      tok.special_pieces)
        lengths: Any = seg_lengths
        doc_ids: np.ndarray = np.asarray(flat, dtype=np.int64)
    else:
        doc_ids, lengths = _assemble_texts(ids, counts, specials, opt)
        mask = None
    tokens = _as_dtype(doc_ids, opt.token_dtype, tok.name)
    # Documents that tokenized to nothing would be invisible to training: count them as skipped.
    length_arr = np.asarray(lengths, dtype=np.int64)
    last = batch[-1][0] if batch else 0
    if (length_arr == 0).any():
        good = [rn for rn, p in batch]  # record numbers of parsed records, in order
        bad_nos = {b[1] for b in bad}
        good = [rn for rn in good if rn not in bad_nos]
        for k in np.flatnonzero(length_arr == 0):
            bad.append(("empty_tokens", good[k], "text tokenized to zero tokens"))
        length_arr = length_arr[length_arr > 0]
    return EncodedBatch(tokens, length_arr, mask, len(batch), last, bad)


def _check_specials(segments: list[dict], tok: Tokenizer) -> None:
    """Every ``special`` segment names bos, eos or one of the tokenizer's special pieces."""
    for i, seg in enumerate(segments):
        name = seg.get("special")
        if name is not None and name not in ("bos", "eos") and name not in tok.special_pieces:
            raise BadRecord("bad_segments", f"field 'segments[{i}]'.special: {name!r} is not a special token of "
                                            f"tokenizer {tok.name}")


def _texts_of(rec: dict | str) -> list[str]:
    """The texts a parsed record tokenizes: itself, or its segments' texts."""
    return [rec] if isinstance(rec, str) else [s["text"] for s in rec["segments"] if "special" not in s]


def _assemble_texts(ids: np.ndarray, counts: np.ndarray, specials: dict,
                    opt: EncodeOptions) -> tuple[np.ndarray, np.ndarray]:
    """Plain text records: the documents' tokens with BOS/EOS put in place, and their lengths (vectorized)."""
    bos, eos = int(opt.prepend_bos), int(opt.append_eod)
    if not bos and not eos:
        return ids, counts
    lengths = counts + bos + eos
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    body = np.ones(out.size, dtype=bool)
    if bos:
        out[starts] = specials["bos"]
        body[starts] = False
    if eos:
        out[starts + lengths - 1] = specials["eos"]
        body[starts + lengths - 1] = False
    out[body] = ids
    return out, lengths


def _as_dtype(ids: np.ndarray, dtype: str, tok_name: str) -> np.ndarray:
    """``ids`` in the output dtype; an id it cannot hold is an error, never wrapped around."""
    info = np.iinfo(dtype)
    if ids.size and (int(ids.max()) > info.max or int(ids.min()) < info.min):
        bad = int(ids.max()) if int(ids.max()) > info.max else int(ids.min())
        raise IndexedDatasetError(f"tokenizer {tok_name}: id {bad} out of bounds for {dtype}: "
                                  "the output dtype cannot hold it")
    return ids.astype(dtype, copy=False)


def _assemble_segments(
    parsed: list[dict | str], encoded: list[list[int]], specials: dict, opt: EncodeOptions, tok_name: str,
    tok_specials: dict[str, int],
) -> tuple[list[int], list[int], np.ndarray]:
    """Records with segments (and any plain ones in the same batch): tokens, lengths, loss mask."""
    flat: list[int] = []
    runs: list[tuple[int, int]] = []  # (length, loss) runs of the mask
    lengths: list[int] = []
    j = 0
    for rec in parsed:
        parts: list[tuple[list[int], bool]] = []
        if isinstance(rec, str):
            if opt.prepend_bos:
                parts.append(([specials["bos"]], False))
            parts.append((encoded[j], True))
            j += 1
            if opt.append_eod:
                parts.append(([specials["eos"]], True))
        else:
            segs = rec["segments"]
            if opt.prepend_bos and segs[0].get("special") != "bos":
                parts.append(([specials["bos"]], False))
            for s in segs:
                if "special" in s:
                    sid = specials.get(s["special"], tok_specials.get(s["special"]))
                    if sid is None:
                        raise ValueError(f"tokenizer {tok_name} has no {s['special']} token")
                    parts.append(([sid], s["loss"]))
                else:
                    parts.append((encoded[j], s["loss"]))
                    j += 1
            if opt.append_eod and segs[-1].get("special") != "eos":
                parts.append(([specials["eos"]], True))
        n = 0
        for ids, loss in parts:
            flat += ids
            runs.append((len(ids), int(loss)))
            n += len(ids)
        lengths.append(n)
    run_len = np.array([r[0] for r in runs], dtype=np.int64)
    run_val = np.array([r[1] for r in runs], dtype=np.uint8)
    return flat, lengths, np.repeat(run_val, run_len)
