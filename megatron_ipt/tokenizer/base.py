"""The common surface of every tokenizer backend, and the fingerprint that identifies one.

``fingerprint()`` identifies a tokenizer by what decides the ids (its vocabulary and special ids),
not by how it was named: every dataset writer records it and the trainer compares it.
"""

from __future__ import annotations

import hashlib
import itertools
from functools import cached_property

import numpy as np


class TokenizerError(ValueError):
    """A tokenizer spec that cannot be loaded."""


class Tokenizer:
    """Common surface of the backends: ids in, ids out, special ids, vocabulary size."""

    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    engine: str = "reference"  # which engine computes the ids (see select_engine)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of all ``texts`` in one integer array, and each text's count (for batch writers)."""
        encoded = self.encode_batch(texts)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
        return flat, lengths

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    @property
    def special_ids(self) -> frozenset[int]:
        """Control ids (BOS, EOS, unknown, chat markers): never produced by ``encode``."""
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        """Every piece, in id order."""
        raise NotImplementedError

    @cached_property
    def special_pieces(self) -> dict[str, int]:
        """Control pieces by text (``<s>``, ``<|im_start|>``): the ids a ``segments`` record may name."""
        pieces = self.vocabulary()
        return {pieces[i]: i for i in sorted(self.special_ids) if 0 <= i < len(pieces) and pieces[i]}

    @cached_property
    def vocab_hash(self) -> str:
        """Hash of the pieces in id order and of the special ids: equal means the same ids for the same pieces."""
        h = hashlib.sha256()
        for piece in self.vocabulary():
            h.update(piece.encode("utf-8", "surrogatepass") + b"\0")
        h.update(f"special={sorted(self.special_ids)}|bos={self.bos_id}|eos={self.eos_id}".encode())
        return h.hexdigest()[:16]

    def fingerprint(self) -> dict:
        """The provenance record every dataset writer stores: hash, name, size, BOS/EOS ids."""
        return {"hash": self.vocab_hash, "name": self.name, "vocab_size": self.vocab_size,
                "bos_id": self.bos_id, "eos_id": self.eos_id}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"
