"""The files shipped with the package: ``configs/`` (training and demo YAML) and ``ds_configs/``
(DeepSpeed JSON).

In a checkout they are the top-level folders; in an installed wheel they live inside the package
(``megatron_ipt/configs``, ``megatron_ipt/ds_configs``). A path the user gives is tried from the current
directory first; only a path that does not exist there and names a shipped file
(``ds_configs/zero3.json``, ``configs/tiny.yaml``) resolves to the shipped copy, so the defaults work
from any directory.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = ("configs", "ds_configs")

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The folder ``name`` (``configs`` or ``ds_configs``): inside the installed package, else the checkout's."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped folder {name!r} (one of {', '.join(SHIPPED)})")
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


def resolve(path: str | Path) -> Path:
    """``path`` as given when it exists (relative to the cwd); else the shipped file it names
    (``configs/...`` or ``ds_configs/...``); else ``path`` unchanged, for the caller's not-found error."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    parts = given.parts
    if len(parts) >= 2 and parts[0] in SHIPPED:
        shipped = shipped_dir(parts[0]).joinpath(*parts[1:])
        if shipped.exists():
            return shipped
    return given
