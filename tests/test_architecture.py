"""The package's shape, read from its source: no import cycle, a pure core, small modules.

The import graph is built from the AST of every module of ``omnizip/``: every ``import`` and
``from ... import`` statement counts, including deferred ones inside functions and those
under ``if TYPE_CHECKING:`` (a cycle hidden by a deferred import is still a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "omnizip"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name ``from`` imports from (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str) -> set[str]:
    """The package modules ``module`` imports (a ``from pkg import name`` of a submodule
    counts as importing the submodule, else the package)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                     for a in node.names]
        else:
            continue
        for name in names:
            # ``import omnizip.a.b`` names omnizip.a.b; keep the longest package module
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("omnizip") and name != module:
                found.add(name)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return [*path[path.index(child):], child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_graph_reader_sees_every_kind_of_import():
    """The reader itself: relative, absolute, deferred and submodule imports all count."""
    graph = GRAPH
    assert "omnizip.models" in graph["omnizip.patch"]  # from .models import ADAPTERS
    assert "omnizip.models.base" in graph["omnizip.patch"]  # from .models.base import ...
    assert "omnizip.core" in graph["omnizip"]  # from .core import (...)
    assert "omnizip.methods.fastv_hooks" in graph["omnizip.methods.fastv"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_is_acyclic():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_core_imports_nothing_from_the_rest_of_the_package():
    leaks = {
        module: sorted(t for t in targets if t != "omnizip.core" and not t.startswith("omnizip.core."))
        for module, targets in GRAPH.items()
        if module == "omnizip.core" or module.startswith("omnizip.core.")
    }
    leaks = {module: targets for module, targets in leaks.items() if targets}
    assert not leaks, f"omnizip/core imports the rest of the package: {leaks}"


def test_model_adapters_and_methods_do_not_import_the_patch_or_the_cli():
    """Layers: the patch reads the models registry, never the other way round."""
    for module, targets in GRAPH.items():
        if module.startswith(("omnizip.models", "omnizip.methods", "omnizip.method")):
            assert "omnizip.patch" not in targets, module
            assert not any(t.startswith(("omnizip.cli", "omnizip.bench")) for t in targets), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small(module):
    """Small modules with one job: every module of omnizip/ (all of them, whoever owns it)."""
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(PACKAGE.parent)}: {lines} lines > {MAX_LINES}"
