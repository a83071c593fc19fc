"""A config tree filled from its defaults, then YAML files (which may ``include:`` others), then
command-line overrides; unknown keys and ill-typed values are errors naming the key and the file."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from megatron_ipt.config.dtype import DTYPE_NAMES
from megatron_ipt.config.error import ConfigError
from megatron_ipt.config.grammar import parse_argv

T = TypeVar("T")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: include cycle through {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = _deep_merge(merged, _read_yaml(path.parent / inc, (*seen, path)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; ".join(errors))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {hint.__name__}, got {value!r}")
        return _build(hint, value, where)
    if origin in (list, tuple, Sequence):
        return _coerce_sequence(value, origin, args, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, hint, where)


def _coerce_sequence(value: Any, origin: Any, args: tuple[Any, ...], where: str) -> list[Any] | tuple[Any, ...]:
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    item = args[0] if args else Any
    items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_scalar(value: Any, hint: Any, where: str) -> Any:
    """A YAML scalar as ``hint`` (bool, int, float, str or a Literal); other hints take it as it is."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(hint) is typing.Literal:
        args = typing.get_args(hint)
        if value not in args and isinstance(value, str) and DTYPE_NAMES.get(value) in args:
            return DTYPE_NAMES[value]
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    return value


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """A ``cls`` from its defaults with ``data`` applied over them."""
    return _merge_into(cls(), data, where)


def _merge_into(obj: Any, data: dict[str, Any], where: str) -> Any:
    """Apply a (partial) mapping on top of an existing dataclass instance."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (valid keys here: {', '.join(sorted(fields))})"
        )
    changes = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = _merge_into(current, value, path)
        else:
            changes[name] = _coerce(value, hints[name], path)
    try:
        return dataclasses.replace(obj, **changes)
    except ValueError as err:  # the dataclass's own check (its __post_init__) refuses a value
        raise ConfigError(f"{where}: {err}" if where else str(err)) from None


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] | dict[str, Any] = ()
) -> T:
    """Defaults of ``cls``, then the YAML file at ``path``, then ``overrides`` (a tree, or command-line
    arguments in the house grammar: see :func:`parse_argv`)."""
    cfg = cls()
    if path is not None:
        from megatron_ipt.resources import resolve

        try:
            cfg = _merge_into(cfg, _yaml_aliases(cls, _read_yaml(resolve(path))), "")
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    try:
        tree = overrides if isinstance(overrides, dict) else parse_argv(cls, overrides)
        if tree:
            cfg = _merge_into(cfg, tree, "")
    except ConfigError as err:
        raise ConfigError(f"command-line override: {err}") from None
    post = getattr(cfg, "validate", None)
    if callable(post):
        post()
    return cfg


def _yaml_aliases(cls: type, tree: dict[str, Any]) -> dict[str, Any]:
    """A file's top-level alias keys (e.g. ``inputs`` for ``input``, ``temperature`` for
    ``sampling.temperature``) under their real names; both at once are an error. An alias that is
    also a key (``engine`` for ``engine.kind``) is the key in a file."""
    keys = {f.name for f in dataclasses.fields(cls)}
    for alias, target in getattr(cls, "ALIASES", {}).items():
        if alias not in tree or "=" in target or alias in keys:
            continue
        *sections, leaf = target.split(".")
        node = tree
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        if isinstance(node, dict) and leaf in node:
            raise ConfigError(f"{alias} is {target}: give one of them")
        if isinstance(node, dict):
            node[leaf] = tree.pop(alias)
    return tree


def config_from_argv(cls: type[T], argv: Sequence[str]) -> T:
    """``[--config FILE] [--key.sub=value ...]`` -> a filled ``cls``."""
    argv = list(argv)
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
            del argv[i : i + 2]
            break
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            del argv[i]
            break
    return load_config(cls, path, argv)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), so a run records what it ran with."""
    from megatron_ipt.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
