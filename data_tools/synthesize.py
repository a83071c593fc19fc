"""Synthesize instruction-response pairs for raw corpora, M rounds per work unit (resumable).

Usage::

    python -m data_tools.synthesize [--config synth.yaml] --input corpus/ --output-dir out/ \\
        --engine.model=synthesizer/ [--engine.kind=auto|hf|vllm] [--rounds=3] [--key.sub=value ...]

Inputs are JSONL / JSONL.gz / parquet files of ``{id, text}`` records (folders and globs allowed).
They are cut into work units of ``--unit_texts`` lines (rows), whatever the file sizes; each unit
becomes ``OUTPUT_DIR/<name>.jsonl`` (``<stem>`` for a file that is one unit, else ``<stem>.<k>``)
with records ``{id, text, pairs, round, linked, slot}`` and ``OUTPUT_DIR/<name>.stats.json``;
``OUTPUT_DIR/units.plan`` lists the units in merge order. Rerunning skips finished units (a torn
output is redone) and resumes a killed one from its last checkpointed batch; finished units over
inputs edited since, or made with other settings, are refused (``--start_over`` redoes them). In a
Slurm array, task i of n takes units i, i+n, ...: ``--task_index`` / ``--num_tasks`` default to the
array task (counted from the array's minimum task id) and the array's task count; any array size
gives the same outputs.

``--dry-run`` plans instead: texts and tokens per unit, the GPU-hours and device-hours per 1B raw
tokens at ``--plan_tokens_per_s`` (or measured on a sample, bounded by ``--plan_sample_seconds``),
the array size and the ``sbatch`` line to submit (every setting that is not the default on it,
``--time`` from ``--plan_hours_per_task``). Each unit's stats carry its measured ``cost``.

Lists take one or more values (``--input a.jsonl b/``) or YAML (``--stop='["<CON>"]'``).
"""

from __future__ import annotations

import json
import sys

from megatron_ipt.config import run_cli
from megatron_ipt.data.inputs import DataError
from megatron_ipt.log import setup_logging
from megatron_ipt.synth.config import SynthesizeConfig


def run(cfg: SynthesizeConfig) -> int:
    from megatron_ipt.synth.plan import plan_text
    from megatron_ipt.synth.synthesize import synthesize

    setup_logging()
    result = synthesize(cfg)
    if result.plan is not None:
        print(plan_text(result.plan))
        return 0
    totals = {k: sum(r.get(k, 0) for r in result.units.values()) for k in ("texts", "pairs", "degenerate_outputs")}
    print(json.dumps({"units": len(result.units), **totals}))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(SynthesizeConfig, argv, run, __doc__, errors=(DataError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
