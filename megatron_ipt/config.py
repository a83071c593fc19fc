"""The one config system: dataclasses, YAML files and ``--dotted.key=value`` overrides.

A stage declares its settings as a tree of dataclasses. ``load_config`` fills it from a YAML
file (which may ``include:`` other YAML files, merged underneath it) and then from command-line
overrides. Unknown keys and ill-typed values are errors that name the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import json
import tokenize
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's dataclasses."""


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
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
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
    return dataclasses.replace(obj, **changes)


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
    """A file's top-level alias keys (e.g. ``inputs`` for ``input``) under their real names."""
    for alias, target in getattr(cls, "ALIASES", {}).items():
        if alias in tree and "=" not in target and "." not in target and target not in tree:
            tree[target] = tree.pop(alias)
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


# --- the command grammar ---------------------------------------------------------------------------
# One grammar for every tool: ``--key.sub=value`` or ``--key.sub value``; ``-`` and ``_`` are the same
# in key names (``--output-prefix`` is ``--output_prefix``); booleans as ``--flag``, ``--flag=true|false``
# or ``--no-flag``; list keys take one or more values (``--input a b``, repeatable, or a YAML list
# ``--input='[a, b]'``); ``--config FILE`` reads a YAML file first. A root config class may declare
# ``ALIASES`` (alias key -> dotted key) and ``POSITIONAL`` (the key bare arguments fill).

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")

# One spelling set for dtypes, normalised to torch's names.
DTYPE_NAMES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "half": "float16", "float32": "float32", "fp32": "float32", "float": "float32"}


def normalize_dtype(dtype: str) -> str:
    """``auto`` or a canonical torch dtype name (``bf16`` -> ``bfloat16``); a clear error otherwise."""
    if dtype == "auto":
        return dtype
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ConfigError(f"dtype must be auto or one of {sorted(DTYPE_NAMES)}, got {dtype!r}") from None


def auto_dtype() -> str:
    """What ``auto`` means for compute: bfloat16 on a GPU, float32 on CPU (no native bf16 matmuls here:
    bf16 trained at about half fp32's speed and scored 5.5x slower)."""
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


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
    """The item type when ``hint`` accepts a list (``list[str] | str`` included), else None."""
    for h in _members(hint):
        if typing.get_origin(h) is list:
            args = typing.get_args(h)
            return args[0] if args else Any
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


def parse_argv(cls: type, args: Sequence[str]) -> dict[str, Any]:
    """Command-line arguments in the house grammar -> a (partial) tree for ``cls``."""
    aliases = {_norm_key(k): v for k, v in getattr(cls, "ALIASES", {}).items()}
    positional = _positional(cls)
    flat: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
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
            if raw is not None:
                values = [raw]
            elif _is_bool(hint) and item is None:
                if i < len(args) and args[i].lower() in (*_TRUE, *_FALSE):
                    values = [args[i]]
                    i += 1
                else:
                    values = ["true"]
            elif item is not None:
                values = []
                while i < len(args) and not args[i].startswith("--"):
                    values.append(args[i])
                    i += 1
                if not values:
                    raise ConfigError(f"--{key} needs one or more values")
            else:
                if i >= len(args):
                    raise ConfigError(f"override --{key} has no value")
                values = [args[i]]
                i += 1
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


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), so a run records what it ran with."""
    from megatron_ipt.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --- --help: every key of a config tree, with its type, default and description ---------------------


@functools.cache
def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> description, from the trailing ``# comment`` on the field's line in the class
    source (or, failing that, the ``#`` lines right above it)."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    names = {f.name for f in dataclasses.fields(cls)}
    body_indent: int | None = None
    statement: list[tokenize.TokenInfo] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO("".join(lines)).readline))
    except (tokenize.TokenError, SyntaxError):
        return {}
    for tok in tokens:
        if tok.type == tokenize.COMMENT and not statement:
            above.append(tok.string.lstrip("#").strip())
            continue
        if tok.type == tokenize.NL and not statement:
            if tok.line.strip() == "":
                above = []
            continue
        if tok.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
            continue
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if len(statement) >= 2 and statement[0].type == tokenize.NAME and statement[1].string == ":":
                head = statement[0]
                if body_indent is None and head.string in names:
                    body_indent = head.start[1]
                if head.string in names and head.start[1] == body_indent and head.string not in out:
                    trailing = [t.string.lstrip("#").strip() for t in statement if t.type == tokenize.COMMENT]
                    text = " ".join(trailing) if trailing else " ".join(above)
                    if text:
                        out[head.string] = text
            statement, above = [], []
            continue
        statement.append(tok)
    return out


def _describe(cls: type, name: str) -> str:
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            text = _field_comments(klass).get(name)
            if text:
                return text
    return ""


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return "any"
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple, Sequence, dict):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', 'list')}[{inner}]" if inner else origin.__name__
    if hint is bool:
        return "bool"
    return getattr(hint, "__name__", str(hint))


@dataclasses.dataclass(frozen=True)
class KeyHelp:
    """One settable key of a config tree."""

    key: str  # dotted name, e.g. engine.batch_size
    type: str
    default: Any
    description: str


def config_keys(cls: type, prefix: str = "") -> list[KeyHelp]:
    """Every leaf key of the dataclass tree ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    out: list[KeyHelp] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint) or dataclasses.is_dataclass(default):
            out += config_keys(hint if dataclasses.is_dataclass(hint) else type(default), f"{prefix}{f.name}.")
        else:
            out.append(KeyHelp(f"{prefix}{f.name}", _type_name(hint), default, _describe(cls, f.name)))
    return out


def _show(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, str) and value and value == value.strip() and "\n" not in value:
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return str(value)


def config_help(cls: type) -> str:
    """The key listing of ``--help``: ``--key=DEFAULT  (type)  description`` per line."""
    rows = [(f"--{k.key}={_show(k.default)}", k.type, k.description) for k in config_keys(cls)]
    width = min(max((len(r[0]) for r in rows), default=0), 44)
    lines = []
    for flag, type_name, text in rows:
        pad = " " * max(1, width - len(flag) + 2)
        lines.append(f"  {flag}{pad}({type_name})  {text}".rstrip())
    return "\n".join(lines)
