"""``--help``: every key of a config tree, with its type, default and description (the ``# comment``
on the config field's line)."""

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
from typing import Any


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


def config_keys(cls: type, prefix: str = "", defaults: Any = None) -> list[KeyHelp]:
    """Every leaf key of the dataclass tree ``cls``, in declaration order; ``defaults``: an instance
    whose values are the defaults (a section's own, where its parent's factory sets some)."""
    hints = typing.get_type_hints(cls)
    out: list[KeyHelp] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint) or dataclasses.is_dataclass(default):
            section = default if dataclasses.is_dataclass(default) and not isinstance(default, type) else None
            out += config_keys(hint if dataclasses.is_dataclass(hint) else type(default), f"{prefix}{f.name}.", section)
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
