"""Evaluate an instruction synthesizer on the held-out split written by build_synthesizer_data.

Examples::

    python -m data_tools.evaluate_synthesizer --model runs/tune_synthesizer/hf \\
        --data-prefix data/synth --max-examples 100 --output runs/tune_synthesizer/eval.json

Reports the held-out pair-token loss (``OUT_heldout`` + its ``_lossmask`` twin) and, with a
generation engine, the share of free generations that parse into pairs and the response exact
match / token F1 for the gold instructions (``OUT_heldout.examples.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_ipt.data.readers import DataError, read_jsonl_lines
from megatron_ipt.io import atomic_write_json
from megatron_ipt.log import get_logger, setup_logging
from megatron_ipt.tuning.example import Example
from megatron_ipt.tuning.tuning_data import heldout_examples_path, split_prefix

log = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_tools.evaluate_synthesizer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="HF model directory of the synthesizer")
    p.add_argument("--data-prefix", required=True, help="the --output-prefix given to build_synthesizer_data")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the model directory's)")
    p.add_argument("--engine", choices=("auto", "hf", "vllm"), default="auto", help="generation engine")
    p.add_argument(
        "--max-documents", type=int, default=None, help="held-out documents for the loss (default all)"
    )
    p.add_argument(
        "--max-examples", type=int, default=100, help="held-out examples to generate for (default 100)"
    )
    p.add_argument("--max-new-tokens", type=int, default=400, help="tokens per free generation (default 400)")
    p.add_argument("--response-tokens", type=int, default=128, help="tokens per gold-instruction response")
    p.add_argument("--max-model-len", type=int, default=4096, help="engine context length (default 4096)")
    p.add_argument("--no-loss", action="store_true", help="skip the pair-token loss")
    p.add_argument("--no-generation", action="store_true", help="skip the generation-based scores")
    p.add_argument("--output", default=None, help="write the report JSON here (atomically)")
    return p


def example_of(rec: dict, where: str) -> Example:
    """One held-out example record, or a :class:`DataError` naming its line and missing field."""
    for key in ("dataset", "context", "pairs"):
        if key not in rec:
            raise DataError("missing (written by build_synthesizer_data)", where=where, field=key)
    return Example.from_dict(rec)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    report: dict = {"model": args.model, "data_prefix": args.data_prefix}
    if not args.no_loss:
        from megatron_ipt.tuning.evaluate import heldout_pair_loss

        report["loss"] = heldout_pair_loss(
            args.model, split_prefix(args.data_prefix, "heldout"), args.max_documents
        )
        log.info("held-out pair loss %.4f", report["loss"]["pair_loss"])
    if not args.no_generation:
        from megatron_ipt.synth.engines import EngineConfig
        from megatron_ipt.tuning.evaluate import generation_scores

        path = heldout_examples_path(args.data_prefix)
        if not path.is_file():
            print(f"error: {path} not found (built by build_synthesizer_data)", file=sys.stderr)
            return 1
        try:
            examples = [example_of(rec, where) for rec, where in read_jsonl_lines(path, 0, args.max_examples)]
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        engine = EngineConfig(kind=args.engine, model=args.model, tokenizer=args.tokenizer or "",
                              max_model_len=args.max_model_len).build()
        report["generation"] = generation_scores(engine, examples, args.max_new_tokens, args.response_tokens)
    print(json.dumps(report, indent=2))
    if args.output:
        atomic_write_json(Path(args.output), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
