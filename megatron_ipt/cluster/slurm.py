"""The Slurm stage scripts' policy, in Python: ``python -m megatron_ipt.cluster.slurm --train-config C
--job-dir J --run-dir R [-- OVERRIDES...]`` (also the ``ipt-slurm-stage`` command).

``slurm/common.sh`` keeps only what must run in the batch shell before Python (finding the checkout,
signal forwarding, srun, requeue). What the scripts decide lives here, once: which environment
variable becomes which training-config key, and the launch config that lays a blend YAML over the
stage config. It prints the trainer's command-line arguments, one per line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from megatron_ipt import resources
from megatron_ipt.config import ConfigError, run_cli
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
    text = "# written by megatron_ipt.cluster.slurm: the stage config with the data blend over it\n"
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


@dataclass
class TrainArgs:
    train_config: str = ""  # the stage's training config
    job_dir: str = ""  # this job's directory (run_dir, launch config)
    run_dir: str = ""  # the run's directory (checkpoints by default)
    overrides: list[str] = field(default_factory=list)  # trainer overrides (after --), applied last

    PASSTHROUGH: ClassVar[str] = "overrides"

    def validate(self) -> None:
        for key in ("train_config", "job_dir", "run_dir"):
            if not getattr(self, key):
                raise ConfigError(f"--{key.replace('_', '-')} is required")


def _print_train_args(args: TrainArgs) -> None:
    print("\n".join(train_args(args.train_config, args.job_dir, args.run_dir, os.environ, args.overrides)))


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(TrainArgs, argv, _print_train_args, __doc__ or "", errors=(StageError, OSError))


if __name__ == "__main__":
    sys.exit(main())
