"""Provenance that travels with the data: which tokenizer made a dataset, checked where it is used.

Every dataset writer (preprocess, merge, build_corpora, build_synthesizer_data) stores
``tokenizer_fingerprint`` in ``PREFIX.summary.json``: the tokenizer's vocabulary hash, name, size,
BOS/EOS ids and the dataset's token dtype. Token ids from another tokenizer are valid ids of every
larger vocabulary and wrong, so nothing downstream could notice: the trainer and ``merge_datasets``
compare the records instead and refuse a mismatch before any work.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from megatron_ipt.config import ConfigError
from megatron_ipt.data.indexed import summary_path
from megatron_ipt.log import get_logger
from megatron_ipt.tokenizer import Tokenizer

log = get_logger(__name__)


class ProvenanceError(ConfigError):
    """A dataset made with another tokenizer (or dtype) than the one it is used with."""


def tokenizer_record(tok: Tokenizer, dtype: Any) -> dict[str, Any]:
    """The record a dataset writer stores: the tokenizer's fingerprint plus the token dtype."""
    return {**tok.fingerprint(), "dtype": str(dtype)}


def describe(record: dict[str, Any]) -> str:
    """``NAME (vocab V, hash H)``: how a message names a tokenizer."""
    return f"{record.get('name', '?')} (vocab {record.get('vocab_size', '?')}, hash {record.get('hash', '?')})"


def read_record(prefix: str | Path) -> dict[str, Any] | None:
    """The tokenizer record of dataset ``prefix`` (from ``PREFIX.summary.json``), or None if it has none.

    A summary without ``tokenizer_fingerprint`` but with ``vocab_size`` yields a partial record (name, vocab
    size and dtype).
    """
    path = summary_path(prefix)
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProvenanceError(f"{path}: unreadable dataset summary ({err})") from None
    if not isinstance(summary, dict):
        raise ProvenanceError(f"{path}: a dataset summary must be a JSON object")
    rec = summary.get("tokenizer_fingerprint")
    if isinstance(rec, dict):
        return rec
    if "vocab_size" in summary:
        return {"name": summary.get("tokenizer"), "vocab_size": summary["vocab_size"], "dtype": summary.get("dtype")}
    return None


def mismatch(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records name different tokenizers (by hash; by vocab size when a hash is missing)."""
    if a.get("hash") and b.get("hash"):
        return a["hash"] != b["hash"]
    return a.get("vocab_size") != b.get("vocab_size")


def check_datasets(prefixes: Iterable[str], tok: Tokenizer, where: str, override: str | None,
                   against: str = "the tokenizer") -> list[str]:
    """Refuse datasets tokenized with another tokenizer than ``tok``; returns the prefixes without a record.

    ``override`` names the config key that accepts a mismatch deliberately; when None the check is
    only logged (the override is set). ``against`` names ``tok`` in the message (``data.tokenizer``).
    """
    mine = tok.fingerprint()
    unknown: list[str] = []
    for prefix in prefixes:
        rec = read_record(prefix)
        if rec is None:
            unknown.append(prefix)
            continue
        if not mismatch(rec, mine):
            continue
        line = f"{where}: dataset {prefix} was tokenized with {describe(rec)} but {against} is {describe(mine)}"
        if override is None:
            log.warning("%s; training on it anyway (the mismatch was allowed)", line)
            continue
        raise ProvenanceError(f"{line}; retokenize it, or set {override}=true to train on it deliberately")
    if unknown:
        log.warning("%s: %d dataset(s) carry no tokenizer record (no PREFIX.summary.json), e.g. %s: "
                    "cannot check they were tokenized with %s", where, len(unknown), unknown[0], describe(mine))
    return unknown


def common_record(prefixes: list[str], dtypes: list[Any]) -> dict[str, Any] | None:
    """The one tokenizer record shared by ``prefixes`` (for a merge); refuses mixed tokenizers or dtypes."""
    names = [str(d) for d in dtypes]
    if len(set(names)) > 1:
        detail = ", ".join(f"{p}: {n}" for p, n in zip(prefixes, names, strict=True))
        raise ProvenanceError(f"cannot merge datasets of different token dtypes ({detail}): "
                              "they come from different tokenizers or tools")
    records = [(p, read_record(p)) for p in prefixes]
    known = [(p, r) for p, r in records if r is not None]
    for p, r in known[1:]:
        if mismatch(known[0][1], r):
            raise ProvenanceError(f"cannot merge {known[0][0]} (tokenized with {describe(known[0][1])}) and {p} "
                                  f"(tokenized with {describe(r)}): their token ids mean different things")
    missing = [p for p, r in records if r is None]
    if missing and known:
        log.warning("merge: %s carries no tokenizer record; the merged dataset takes %s's", missing[0], known[0][0])
    return {**known[0][1], "dtype": names[0]} if known else None
