"""Build the instruction synthesizer's tuning data: convert, clean, split, group by dataset, tokenize.

Examples::

    python -m data_tools.build_synthesizer_data --input collection/ --output-prefix data/synth \\
        --tokenizer mistral --max-length 4096 --held-out 0.05
    python -m data_tools.build_synthesizer_data --format pubmed --output-prefix data/pubmed_tasks \\
        --tokenizer path/to/hf_dir --max-length 2048        # no --input: the PubMed files shipped here

Writes OUT_train / OUT_heldout indexed datasets with their ``_lossmask`` twins,
OUT_heldout.examples.jsonl and OUT.summary.json (counts and every skip by reason).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator

from megatron_ipt.log import get_logger, setup_logging
from megatron_ipt.tuning.collections import FORMATS, read_examples
from megatron_ipt.tuning.example import ConvertError, ConvertStats, Example
from megatron_ipt.tuning.tuning_data import TuningDataOptions, build_tuning_data

log = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_tools.build_synthesizer_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH",
        help="input file or folder (repeatable). Collection root/dataset folder/shard, SQuAD .json, "
        "JSONL, or MEDLINE .xml(.gz) file/folder. Omit with --format pubmed for the shipped files.",
    )
    p.add_argument(
        "--format", choices=FORMATS, default="auto", help="input format (default: detect per input)"
    )
    p.add_argument("--output-prefix", required=True, help="output prefix OUT (OUT_train, OUT_heldout, ...)")
    p.add_argument(
        "--tokenizer",
        required=True,
        help="'mistral', a SentencePiece .model, an HF tokenizer directory, or a .gguf",
    )
    p.add_argument("--max-length", type=int, default=4096, help="tokens per training document (default 4096)")
    p.add_argument("--held-out", type=float, default=0.05, help="share of examples held out (default 0.05)")
    p.add_argument(
        "--markers",
        choices=("escape", "reject"),
        default="escape",
        help="format markers found in user text: escape them or reject the example (default escape)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="dataset name for inputs that carry none (SQuAD, JSONL without 'dataset'); default file stem",
    )
    p.add_argument(
        "--no-pad",
        action="store_true",
        help="do not pad documents to --max-length (padding, with loss-free EOS, keeps every training "
        "sample one whole document when the trainer's data.seq_len equals --max-length)",
    )
    p.add_argument("--limit", type=int, default=None, help="use at most this many examples per input")
    p.add_argument("--seed", type=int, default=0, help="seed for mining, split and grouping (default 0)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if a finished build is on disk")
    return p


def _examples(args: argparse.Namespace, stats: ConvertStats) -> Iterator[Example]:
    inputs = args.input or [None]
    for path in inputs:
        it = read_examples(
            path, args.format, stats, skip_bad=args.skip_bad, dataset=args.dataset, seed=args.seed
        )
        yield from itertools.islice(it, args.limit)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if not args.input and args.format not in ("auto", "pubmed"):
        print(f"error: --format {args.format} needs --input", file=sys.stderr)
        return 2
    opts = TuningDataOptions(
        max_length=args.max_length,
        held_out=args.held_out,
        markers=args.markers,
        seed=args.seed,
        pad=not args.no_pad,
    )
    stats = ConvertStats()
    fingerprint = {
        "inputs": args.input,
        "format": args.format,
        "dataset": args.dataset,
        "limit": args.limit,
        "skip_bad": args.skip_bad,
    }
    try:
        opts.validate()
        summary = build_tuning_data(
            _examples(args, stats),
            args.output_prefix,
            args.tokenizer,
            opts,
            convert_stats=stats,
            overwrite=args.overwrite,
            fingerprint=fingerprint,
        )
    except (ConvertError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    s = summary["stats"]
    print(
        json.dumps(
            {
                "splits": summary["splits"],
                "skipped": s["skipped"],
                "pairs_dropped": s["pairs_dropped"],
                "contexts_truncated": s["contexts_truncated"],
                "markers_escaped": s["markers_escaped"],
                "convert_skipped": summary.get("convert", {}).get("skipped", {}),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
