"""Fail fast before any process group starts: ``python -m megatron_ipt.cluster.preflight
[--require-prefix P ...] [--train-config C -- OVERRIDES...]``.

The Slurm scripts run it in the batch shell: it parses the node list, resolves the master, checks
required paths (and, with ``--train-config``, the training config and every data prefix it names)
and prints ``export MASTER_ADDR=... MASTER_PORT=...`` for the script to evaluate. It sits above the
base layer: it may import training configs, and nothing in the base layer imports it.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from megatron_ipt import resources
from megatron_ipt.config import ConfigError, run_cli
from megatron_ipt.data.blend import Blend
from megatron_ipt.dist_env import LaunchError, in_slurm_job, slurm_master
from megatron_ipt.io import OutputRefused, check_replaceable_dir


def check_train_config(config: str, overrides: Sequence[str]) -> list[str]:
    """Problems with a training config that would stop the job later: bad keys, missing inputs."""
    from megatron_ipt.config import load_config
    from megatron_ipt.train.config import TrainConfig

    try:
        cfg = load_config(TrainConfig, config, list(overrides))
    except ConfigError as err:
        return [f"training config: {err}"]
    problems = []
    for where, blend in cfg.data.blends().items():  # parsed by load_config
        problems += blend.missing(where)
    if cfg.model.init_from and not Path(cfg.model.init_from).is_dir():
        problems.append(f"model.init_from: checkpoint directory {cfg.model.init_from!r} does not exist")
    if cfg.checkpoint.resume not in ("auto", "none") and not Path(cfg.checkpoint.resume).exists():
        problems.append(f"checkpoint.resume: checkpoint {cfg.checkpoint.resume!r} does not exist")
    tok = cfg.data.tokenizer
    if ("/" in tok or tok.endswith((".model", ".gguf"))) and not Path(tok).exists():
        problems.append(f"data.tokenizer: {tok!r} does not exist (a name like 'mistral', or a path)")
    if cfg.export.dir:
        try:
            check_replaceable_dir(cfg.export.dir)
        except OutputRefused as err:
            problems.append(f"export.dir: {err}")
    if not resources.resolve(cfg.ds_config).is_file():
        problems.append(f"ds_config: DeepSpeed config {cfg.ds_config!r} does not exist")
    if not problems:
        problems += _tokenizer_problems(cfg)
    return problems


def _tokenizer_problems(cfg: object) -> list[str]:
    """Data tokenized with another tokenizer than ``data.tokenizer`` (the trainer refuses it too, later)."""
    from megatron_ipt.config import ConfigError
    from megatron_ipt.data.indexed import IndexedDatasetError
    from megatron_ipt.tokenizer import TokenizerError, load_tokenizer
    from megatron_ipt.train.data import check_data_tokenizer, check_datasets

    try:
        tokenizer = load_tokenizer(cfg.data.tokenizer)  # type: ignore[attr-defined]
        check_data_tokenizer(cfg.data, tokenizer)  # type: ignore[attr-defined]
        for where, blend in cfg.data.blends().items():  # type: ignore[attr-defined]
            check_datasets(blend, where, tokenizer.vocab_size)  # empty datasets, ids outside the vocabulary
    except TokenizerError as err:
        return [f"data.tokenizer: {err}"]
    except (ConfigError, IndexedDatasetError) as err:
        return [str(err)]
    return []


def preflight(args: PreflightArgs, environ: Mapping[str, str]) -> list[str]:
    """Check everything the step needs; return the export lines for MASTER_ADDR/MASTER_PORT."""
    problems: list[str] = []
    for path in args.require_file:
        if not Path(path).is_file():
            problems.append(f"required file {path!r} does not exist")
    for path in args.require_path:
        if not Path(path).exists():
            problems.append(f"required input {path!r} does not exist")
    for path in args.require_dir:
        if not Path(path).is_dir():
            problems.append(f"required directory {path!r} does not exist")
    for prefix in args.require_prefix:
        problems += Blend.parse(prefix, "--require-prefix").missing()
    if args.train_config:
        problems += check_train_config(args.train_config, args.overrides)
    exports: list[str] = []
    if in_slurm_job(environ):
        try:
            addr, port = slurm_master(environ)
            exports = [f"export MASTER_ADDR={shlex.quote(addr)}", f"export MASTER_PORT={port}"]
        except LaunchError as err:
            problems.append(str(err))
    if problems:
        if len(problems) == 1:  # one problem: one line
            raise LaunchError(f"preflight failed: {problems[0]}")
        raise LaunchError("preflight failed:\n  - " + "\n  - ".join(problems))
    return exports


@dataclass
class PreflightArgs:
    require_file: list[str] = field(default_factory=list)  # files that must exist
    require_dir: list[str] = field(default_factory=list)  # directories that must exist
    require_path: list[str] = field(default_factory=list)  # files or directories that must exist
    require_prefix: list[str] = field(default_factory=list)  # indexed-dataset prefixes: PREFIX.bin and .idx must exist
    train_config: str | None = None  # load this training config with the overrides after -- and check its inputs
    overrides: list[str] = field(default_factory=list)  # the training config's overrides (after --)

    PASSTHROUGH: ClassVar[str] = "overrides"

    def validate(self) -> None:
        if self.overrides and not self.train_config:
            raise ConfigError(f"training overrides without --train-config: {' '.join(self.overrides)}")


def _run(args: PreflightArgs) -> int:
    try:
        for line in preflight(args, os.environ):
            print(line)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)  # one line per problem
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PreflightArgs, argv, _run, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
