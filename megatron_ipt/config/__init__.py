"""The one config system: dataclasses, YAML files and ``--dotted.key=value`` overrides.

A stage declares its settings as a tree of dataclasses. ``load_config`` fills it from a YAML
file (which may ``include:`` other YAML files, merged underneath it) and then from command-line
overrides. Unknown keys and ill-typed values are errors that name the key and where it came from.

Its parts, one job each: :mod:`.loading` (YAML, merging, coercion), :mod:`.grammar` (the command
line), :mod:`.help` (``--help``), :mod:`.cli` (a tool's command line around its body) and
:mod:`.dtype` (dtype names and the ``auto`` rule). Import the public names from here.
"""

from megatron_ipt.config.cli import cli_help, run_cli
from megatron_ipt.config.dtype import DTYPE_NAMES, DType, auto_dtype, normalize_dtype, resolve_dtype
from megatron_ipt.config.error import ConfigError
from megatron_ipt.config.help import KeyHelp, config_help, config_keys
from megatron_ipt.config.loading import config_from_argv, load_config, save_config, to_dict

__all__ = ["DTYPE_NAMES", "ConfigError", "DType", "KeyHelp", "auto_dtype", "cli_help", "config_from_argv", "config_help",
           "config_keys", "load_config", "normalize_dtype", "resolve_dtype", "run_cli", "save_config",
           "to_dict"]
