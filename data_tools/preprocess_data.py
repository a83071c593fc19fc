"""Tokenize corpora into Megatron-format indexed datasets (``OUT_text_document.bin/.idx``).

Example::

    python -m data_tools.preprocess_data --input corpus/ --output-prefix data/pubmed \\
        --tokenizer mistral --workers 2 --append-eod

Inputs: .jsonl, .jsonl.gz, .parquet, directories of them, or a ``datasets`` dataset saved to disk.
Records carry a text field (``--json-keys``) or ``segments`` ([{"text", "loss"} | {"special", "loss"}]),
which also writes the per-token loss mask ``OUT_text_document_lossmask``. A summary JSON lands next
to the output; an interrupted run resumes when rerun with the same arguments.

Megatron-LM's own command lines (``tools/preprocess_data.py`` and ``tools/preprocess_data_fast.py``)
work unchanged: ``--input``, ``--output-prefix``, ``--json-keys a b`` (one dataset per key),
``--tokenizer-type`` (it says what ``--tokenizer-model`` is, whatever the file is called; GPT2BPETokenizer
takes ``--vocab-file``/``--merge-file``, TikTokenizer ``--tiktoken-pattern``, NullTokenizer ``--vocab-size``),
``--workers``, ``--partitions``,
``--append-eod``.

Tokenizing engine: gigatoken (Rust, several times faster) wherever it gives exactly the reference
tokenizer's ids, checked on the first batch and fixed hard cases before the run; otherwise the reference
tokenizer, with one log line saying why. ``--tokenizer-engine`` forces one; the summary names the engine.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from megatron_ipt.config import ConfigError, run_cli
from megatron_ipt.data.indexed import IndexedDatasetError
from megatron_ipt.data.inputs import DataError
from megatron_ipt.log import get_logger, setup_logging
from megatron_ipt.tokenizer import ENGINES, MEGATRON_TOKENIZER_TYPES, TokenizerError

log = get_logger(__name__)


@dataclass
class PreprocessArgs:
    input: list[str] = field(default_factory=list)  # files or folders (.jsonl, .jsonl.gz, .parquet, saved datasets)
    output_prefix: str = ""  # OUT: writes OUT_{key}_document.bin/.idx
    tokenizer: str = ""  # 'mistral', 'gpt2', a SentencePiece .model, an HF directory or a .gguf (any file with --tokenizer-type)
    tokenizer_type: str = ""  # Megatron-LM's --tokenizer-type: says what --tokenizer-model is; empty: by its name
    vocab_file: str = ""  # GPT2BPETokenizer: GPT-2's vocab.json (encoder.json)
    merge_file: str = ""  # GPT2BPETokenizer: GPT-2's merges.txt (vocab.bpe)
    vocab_size: int = 0  # NullTokenizer: ids 0..vocab_size-1 (EOD is vocab_size); TikTokenizer: 0 means 131072
    tiktoken_pattern: str = "v2"  # TikTokenizer: Megatron-LM's split pattern, v1 or v2
    tiktoken_num_special_tokens: int = 1000  # TikTokenizer: special ids before the vocabulary's ranks
    tiktoken_special_tokens: list[str] = field(default_factory=list)  # TikTokenizer: named specials (default <unk> <s> </s> ...)
    tokenizer_engine: str = "auto"  # auto (gigatoken where it gives the reference's ids), gigatoken, reference
    json_keys: list[str] = field(default_factory=lambda: ["text"])  # record fields to tokenize, one dataset each
    workers: int = 1  # tokenizing processes (0: in this process)
    batch_size: int = 1000  # records per worker batch
    append_eod: bool = False  # append EOS to every document (loss 1)
    prepend_bos: bool = False  # prepend BOS to every document (loss 0)
    skip_bad_records: bool = False  # skip and count bad records instead of failing
    overwrite: bool = False  # redo even if a complete or partial output exists
    checkpoint_seconds: float = 5.0  # seconds between resumable checkpoints
    progress: bool = True  # show a progress bar
    partitions: int = 1  # Megatron-LM's input partitions: one pass here writes the dataset they merge into
    split_sentences: bool = False  # Megatron-LM's sentence-level datasets (BERT/T5): not built here
    keep_newlines: bool = False  # Megatron-LM: newlines between split sentences (only with --split-sentences)

    ALIASES: ClassVar[dict[str, str]] = {"skip_bad": "skip_bad_records", "tokenizer_model": "tokenizer",
                                         "json_key": "json_keys"}

    def validate(self) -> None:
        for name in ("input", "output_prefix"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if self.tokenizer_type and self.tokenizer_type not in MEGATRON_TOKENIZER_TYPES:
            raise ConfigError(f"--tokenizer-type {self.tokenizer_type}: not supported here (use one of "
                              f"{', '.join(MEGATRON_TOKENIZER_TYPES)}, or --tokenizer)")
        if not self.tokenizer and self.tokenizer_type not in ("GPT2BPETokenizer", "NullTokenizer", "MistralTokenizer"):
            raise ConfigError("--tokenizer (or --tokenizer-model) is required")
        if self.tokenizer_engine not in ENGINES:
            raise ConfigError(f"--tokenizer-engine must be one of {', '.join(ENGINES)}, got {self.tokenizer_engine!r}")
        if self.split_sentences:
            raise ConfigError("--split-sentences: sentence-level datasets (Megatron-LM's OUT_KEY_sentence, for "
                              "BERT/T5) are not built here; drop the flag to write whole documents (OUT_KEY_document)")
        if self.partitions < 1:
            raise ConfigError(f"--partitions must be 1 or more, got {self.partitions}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 (tokenize in this process) or more, got {self.workers}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        self.json_keys = [k for key in self.json_keys for k in re.split(r"[,\s]+", key) if k]  # "a b", "a,b"
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise ConfigError(f"--json-keys: give distinct field names, got {self.json_keys}")


def run(args: PreprocessArgs) -> int:
    from megatron_ipt.data.preprocess import preprocess
    from megatron_ipt.tokenizer import load_megatron_tokenizer, load_tokenizer

    setup_logging()
    if args.partitions > 1:
        log.info("--partitions %d: one pass writes the dataset Megatron-LM's partitions merge into; "
                 "--workers sets the parallelism", args.partitions)
    if args.tokenizer_type:
        tokenizer = load_megatron_tokenizer(
            args.tokenizer_type, args.tokenizer or None, vocab_file=args.vocab_file, merge_file=args.merge_file,
            vocab_size=args.vocab_size, tiktoken_pattern=args.tiktoken_pattern,
            tiktoken_num_special_tokens=args.tiktoken_num_special_tokens,
            tiktoken_special_tokens=args.tiktoken_special_tokens or None)
    else:
        tokenizer = load_tokenizer(args.tokenizer)
    for key in args.json_keys:
        summary = preprocess(
            args.input,
            args.output_prefix,
            tokenizer,
            json_key=key,
            workers=args.workers,
            append_eod=args.append_eod,
            prepend_bos=args.prepend_bos,
            skip_bad=args.skip_bad_records,
            batch_size=args.batch_size,
            progress=args.progress,
            checkpoint_s=args.checkpoint_seconds,
            overwrite=args.overwrite,
            tokenizer_engine=args.tokenizer_engine,
        )
        keys = ("prefix", "read", "written", "skipped", "tokens", "elapsed_s", "tokenizer_engine")
        print(json.dumps({k: summary.get(k) for k in keys}))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(PreprocessArgs, argv, run, __doc__,
                   errors=(DataError, IndexedDatasetError, TokenizerError))


if __name__ == "__main__":
    sys.exit(main())
