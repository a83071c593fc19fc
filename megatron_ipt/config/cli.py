"""The house command line around a tool's body: ``--help``, parse, run; bad input is one line and exit 2."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import TypeVar

from megatron_ipt.config.error import ConfigError
from megatron_ipt.config.grammar import _positional
from megatron_ipt.config.help import config_help, config_keys
from megatron_ipt.config.loading import config_from_argv

T = TypeVar("T")


def cli_help(cls: type, doc: str) -> str:
    """``--help`` text: the tool's docstring, the grammar, and every key with its description."""
    aliases: dict[str, list[str]] = {}
    for alias, target in getattr(cls, "ALIASES", {}).items():
        aliases.setdefault(target, []).append("--" + alias.replace("_", "-"))
    lines = [doc.rstrip(), "",
             "Settings: --key=value or --key value (dotted for sections, '-' and '_' alike); booleans as",
             "--flag, --flag=true|false or --no-flag; list keys take one or more values; --config FILE",
             "reads a YAML file first, then the command line applies on top."]
    positional = _positional(cls)
    if positional:
        lines.append(f"Bare arguments fill {', '.join('--' + p for p in positional)} in that order.")
    lines.append("")
    body = config_help(cls).splitlines()
    keys = config_keys(cls)
    for k, line in zip(keys, body, strict=True):
        extra = aliases.get(k.key)
        lines.append(f"{line}  [also {', '.join(extra)}]" if extra else line)
    for target, names in aliases.items():
        if "=" in target:
            lines.append(f"  {', '.join(names)}  is --{target}")
    return "\n".join(lines)


def run_cli(
    cls: type[T],
    argv: Sequence[str] | None,
    body: typing.Callable[[T], int | None],
    doc: str,
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """The house command line around ``body``: ``--help``, parse, run; every bad input is one line on
    stderr and exit status 2."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(cli_help(cls, doc))
        return 0
    try:
        cfg = config_from_argv(cls, argv)
        status = body(cfg)
    except (ConfigError, *errors) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0 if status is None else status


def _one_line(err: BaseException) -> str:
    text = str(err) or err.__class__.__name__
    if isinstance(err, KeyError) and text.startswith("'"):
        text = text.strip("'\"")
    return " ".join(text.split())
