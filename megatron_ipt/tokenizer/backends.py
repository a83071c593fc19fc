"""The tokenizer backends: SentencePiece, Hugging Face (directory, GGUF, GPT-2 BPE files), Megatron-LM's
``NullTokenizer`` and ``TikTokenizer``. Each ``encode`` keeps control-token strings in text as text."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from megatron_ipt.tokenizer.base import Tokenizer, TokenizerError


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
