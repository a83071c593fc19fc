"""Engines: gigatoken in front of the reference tokenizer, where it gives exactly the same ids.

The loaded tokenizer is the *reference*. :func:`select_engine` puts gigatoken (a Rust tokenizer,
several times faster) in front of it when gigatoken loads the same tokenizer and gives the same ids
on a verification sample (the caller's first batch plus :data:`HARD_CASES`); the ids, the
fingerprint and everything downstream stay the same, only the speed differs.
"""

from __future__ import annotations

import itertools
import pickle
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from megatron_ipt.log import get_logger
from megatron_ipt.tokenizer.backends import HFTokenizer, SentencePieceTokenizer, TikTokenizer
from megatron_ipt.tokenizer.base import Tokenizer, TokenizerError

log = get_logger(__name__)


ENGINES = ("auto", "gigatoken", "reference")

# Texts every gigatoken engine must tokenize exactly like the reference before it runs: control-token
# strings (which must stay text), emoji, CJK and other scripts, whitespace runs, normalization edges.
HARD_CASES: tuple[str, ...] = (
    *(f"Web text quoting {m} in the middle{m}and{m}" for m in
      ("</s>", "<s>", "<unk>", "<|im_end|>", "<|im_start|>", "<|endoftext|>", "<pad>", "[INST]", "<0x0A>")),
    "</s><|im_end|> at the very start", "a chat log: <|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "emoji 😀👍🏽 flags 🇺🇳🇯🇵 family 👨‍👩‍👧 keycap 1️⃣", "数据 中文テキスト 한국어 ひらがな", "混合English和中文",
    "Ελληνικά русский עברית العربية हिन्दी ไทย", "e\u0301 é ﬁ ① Ａ ｶ", "x\u200b\u00a0y\u3000z\ufeff",
    "  two leading", "trailing   ", "a   b\t\tc\n\n\nd", " \n \n ", "\r\n\r\nwindows\r\n", "    indented code\n\tx = 1",
    "1234567890 3.14159 1,000,000 2024-01-31", "line\x00nul\x01ctl\x7f", "\u2028\u2029\x85", "a" * 3000,
    "!!!???...,,,;;; ---___ ===", "<< >> </ /> <|", "https://example.org/a?b=c&d=e#f",
)
INVALID_CASES: tuple[str, ...] = ("lone surrogate \ud800 here", "\udfff")  # same ids or both refuse


def gigatoken_version() -> str | None:
    """The installed gigatoken's version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gigatoken")
    except PackageNotFoundError:
        return None


def gigatoken_of(tok: Tokenizer) -> Any:
    """The same tokenizer loaded in gigatoken; :class:`TokenizerError` says why it cannot be."""
    if gigatoken_version() is None:
        raise TokenizerError("gigatoken is not installed (pip install gigatoken)")
    import gigatoken

    try:
        if isinstance(tok, SentencePieceTokenizer):
            return gigatoken.Tokenizer.from_sentencepiece(tok.model_file)
        if isinstance(tok, HFTokenizer):
            return gigatoken.Tokenizer(tok.hf)
        if isinstance(tok, TikTokenizer):
            return _gigatoken_tiktoken(tok)
    except Exception as err:  # gigatoken raises RuntimeError/ValueError with a multi-line text
        raise TokenizerError(f"gigatoken cannot load {tok.name}: {str(err).splitlines()[0]}") from None
    raise TokenizerError(f"gigatoken has no equivalent of {type(tok).__name__}")


def _gigatoken_tiktoken(tok: TikTokenizer) -> Any:
    """gigatoken's copy of a TikTokenizer: its ranks as a ``.tiktoken`` file, the split pattern by name."""
    import base64
    import tempfile

    import gigatoken

    if tok.pattern != "v2":  # gigatoken names no scheme with pattern v1's split
        raise TokenizerError(f"gigatoken has no pretokenizer for TikTokenizer pattern {tok.pattern}")
    with tempfile.TemporaryDirectory() as d:
        ranks = Path(d) / "ranks.tiktoken"
        ranks.write_text("".join(f"{base64.b64encode(b).decode()} {r}\n" for b, r in tok.ranks.items()))
        return gigatoken.Tokenizer.from_tiktoken(ranks, pretokenizer="nemotron")  # the same split as v2


