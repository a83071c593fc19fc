"""Build instruction-augmented pre-training corpora from synthesis outputs (general or domain recipe).

Usage::

    # domain (continual pre-training): all of the domain corpus converted + general instructions 1:1
    python -m data_tools.build_corpora --recipe=domain --synthesized=synth_out/ \\
        --instructions=general_instructions.jsonl --tokenizer=mistral --output-dir=corpora/bio

    # general (from scratch): converted fraction + the rest raw + tuning data weighted 4x
    python -m data_tools.build_corpora --recipe=general --synthesized=synth_out/ --raw=raw/ \\
        --tuning=tuning.jsonl --tokenizer=mistral --output-dir=corpora/general

    # keep benchmark items out: drop pairs and instruction records sharing a 13-gram with them
    python -m data_tools.build_corpora ... --contamination.eval_sets='[evals/, mmlu.jsonl]'

Synthesized pairs pass the contamination gate (when evaluation sets are given), then a quality gate
(``--quality.*`` switches each filter); both count what they drop in the mixture report.

Writes OUTPUT_DIR/documents/*.jsonl, OUTPUT_DIR/data/<component>.bin/.idx (BOS/EOS per document),
OUTPUT_DIR/blend.yaml (``data.train`` for the trainer: ``include:`` it or copy the printed override)
and OUTPUT_DIR/mixture_report.json/.md (documents, tokens, weights, template distribution).

Lists take one or more values (``--raw a.jsonl b/``) or YAML (``--raw='[a.jsonl, b/]'``).
"""

from __future__ import annotations

import json
import sys

from megatron_ipt.config import run_cli
from megatron_ipt.corpora.recipes import CorporaConfig
from megatron_ipt.log import setup_logging


def run(cfg: CorporaConfig) -> int:
    from megatron_ipt.corpora.recipes import build_corpora, report_markdown

    setup_logging()
    report = build_corpora(cfg)
    print(report_markdown(report))
    print("train with:", report["train_override"])
    print(json.dumps({"total_tokens": report["total_tokens"], "components": len(report["components"])}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from megatron_ipt.data.inputs import DataError

    return run_cli(CorporaConfig, argv, run, __doc__, errors=(DataError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
