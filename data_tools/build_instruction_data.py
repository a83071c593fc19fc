"""Build instruction-tuning data with response-only loss from instruction records.

Examples::

    # the paper's plain '{question} {response}' with BOS/EOS (base models), system prompts dropped
    python -m data_tools.build_instruction_data --input openorca.jsonl alpaca.json dolly/ \\
        --tokenizer mistral --output-prefix data/instructions

    # the tokenizer's own chat template, system prompts kept
    python -m data_tools.build_instruction_data --input chats.jsonl --tokenizer runs/cpt/hf \\
        --output-prefix data/chat --template.kind=chat --keep-system

    # a template from a config file (template: {user: "Q: {content}\\n", assistant: "A: {content}"})
    python -m data_tools.build_instruction_data --config my_template.yaml --input ... --output-prefix ...

Reads every format the domain recipe reads: OpenOrca (system_prompt, question, response), Alpaca
(instruction, input, output), Dolly (instruction, context, response), ShareGPT ``conversations``
and chat ``messages`` (loss on every assistant turn). Writes PREFIX_text_document.{bin,idx}, its
``_lossmask`` twin (prompt 0, response and its EOS 1), the rendered
PREFIX_text_document.segments.jsonl and PREFIX_text_document.summary.json (counts, every skip by
reason, the tokenizer fingerprint, the template and its hash). Train with ``--data.train=PREFIX_text_document``.
"""

from __future__ import annotations

import json
import sys

from megatron_ipt.config import run_cli
from megatron_ipt.corpora.instruction_data import InstructionDataConfig
from megatron_ipt.log import setup_logging


def run(cfg: InstructionDataConfig) -> int:
    from megatron_ipt.corpora.instruction_data import build_instruction_data

    setup_logging()
    summary = build_instruction_data(cfg)
    ins = summary["instructions"]
    print(json.dumps({"prefix": summary["prefix"], "lossmask_prefix": summary["lossmask_prefix"],
                      "records": ins["records"], "written": ins["written"], "skipped": ins["skipped"],
                      "turns": ins["counts"].get("turns", 0), "tokens": summary["tokens"],
                      "loss_tokens": ins["loss_tokens"], "template_hash": ins["template_hash"]}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    from megatron_ipt.data.inputs import DataError
    from megatron_ipt.tokenizer import TokenizerError

    return run_cli(InstructionDataConfig, argv, run, __doc__, errors=(DataError, TokenizerError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