_REFUSALS = (TypeError, ValueError, RuntimeError)  # how gigatoken refuses an input


class GigatokenTokenizer(Tokenizer):
    """``reference``'s ids computed by gigatoken; texts holding a control-token string go to the reference.

    gigatoken matches special tokens inside text (a literal ``</s>`` would become EOS); the reference
    never does, so such texts (rare in corpora) are tokenized by the reference itself.
    """

    engine = "gigatoken"

    def __init__(self, reference: Tokenizer, fast: Any = None) -> None:
        self._reference: Tokenizer | None = reference
        self._reference_state = b""
        self.name, self.vocab_size = reference.name, reference.vocab_size
        self.bos_id, self.eos_id = reference.bos_id, reference.eos_id
        self.fast = fast if fast is not None else gigatoken_of(reference)
        # gigatoken numbers a TikTokenizer's ranks from 0; Megatron-LM puts its special ids first.
        self.offset = reference.num_special_tokens if isinstance(reference, TikTokenizer) else 0
        pieces = reference.vocabulary()
        self.markers = tuple(sorted({pieces[i] for i in reference.special_ids if 0 <= i < len(pieces) and pieces[i]}))

    @property
    def reference(self) -> Tokenizer:
        """The reference tokenizer (a worker process loads it only when it first needs it: it rarely does)."""
        if self._reference is None:
            self._reference = pickle.loads(self._reference_state)
        return self._reference

    @cached_property
    def _marker_search(self) -> Any:
        """``text -> bool``: whether a text holds a marker (plain scans for a few, one regex for many)."""
        markers = self.markers
        if len(markers) <= 8:
            return lambda text: any(m in text for m in markers)
        pattern = re.compile("|".join(map(re.escape, sorted(markers, key=len, reverse=True))))
        return lambda text: pattern.search(text) is not None

    def _routed(self, texts: list[str]) -> list[int]:
        """Indices of the texts the reference tokenizes (they hold a control-token string)."""
        found = self._marker_search
        if not self.markers or not found("\n".join(texts)):  # one scan of the whole batch first
            return []
        return [i for i, t in enumerate(texts) if found(t)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        try:
            out = self.fast.encode_batch_list(texts)
        except _REFUSALS:  # gigatoken refuses the batch (invalid Unicode): the reference decides
            return self.reference.encode_batch(texts)
        if self.offset:
            out = [[i + self.offset for i in ids] for ids in out]
        routed = self._routed(texts)
        for i, ids in zip(routed, self.reference.encode_batch([texts[i] for i in routed]), strict=True):
            out[i] = ids
        return out

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        import awkward as ak

        try:
            encoded = self.fast.encode_batch(texts)  # parallel on threads, or sequential in a worker process
        except _REFUSALS:  # gigatoken refuses the batch (invalid Unicode): the reference decides
            return self.reference.encode_flat(texts)
        lengths = np.asarray(ak.num(encoded), dtype=np.int64)
        flat = np.asarray(ak.flatten(encoded))
        if self.offset:
            flat = flat.astype(np.int64) + self.offset
        routed = self._routed(texts)
        if routed:
            rows: list[np.ndarray] = np.split(flat, np.cumsum(lengths)[:-1])
            for i, ids in zip(routed, self.reference.encode_batch([texts[i] for i in routed]), strict=True):
                rows[i] = np.asarray(ids, dtype=np.int64)
                lengths[i] = len(ids)
            flat = np.concatenate(rows) if rows else flat
        return flat, lengths

    def decode(self, ids: list[int]) -> str:
        return self.reference.decode(ids)

    @property
    def special_ids(self) -> frozenset[int]:
        return self.reference.special_ids

    def vocabulary(self) -> list[str]:
        return self.reference.vocabulary()

    @cached_property
    def vocab_hash(self) -> str:
        return self.reference.vocab_hash

    def __getstate__(self) -> dict:
        # Worker processes load the converted tokenizer.json in Rust rather than converting again.
        return {"reference": pickle.dumps(self.reference), "json": getattr(self.fast, "_hf_json", None),
                "ids": (self.name, self.vocab_size, self.bos_id, self.eos_id), "markers": self.markers,
                "offset": self.offset}

    def __setstate__(self, state: dict) -> None:
        self._reference, self._reference_state = None, state["reference"]
        self.name, self.vocab_size, self.bos_id, self.eos_id = state["ids"]
        self.markers, self.offset = state["markers"], state["offset"]
        if state["json"] is not None:
            import gigatoken

            self.fast = gigatoken.Tokenizer.from_json(state["json"])
        else:
            self.fast = gigatoken_of(self.reference)


def _first_difference(ref: Tokenizer, fast: Tokenizer, texts: list[str]) -> str | None:
    """Where ``fast`` gives other ids than ``ref`` on ``texts`` or on :data:`INVALID_CASES` (where refusing
    counts as an outcome); None if nowhere."""
    if texts:
        want = ref.encode_batch(texts)
        for text, a, b in zip(texts, want, fast.encode_batch(texts), strict=True):
            if list(a) != list(b):
                return f"other ids for {text[:60]!r}"
        flat, lengths = fast.encode_flat(texts)
        if flat.tolist() != list(itertools.chain.from_iterable(want)) or lengths.tolist() != list(map(len, want)):
            return "other ids from the batch encoder"
    for text in INVALID_CASES:
        outcomes = []
        for t in (ref, fast):
            try:
                outcomes.append(t.encode_batch([text]))
            except Exception:  # each library refuses invalid Unicode with its own error type
                outcomes.append(None)
        if outcomes[0] != outcomes[1]:
            return f"other ids or errors for invalid Unicode {text!r}"
    return None


def select_engine(tok: Tokenizer, engine: str = "auto", sample: list[str] | None = None) -> Tokenizer:
    """``tok`` itself (the reference) or a :class:`GigatokenTokenizer` giving the same ids, per ``engine``.

    ``auto`` picks gigatoken when it loads ``tok`` and matches it on ``sample`` plus :data:`HARD_CASES`,
    else the reference with one log line saying why. ``gigatoken`` insists: it raises
    :class:`TokenizerError` where ``auto`` would fall back (the reference decides the ids either way).
    """
    if engine not in ENGINES:
        raise TokenizerError(f"tokenizer engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    base = tok.reference if isinstance(tok, GigatokenTokenizer) else tok
    if engine == "reference":
        return base
    loaded = base.__dict__.get("_gigatoken")  # loaded once per reference tokenizer (or why it cannot be)
    if loaded is None:
        try:
            loaded = GigatokenTokenizer(base)
        except TokenizerError as err:
            loaded = str(err)
        base.__dict__["_gigatoken"] = loaded
    fast = loaded if isinstance(loaded, GigatokenTokenizer) else None
    why = _first_difference(base, fast, list(HARD_CASES) + list(sample or [])) if fast else str(loaded)
    if why is None:
        log.info("tokenizer engine: gigatoken %s (same ids as %s on %d sample texts)", gigatoken_version(),
                 base.name, len(HARD_CASES) + len(sample or []))
        return fast
    if engine == "gigatoken":
        raise TokenizerError(f"--tokenizer-engine gigatoken: {why}; use --tokenizer-engine auto or reference")
    log.info("tokenizer engine: reference (%s)", why)
    return base
