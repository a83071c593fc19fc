"""One tokenizer loader for every stage.

Accepted specs:
- ``mistral``: Mistral-7B-v0.1's own SentencePiece model, shipped inside ``mistral-common``;
- a SentencePiece ``.model`` file;
- a Hugging Face tokenizer directory (``tokenizer.json`` / ``tokenizer_config.json``);
- a ``.gguf`` file (the tokenizer embedded in a GGUF model).

``encode`` never adds BOS/EOS: callers add them explicitly where the format says so.
"""

from __future__ import annotations

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

    @cached_property
    def _fast(self):
        return getattr(self.hf, "backend_tokenizer", None) or getattr(self.hf, "_tokenizer", None)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        fast = self._fast
        if fast is not None:
            return [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)]
        return self.hf(texts, add_special_tokens=False)["input_ids"]

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
