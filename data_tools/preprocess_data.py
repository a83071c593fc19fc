"""Tokenize corpora into Megatron-format indexed datasets (``OUT_text_document.bin/.idx``).

Example::

    python -m data_tools.preprocess_data --input corpus/ --output-prefix data/pubmed \\
        --tokenizer mistral --workers 2 --append-eod

Inputs: .jsonl, .jsonl.gz, .parquet, directories of them, or a ``datasets`` dataset saved to disk.
Records carry a text field (``--json-keys``) or ``segments`` ([{"text", "loss"} | {"special", "loss"}]),
which also writes the per-token loss mask ``OUT_text_document_lossmask``. A summary JSON lands next
to the output; an interrupted run resumes when rerun with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_ipt.data.indexed import IndexedDatasetError
from megatron_ipt.data.preprocess import preprocess
from megatron_ipt.data.readers import DataError
from megatron_ipt.log import setup_logging
from megatron_ipt.tokenizer import TokenizerError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_tools.preprocess_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="files or directories (.jsonl, .jsonl.gz, .parquet, saved datasets)",
    )
    p.add_argument("--output-prefix", required=True, help="OUT: writes OUT_{key}_document.bin/.idx")
    p.add_argument(
        "--tokenizer", required=True, help="'mistral', a SentencePiece .model, an HF directory or a .gguf"
    )
    p.add_argument("--json-keys", default="text", help="field holding the text (default: text)")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes (0: in this process)")
    p.add_argument("--batch-size", type=int, default=1000, help="records per worker batch")
    p.add_argument("--append-eod", action="store_true", help="append EOS to every document (loss 1)")
    p.add_argument("--prepend-bos", action="store_true", help="prepend BOS to every document (loss 0)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of failing")
    p.add_argument(
        "--overwrite", action="store_true", help="redo even if a complete or partial output exists"
    )
    p.add_argument(
        "--checkpoint-seconds", type=float, default=5.0, help="seconds between resumable checkpoints (default 5)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    keys = args.json_keys.split(",") if isinstance(args.json_keys, str) else args.json_keys
    if len(keys) != 1:
        print("error: one --json-keys field per run", file=sys.stderr)
        return 2
    try:
        summary = preprocess(
            args.input,
            args.output_prefix,
            args.tokenizer,
            json_key=keys[0],
            workers=args.workers,
            append_eod=args.append_eod,
            prepend_bos=args.prepend_bos,
            skip_bad=args.skip_bad,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            checkpoint_s=args.checkpoint_seconds,
            overwrite=args.overwrite,
        )
    except (DataError, IndexedDatasetError, TokenizerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        json.dumps({k: summary[k] for k in ("prefix", "read", "written", "skipped", "tokens", "elapsed_s")})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
