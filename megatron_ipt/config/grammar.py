"""The command grammar every tool takes: command-line arguments -> a (partial) override tree.

One grammar for every tool: ``--key.sub=value`` or ``--key.sub value``; ``-`` and ``_`` are the same
in key names (``--output-prefix`` is ``--output_prefix``); booleans as ``--flag``, ``--flag=true|false``
or ``--no-flag``; list keys take one or more values (``--input a b``, repeatable, or a YAML list
``--input='[a, b]'``); ``--config FILE`` reads a YAML file first. A root config class may declare
``ALIASES`` (alias key -> dotted key), ``POSITIONAL`` (the key bare arguments fill) and
``PASSTHROUGH`` (a list key that takes every argument after a bare ``--`` unparsed, for a tool that
hands another tool its command line).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml

from megatron_ipt.config.error import ConfigError
from megatron_ipt.config.help import config_keys

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _norm_key(key: str) -> str:
    return ".".join(part.replace("-", "_") for part in key.split("."))


def _key_hint(cls: type, key: str) -> tuple[Any, bool]:
    """The type hint of dotted ``key`` in the tree ``cls`` and whether the key exists."""
    node: Any = cls
    hint: Any = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            return hint, hint is Any
        fields = {f.name: f for f in dataclasses.fields(node) if f.init}
        if part not in fields:
            return None, False
        hint = typing.get_type_hints(node)[part]
        node = hint if dataclasses.is_dataclass(hint) else _dataclass_default(fields[part])
    return hint, True


def _dataclass_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return type(value) if dataclasses.is_dataclass(value) else None
    return None


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _is_bool(hint: Any) -> bool:
    return any(h is bool for h in _members(hint))


def _list_item(hint: Any) -> Any | None:
    """The item type when ``hint`` accepts a list (``list[str] | str`` and ``tuple[str, ...]`` included), else None."""
    for h in _members(hint):
        args = typing.get_args(h)
        if typing.get_origin(h) is list:
            return args[0] if args else Any
        if typing.get_origin(h) is tuple and len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _parse_value(raw: str, hint: Any, key: str) -> Any:
    """A command-line string as a value for ``hint``: strings stay strings, the rest is read as YAML."""
    members = _members(hint)
    if type(None) in members and raw in ("null", "~", "None"):
        return None
    if _is_bool(hint) and all(h in (bool, type(None)) for h in members):
        low = raw.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(f"{key}: expected true/false, got {raw!r}")
    if str in members and not any(typing.get_origin(h) in (list, tuple, dict) for h in members):
        return raw
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--{key}: cannot read {raw!r} as a value ({err.__class__.__name__})") from None


def _unknown_key(cls: type, key: str) -> ConfigError:
    import difflib

    keys = [k.key for k in config_keys(cls)] + list(getattr(cls, "ALIASES", {}))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    hint = f" (did you mean --{close[0]}?)" if close else " (--help lists every key)"
    top = key.split(".")[0]
    node_hint, exists = _key_hint(cls, top)
    if exists and "." in key and dataclasses.is_dataclass(node_hint):
        valid = ", ".join(f.name for f in dataclasses.fields(node_hint))
        return ConfigError(f"unknown config key {key} (valid keys here: {valid})")
    return ConfigError(f"unknown config key {key}{hint}")


def _positional(cls: type) -> tuple[str, ...]:
    names = getattr(cls, "POSITIONAL", ())
    return (names,) if isinstance(names, str) else tuple(names)


def _values_after(args: Sequence[str], i: int, key: str, raw: str | None, hint: Any,
                  item: Any | None) -> tuple[list[str], int]:
    """The raw values of ``--key`` (its ``=value``, or the arguments from ``i`` on) and the next index."""
    if raw is not None:
        return [raw], i
    if _is_bool(hint) and item is None:
        if i < len(args) and args[i].lower() in (*_TRUE, *_FALSE):
            return [args[i]], i + 1
        return ["true"], i
    if item is not None:
        values = []
        while i < len(args) and not args[i].startswith("--"):
            values.append(args[i])
            i += 1
        if not values:
            raise ConfigError(f"--{key} needs one or more values")
        return values, i
    if i >= len(args):
        raise ConfigError(f"override --{key} has no value")
    return [args[i]], i + 1


def parse_argv(cls: type, args: Sequence[str]) -> dict[str, Any]:
    """Command-line arguments in the house grammar -> a (partial) tree for ``cls``."""
    aliases = {_norm_key(k): v for k, v in getattr(cls, "ALIASES", {}).items()}
    positional = _positional(cls)
    passthrough = getattr(cls, "PASSTHROUGH", None)
    flat: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--" and passthrough:
            flat[passthrough] = list(args[i:])
            break
        if not arg.startswith("--") or arg == "--":
            if not positional or arg == "--":
                raise ConfigError(f"override must look like --key.sub=value, got {arg!r}")
            key, raw, values = positional[0], None, [arg]
            if _list_item(_key_hint(cls, key)[0]) is None:
                positional = positional[1:]
        else:
            name, eq, raw_value = arg[2:].partition("=")
            raw = raw_value if eq else None
            key = _norm_key(name)
            values = None
        key = aliases.get(key, key)
        if "=" in key:  # an alias that stands for a key and its value, e.g. fp32 -> dtype=float32
            if raw is not None or values is not None:
                raise ConfigError(f"{arg.split('=')[0]} takes no value")
            key, raw = key.split("=", 1)
        hint, exists = _key_hint(cls, key)
        if not exists and key.startswith("no_") and _is_bool(_key_hint(cls, key[3:])[0]) and raw is None:
            key, raw = key[3:], "false"
            hint, exists = _key_hint(cls, key)
        if not exists:
            raise _unknown_key(cls, key)
        item = _list_item(hint)
        if values is None:
            values, i = _values_after(args, i, key, raw, hint, item)
        if item is not None:
            if len(values) == 1 and values[0].lstrip().startswith("["):
                parsed = _parse_value(values[0], list, key)
            else:
                parsed = [_parse_value(v, item, key) for v in values]
            if not isinstance(parsed, list):
                parsed = [parsed]
            previous = flat.get(key)
            flat[key] = (previous if isinstance(previous, list) else []) + parsed
        else:
            flat[key] = _parse_value(values[0], hint, key)
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree
