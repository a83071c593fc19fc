"""Concatenate Megatron indexed datasets (and their loss-mask twins) into one prefix.

Example::

    python -m data_tools.merge_datasets --input data/a_text_document data/b_text_document \\
        --output-prefix data/ab_text_document
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_ipt.data.indexed import IndexedDatasetError
from megatron_ipt.data.merge import merge_datasets
from megatron_ipt.log import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data_tools.merge_datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input", nargs="+", required=True, help="dataset prefixes (PREFIX.bin/.idx), merged in order"
    )
    p.add_argument("--output-prefix", required=True, help="prefix of the merged dataset")
    args = p.parse_args(argv)
    setup_logging()
    try:
        summary = merge_datasets(args.input, args.output_prefix)
    except (IndexedDatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
