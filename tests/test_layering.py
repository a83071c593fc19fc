"""The one-way import flow of the package, checked on every module (imports inside functions too).

    base (config, io, log, dist_env, tokenizer, progress, resources, pairs, park, task_code, lmeval_items) <- data <- synth <- tuning, corpora
    base <- model <- train <- cluster (launch, slurm, preflight);  eval reads models and synthesis
    the demo is the one application over everything, data_tools included.

A module may import its own room and the rooms listed for it, nothing else; the library never
imports ``data_tools``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_ipt"
BASE = {"config", "io", "log", "dist_env", "tokenizer", "__init__", "progress", "resources", "pairs", "park", "task_code", "lmeval_items"}

# room -> the rooms it may import (besides itself and the base layer).
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "data": set(),
    "model": set(),
    "synth": {"data"},
    "train": {"data", "model"},
    "tuning": {"data", "synth"},
    "corpora": {"data", "synth"},
    "eval": {"data", "model", "synth"},
    "cluster": {"data", "model", "train"},  # the launcher, the Slurm scripts' policy and their preflight
    "demo": {"data", "model", "synth", "train", "tuning", "corpora", "eval", "cluster", "data_tools"},
}


def room_of_module(name: str) -> str | None:
    """The room of a dotted module name (None: not this project's)."""
    parts = name.split(".")
    if parts[0] == "data_tools":
        return "data_tools"
    if parts[0] != "megatron_ipt":
        return None
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def room_of_file(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return room_of_module(".".join(rel.parts)) or "base"


def imported_modules(source: str) -> list[tuple[int, str]]:
    """Every absolute import in a module, with its line: top level, in functions, in try blocks."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(room: str, source: str, where: str) -> list[str]:
    allowed = ALLOWED[room] | {room, "base"}
    bad = []
    for line, module in imported_modules(source):
        target = room_of_module(module)
        if target is not None and target not in allowed:
            bad.append(f"{where}:{line}: {room} imports {module} ({target})")
    return bad


def test_every_import_follows_the_flow() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    rooms = {room_of_file(f) for f in files}
    assert rooms <= set(ALLOWED), f"rooms without a rule: {rooms - set(ALLOWED)}"
    bad = [v for f in files for v in violations(room_of_file(f), f.read_text(), str(f.relative_to(PACKAGE.parent)))]
    assert not bad, "imports against the flow:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("room", "source"),
    [
        ("base", "from megatron_ipt.train.config import TrainConfig"),
        ("data", "def f():\n    import megatron_ipt.synth.rounds"),
        ("train", "from megatron_ipt.cluster.launch import run_torchrun"),
        ("base", "from megatron_ipt.cluster.slurm import train_args"),
        ("synth", "from megatron_ipt.corpora.templates import render_chain"),
        ("tuning", "from megatron_ipt.corpora import recipes"),
        ("model", "from megatron_ipt.train import loss"),
        ("train", "try:\n    from data_tools.synthesize import main\nexcept ImportError:\n    pass"),
        ("eval", "from megatron_ipt.tuning.pubmed_mining import mine_pubmed"),
    ],
)
def test_the_check_catches_imports_against_the_flow(room: str, source: str) -> None:
    assert len(violations(room, source, "x.py")) == 1


def test_the_check_allows_the_flow() -> None:
    assert not violations("corpora", "from megatron_ipt.pairs import Pair\nimport megatron_ipt.log", "x.py")
    assert not violations("demo", "from data_tools import preprocess_data", "x.py")
