"""Build instruction-augmented pre-training corpora from synthesis outputs (general or domain recipe).

Usage::

    # domain (continual pre-training): all of the domain corpus converted + general instructions 1:1
    python -m data_tools.build_corpora --recipe=domain --synthesized=synth_out/ \\
        --instructions=general_instructions.jsonl --tokenizer=mistral --output-dir=corpora/bio

    # general (from scratch): converted fraction + the rest raw + tuning data weighted 4x
    python -m data_tools.build_corpora --recipe=general --synthesized=synth_out/ --raw=raw/ \\
        --tuning=tuning.jsonl --tokenizer=mistral --output-dir=corpora/general

Writes OUTPUT_DIR/documents/*.jsonl, OUTPUT_DIR/data/<component>.bin/.idx (BOS/EOS per document),
OUTPUT_DIR/blend.yaml (``data.train`` for the trainer: ``include:`` it or copy the printed override)
and OUTPUT_DIR/mixture_report.json/.md (documents, tokens, weights, template distribution).

Settings (``--name=value``; lists as YAML, e.g. ``--raw='[a.jsonl, b/]'``; ``--config FILE`` for YAML):
"""

from __future__ import annotations

import json
import sys

from megatron_ipt.config import ConfigError, config_from_argv, config_help
from megatron_ipt.corpora.recipes import CorporaConfig
from megatron_ipt.log import setup_logging


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__ + config_help(CorporaConfig))
        return 0
    setup_logging()
    from megatron_ipt.corpora.recipes import build_corpora, report_markdown
    from megatron_ipt.data.readers import DataError

    try:
        report = build_corpora(config_from_argv(CorporaConfig, argv))
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report_markdown(report))
    print("train with:", report["train_override"])
    print(json.dumps({"total_tokens": report["total_tokens"], "components": len(report["components"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
