"""The Slurm stage scripts' policy, in Python: ``python -m megatron_ipt.slurm train-args ...``
(also the ``ipt-launch`` command).

``slurm/common.sh`` keeps only what must run in the batch shell before Python (finding the checkout,
signal forwarding, srun, requeue). What the scripts decide lives here, once: which environment
variable becomes which training-config key, and the launch config that lays a blend YAML over the
stage config. ``train-args`` prints the trainer's command-line arguments, one per line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from megatron_ipt import resources
from megatron_ipt.io import atomic_write_text

# Environment variable -> training config key (set variables only; command-line overrides come last).
TRAIN_ENV: dict[str, str] = {
    "DATA": "data.train",
    "VALID": "data.valid",
    "STEPS": "steps",
    "GLOBAL_BATCH": "global_batch_size",
    "MICRO_BATCH": "micro_batch_size",
    "SEQ_LEN": "data.seq_len",
    "LR": "optim.lr",
    "DS_CONFIG": "ds_config",
    "TOKENIZER": "data.tokenizer",
    "INIT_FROM": "model.init_from",
    "EXPORT_DIR": "export.dir",
    "RESUME": "checkpoint.resume",
    "TASKS": "eval.downstream_tasks",
    "DOWNSTREAM_INTERVAL": "eval.downstream_interval",
}


class StageError(ValueError):
    """A stage setting that cannot work; the message names the variable or file."""


def launch_config(config: Path, blend: Path, job_dir: Path) -> Path:
    """A config in ``job_dir`` that includes the stage config and then the blend YAML's ``data:`` over it."""
    out = job_dir / "launch_config.yaml"
    text = "# written by megatron_ipt.slurm: the stage config with the data blend over it\n"
    text += yaml.safe_dump({"include": [str(config.resolve()), str(blend.resolve())]}, sort_keys=False)
    atomic_write_text(out, text)
    return out


def train_args(config: str, job_dir: str, run_dir: str, environ: Mapping[str, str],
               overrides: Sequence[str] = ()) -> list[str]:
    """The trainer's arguments for a stage: its config (with ``BLEND`` laid over it), the run and
    checkpoint directories, the environment's overrides, then ``overrides``."""
    config_path = resources.resolve(config)
    if not config_path.is_file():
        raise StageError(f"training config '{config}' not found (relative to {Path.cwd()})")
    blend = environ.get("BLEND", "")
    if blend:
        if not Path(blend).is_file():
            raise StageError(f"BLEND file '{blend}' not found (relative to {Path.cwd()})")
        config_path = launch_config(config_path, Path(blend), Path(job_dir))
    checkpoints = environ.get("CKPT_DIR") or f"{run_dir}/checkpoints"
    args = ["--config", str(config_path), f"--run_dir={job_dir}", f"--checkpoint.dir={checkpoints}"]
    args += [f"--{key}={environ[var]}" for var, key in TRAIN_ENV.items() if environ.get(var)]
    args += list(overrides)
    for arg in args:
        if "\n" in arg:
            raise StageError(f"a training argument holds a newline: {arg!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_ipt.slurm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train-args", help="print a training stage's trainer arguments, one per line")
    train.add_argument("--config", required=True, help="the stage's training config")
    train.add_argument("--job-dir", required=True, help="this job's directory (run_dir, launch config)")
    train.add_argument("--run-dir", required=True, help="the run's directory (checkpoints by default)")
    train.add_argument("overrides", nargs="*", help="trainer overrides, after --")
    args = parser.parse_args(argv)
    try:
        lines = train_args(args.config, args.job_dir, args.run_dir, os.environ, args.overrides)
    except (StageError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
