"""Concatenate Megatron indexed datasets (and their loss-mask twins) into one prefix.

Example::

    python -m data_tools.merge_datasets --input data/a_text_document data/b_text_document \\
        --output-prefix data/ab_text_document
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from megatron_ipt.config import ConfigError, run_cli
from megatron_ipt.data.indexed import IndexedDatasetError


@dataclass
class MergeArgs:
    input: list[str] = field(default_factory=list)  # dataset prefixes (PREFIX.bin/.idx), merged in order
    output_prefix: str = ""  # prefix of the merged dataset

    def validate(self) -> None:
        for name in ("input", "output_prefix"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")


def run(args: MergeArgs) -> int:
    from megatron_ipt.data.merge import merge_datasets
    from megatron_ipt.log import setup_logging

    setup_logging()
    print(json.dumps(merge_datasets(args.input, args.output_prefix)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(MergeArgs, argv, run, __doc__, errors=(IndexedDatasetError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
