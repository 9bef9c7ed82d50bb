"""The code's shape: no import cycles, no private names across modules, one atomic-write helper.

Read from the source with ``ast`` (nothing is imported), so a violation names the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nas"
#: the longest module allowed (lines).
MAX_LINES = 550
#: Modules that may rename files themselves: the helper, orbax's folder moves, the exporter's
#: folder swap, and the bundle's standalone runner (it runs on devices without this package).
REPLACE_ALLOWED = {"nas.safe_write", "nas.training.checkpoint", "nas.export.exporter",
                   "nas.latency.bundle_runner"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def imported_modules(name: str, tree: ast.Module) -> set[str]:
    """The nas modules `name` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in MODULES:
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
    found.discard(name)
    # a package importing its own submodules is how packages are built, not a cycle
    return {m for m in found if not m.startswith(name + ".")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Returns one import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = {name: imported_modules(name, tree) for name, tree in TREES.items()}
    assert find_cycle(graph) is None


def test_no_private_names_imported_across_modules():
    found = [f"{MODULES[name].name}:{node.lineno} {node.module}.{a.name}"
             for name, tree in TREES.items() for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nas")
             for a in node.names if a.name.startswith("_")]
    assert found == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES


def test_atomic_writes_go_through_safe_write():
    found = [f"{name}:{node.lineno}" for name, tree in TREES.items() if name not in REPLACE_ALLOWED
             for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr in ("replace", "rename")
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "os"]
    assert found == []
