"""No import cycle among the package's modules: every import counts, inside functions and under
``if TYPE_CHECKING:`` too, since each is a dependency a reader has to follow."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_ipt"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph(files: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import mod`` names the submodule)."""
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, source in files.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    files = {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}
    assert len(files) > 40
    assert cycles(import_graph(files)) == []


def test_the_check_finds_cycles_through_lazy_and_type_checking_imports() -> None:
    files = {
        "megatron_ipt.a": "def f():\n    from megatron_ipt.b import x\n",
        "megatron_ipt.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from megatron_ipt import a\n",
        "megatron_ipt.c": "import megatron_ipt.a\n",
    }
    assert cycles(import_graph(files)) == [["megatron_ipt.a", "megatron_ipt.b"]]
