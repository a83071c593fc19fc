"""Evaluate an instruction synthesizer on the held-out split written by build_synthesizer_data.

Examples::

    python -m data_tools.evaluate_synthesizer --model runs/tune_synthesizer/hf \\
        --input data/synth --max-examples 100 --output runs/tune_synthesizer/eval.json

Reports the held-out pair-token loss (``OUT_heldout`` + its ``_lossmask`` twin) and, with a
generation engine, the share of free generations that parse into pairs and the response exact
match / token F1 for the gold instructions (``OUT_heldout.examples.jsonl``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from megatron_ipt.config import ConfigError, run_cli
from megatron_ipt.data.inputs import DataError
from megatron_ipt.data.readers import read_jsonl_lines
from megatron_ipt.io import atomic_write_json
from megatron_ipt.log import get_logger, setup_logging
from megatron_ipt.synth.engines import EngineConfig
from megatron_ipt.tuning.example import Example
from megatron_ipt.tuning.tuning_data import heldout_examples_path, split_prefix

log = get_logger(__name__)


@dataclass
class EvaluateSynthesizerArgs:
    model: str = ""  # HF model directory of the synthesizer
    input: str = ""  # the --output-prefix given to build_synthesizer_data
    engine: EngineConfig = field(default_factory=EngineConfig)  # generation engine (engine.model: --model)
    max_documents: int | None = None  # held-out documents for the loss (null: all)
    max_examples: int = 100  # held-out examples to generate for
    max_new_tokens: int = 400  # tokens per free generation
    response_tokens: int = 128  # tokens per gold-instruction response
    loss: bool = True  # score the held-out pair-token loss (--no-loss: skip it)
    generation: bool = True  # score free generations and gold-instruction responses (--no-generation: skip)
    output: str | None = None  # write the report JSON here (atomically)

    ALIASES: ClassVar[dict[str, str]] = {"data_prefix": "input", "engine": "engine.kind", "tokenizer": "engine.tokenizer",
                                         "max_model_len": "engine.max_model_len"}

    def validate(self) -> None:
        for name in ("model", "input"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required")
        if not Path(self.model).is_dir():
            raise ConfigError(f"--model {self.model}: not a model directory")


def example_of(rec: dict, where: str) -> Example:
    """One held-out example record, or a :class:`DataError` naming its line and missing field."""
    for key in ("dataset", "context", "pairs"):
        if key not in rec:
            raise DataError("missing (written by build_synthesizer_data)", where=where, field=key)
    return Example.from_dict(rec)


def run(args: EvaluateSynthesizerArgs) -> int:
    setup_logging()
    report: dict = {"model": args.model, "data_prefix": args.input}
    if args.loss:
        from megatron_ipt.tuning.evaluate import heldout_pair_loss

        report["loss"] = heldout_pair_loss(args.model, split_prefix(args.input, "heldout"), args.max_documents)
        log.info("held-out pair loss %.4f", report["loss"]["pair_loss"])
    if args.generation:
        from dataclasses import replace

        from megatron_ipt.tuning.evaluate import generation_scores

        path = heldout_examples_path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (built by build_synthesizer_data)")
        examples = [example_of(rec, where) for rec, where in read_jsonl_lines(path, 0, args.max_examples)]
        engine = replace(args.engine, model=args.engine.model or args.model).build()
        report["generation"] = generation_scores(engine, examples, args.max_new_tokens, args.response_tokens)
    print(json.dumps(report, indent=2))
    if args.output:
        atomic_write_json(Path(args.output), report)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(EvaluateSynthesizerArgs, argv, run, __doc__, errors=(DataError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
