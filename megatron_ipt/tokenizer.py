"""One tokenizer loader for every stage.

Accepted specs:
- ``mistral``: Mistral-7B-v0.1's own SentencePiece model, shipped inside ``mistral-common``;
- a SentencePiece ``.model`` file;
- a Hugging Face tokenizer directory (``tokenizer.json`` / ``tokenizer_config.json``);
- a ``.gguf`` file (the tokenizer embedded in a GGUF model).

``encode`` never adds BOS/EOS: callers add them explicitly where the format says so. It also never
turns user text into control ids: a literal ``</s>`` or ``<|im_end|>`` inside a document is encoded
as ordinary text (special tokens split), so web text cannot forge document ends.

``fingerprint()`` identifies a tokenizer by what decides the ids (its vocabulary and special ids),
not by how it was named: every dataset writer records it and the trainer compares it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cached_property
from pathlib import Path


class TokenizerError(ValueError):
    """A tokenizer spec that cannot be loaded."""


def mistral_model_path() -> Path:
    """Path of Mistral-7B-v0.1's ``tokenizer.model`` inside the installed ``mistral-common``."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            "tokenizer 'mistral' needs the mistral-common package: pip install mistral-common"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise TokenizerError(f"mistral-common is installed but {path} is missing")
    return path


class Tokenizer:
    """Common surface of the backends: ids in, ids out, special ids, vocabulary size."""

    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

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


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_file: Path, name: str | None = None, num_threads: int = 1) -> None:
        import sentencepiece as spm

        self.model_file = Path(model_file)
        self.name = name or str(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except Exception as err:  # sentencepiece raises bare RuntimeError/OSError
            raise TokenizerError(f"cannot load SentencePiece model {model_file}: {err}") from err
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.num_threads = num_threads

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=self.num_threads)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    @cached_property
    def special_ids(self) -> frozenset[int]:
        # SentencePiece never matches control pieces in input text: encode is immune by design.
        n = self.vocab_size
        return frozenset(i for i in range(n) if self.sp.is_control(i) or self.sp.is_unknown(i))

    def vocabulary(self) -> list[str]:
        return [self.sp.id_to_piece(i) for i in range(self.vocab_size)]

    def __getstate__(self) -> dict:
        # The C++ processor does not pickle; worker processes reload it from the file.
        return {"model_file": self.model_file, "name": self.name, "num_threads": self.num_threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_file"], state["name"], state["num_threads"])


class HFTokenizer(Tokenizer):
    def __init__(self, path: Path, gguf_file: str | None = None) -> None:
        from transformers import AutoTokenizer

        self.path = Path(path)
        self.gguf_file = gguf_file
        self.name = str(path if gguf_file is None else Path(path) / gguf_file)
        try:
            kwargs = {"gguf_file": gguf_file} if gguf_file else {}
            self.hf = AutoTokenizer.from_pretrained(str(path), **kwargs)
        except Exception as err:
            raise TokenizerError(f"cannot load Hugging Face tokenizer from {self.name}: {err}") from err
        self.vocab_size = len(self.hf)
        self.bos_id = self.hf.bos_token_id
        self.eos_id = self.hf.eos_token_id
        _ = self._fast  # switches special-token splitting on before any encode

    @cached_property
    def _fast(self):
        fast = getattr(self.hf, "backend_tokenizer", None) or getattr(self.hf, "_tokenizer", None)
        if fast is not None:
            # Special tokens in user text are split like any text (a literal <|im_end|> is not id 2).
            fast.encode_special_tokens = True
        return fast

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        fast = self._fast
        if fast is not None:
            return [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)]
        return self.hf(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    @cached_property
    def special_ids(self) -> frozenset[int]:
        ids = set(self.hf.all_special_ids)
        decoder = getattr(self.hf, "added_tokens_decoder", {}) or {}
        ids.update(i for i, tok in decoder.items() if getattr(tok, "special", False))
        return frozenset(int(i) for i in ids if i is not None)

    def vocabulary(self) -> list[str]:
        by_id = [""] * self.vocab_size
        for piece, i in self.hf.get_vocab().items():
            if 0 <= i < self.vocab_size:
                by_id[i] = piece
        return by_id

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def __getstate__(self) -> dict:
        return {"path": self.path, "gguf_file": self.gguf_file}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["gguf_file"])


def load_tokenizer(spec: str | Path, num_threads: int = 1) -> Tokenizer:
    """Load a tokenizer from ``mistral``, a ``.model`` file, a ``.gguf`` file or an HF directory."""
    spec_str = str(spec)
    if spec_str == "mistral":
        return SentencePieceTokenizer(mistral_model_path(), name="mistral", num_threads=num_threads)
    path = Path(spec_str)
    if not path.exists():
        raise TokenizerError(
            f"tokenizer {spec_str!r} not found: give 'mistral', a SentencePiece .model file, "
            "a .gguf file or a Hugging Face tokenizer directory"
        )
    if path.is_file() and path.suffix == ".model":
        return SentencePieceTokenizer(path, num_threads=num_threads)
    if path.is_file() and path.suffix == ".gguf":
        return HFTokenizer(path.parent, gguf_file=path.name)
    if path.is_dir():
        return HFTokenizer(path)
    raise TokenizerError(f"tokenizer {spec_str!r}: not a .model, .gguf or a directory")
