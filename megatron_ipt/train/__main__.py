"""``python -m megatron_ipt.train --config X.yaml [--dotted.key=value ...]`` (under torchrun/srun/deepspeed)."""

from __future__ import annotations

import sys

from megatron_ipt.config import run_cli
from megatron_ipt.data.indexed import IndexedDatasetError
from megatron_ipt.model.build import ModelBuildError
from megatron_ipt.tokenizer import TokenizerError
from megatron_ipt.train.config import TrainConfig

USAGE = """usage: python -m megatron_ipt.train --config CONFIG.yaml [--section.key=value ...]

Pre-train a Mistral/Llama model with DeepSpeed ZeRO on packed, blended indexed datasets.
Launch one process per rank with torchrun, deepspeed or srun; a bare python runs one rank.

Common overrides:
  --data.train=PREFIX | "0.7 A 0.3 B"   training blend (indexed-dataset prefixes)
  --data.valid=PREFIX                   held-out blend for periodic loss/perplexity
  --run_dir=DIR --checkpoint.dir=DIR    outputs (metrics.jsonl, tensorboard/, checkpoints)
  --steps=N --global_batch_size=N --micro_batch_size=N --ds_config=ds_configs/zero3.json
  --checkpoint.resume=auto|none|DIR     resume from the latest checkpoint (default auto)
  --export.dir=DIR                      write an HF model directory at the end
Exit status 75 means "preempted: checkpoint saved, requeue me".
"""


def report_crashes() -> None:
    """On SIGBUS/SIGSEGV print the Python stack of every thread before the process dies. A dataset
    ``.bin`` truncated in place under a run is read through a memory map, and the kernel answers
    with SIGBUS, which no Python handler can turn into an error: the stack at least shows the read
    (the data loader's frames); the rerun then names the file (its ``.idx`` no longer fits)."""
    import faulthandler

    faulthandler.enable(all_threads=True)


def main(argv: list[str] | None = None) -> int:
    from megatron_ipt.train.checkpoint import CheckpointError
    from megatron_ipt.train.trainer import run

    argv = (sys.argv[1:] if argv is None else argv) or ["--help"]
    # Bad input is one clear line instead of a traceback (it happens before any compute).
    return run_cli(TrainConfig, argv, run, USAGE,
                   errors=(CheckpointError, ModelBuildError, TokenizerError, IndexedDatasetError))


def _exit_now(status: int) -> None:
    """Exit without the interpreter's teardown, which takes seconds after DeepSpeed (every file is
    already closed and every checkpoint written by then)."""
    import logging
    import os

    from megatron_ipt.train.preemption import record_exit_status

    record_exit_status(status)  # read by `python -m megatron_ipt.cluster.launch run` (torchrun keeps only 0/1)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def console() -> None:
    """The ``ipt-train`` console command (and ``python -m megatron_ipt.train``): a process of its own."""
    report_crashes()
    _exit_now(main())


if __name__ == "__main__":
    console()
