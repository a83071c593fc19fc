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

import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from megatron_ipt.config import ConfigError, run_cli
from megatron_ipt.io import OutputRefused, check_output_file
from megatron_ipt.log import get_logger, setup_logging
from megatron_ipt.tuning.collections import FORMATS, read_examples
from megatron_ipt.tuning.example import ConvertError, ConvertStats, Example
from megatron_ipt.tuning.tuning_data import TuningDataOptions, build_tuning_data

log = get_logger(__name__)


@dataclass
class BuildSynthesizerDataArgs:
    # Input files or folders: collection root/dataset folder/shard, SQuAD .json, JSONL, or MEDLINE
    # .xml(.gz) file/folder. Omit with --format pubmed for the PubMed files shipped here.
    input: list[str] = field(default_factory=list)
    format: str = "auto"  # input format (auto: detect per input)
    output_prefix: str = ""  # output prefix OUT (OUT_train, OUT_heldout, ...)
    tokenizer: str = ""  # 'mistral', a SentencePiece .model, an HF tokenizer directory, or a .gguf
    max_length: int = 4096  # tokens per training document
    held_out: float = 0.05  # share of examples held out
    markers: Literal["escape", "reject"] = "escape"  # format markers found in user text: escape them or reject the example
    dataset: str | None = None  # dataset name for inputs that carry none (SQuAD, JSONL without 'dataset'); default file stem
    # Pad documents to --max-length with loss-free EOS, which keeps every training sample one whole
    # document when the trainer's data.seq_len equals --max-length (--no-pad: do not).
    pad: bool = True
    limit: int | None = None  # use at most this many examples per input
    seed: int = 0  # seed for mining, split and grouping
    skip_bad_records: bool = False  # skip and count bad records instead of stopping
    overwrite: bool = False  # rebuild even if a finished build is on disk

    ALIASES: ClassVar[dict[str, str]] = {"skip_bad": "skip_bad_records"}

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {self.format!r}")
        for name in ("output_prefix", "tokenizer"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if not self.input and self.format not in ("auto", "pubmed"):
            raise ConfigError(f"--format {self.format} needs --input")


def _examples(args: BuildSynthesizerDataArgs, stats: ConvertStats) -> Iterator[Example]:
    inputs = args.input or [None]
    for path in inputs:
        it = read_examples(
            path, args.format, stats, skip_bad=args.skip_bad_records, dataset=args.dataset, seed=args.seed
        )
        yield from itertools.islice(it, args.limit)


def run(args: BuildSynthesizerDataArgs) -> int:
    setup_logging()
    check_output_file(args.output_prefix)  # a folder there, or a file where a folder must be: said before any work
    opts = TuningDataOptions(
        max_length=args.max_length,
        held_out=args.held_out,
        markers=args.markers,
        seed=args.seed,
        pad=args.pad,
    )
    stats = ConvertStats()
    fingerprint = {
        "inputs": args.input,
        "format": args.format,
        "dataset": args.dataset,
        "limit": args.limit,
        "skip_bad": args.skip_bad_records,
    }
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


def main(argv: list[str] | None = None) -> int:
    return run_cli(BuildSynthesizerDataArgs, argv, run, __doc__,
                   errors=(ConvertError, OutputRefused, ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
