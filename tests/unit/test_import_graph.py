"""No import cycles among imagegate's modules.

The graph is built from the source with ``ast``: every ``import imagegate...``
and ``from imagegate... import ...`` anywhere in a module counts, at module
level, inside functions (where a cycle hides, since it only bites when the
function runs) and under ``if TYPE_CHECKING:`` (a layering cycle all the
same). Imports of other packages (torch, uvicorn) inside functions are not
edges and do not matter here.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "imagegate"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The imagegate modules ``tree`` imports (a name imported from a package
    counts as its submodule when there is one)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # import a.b.c where c is a name, not a module
                target = target.rpartition(".")[0]
            if target.startswith("imagegate") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the imagegate modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[name] = _imported(tree, name, path.name == "__init__.py", set(files))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_graph_sees_imports_at_every_level() -> None:
    """The checker itself: module-level, function-level and TYPE_CHECKING imports are all edges."""
    graph = import_graph()
    assert "imagegate.config" in graph["imagegate.app"]  # module level
    assert "imagegate.app" in graph["imagegate.cli"]  # inside `serve`
    assert "imagegate.accounting.keys" in graph["imagegate.accounting.vault"]  # `from package import module`
    assert sum(len(targets) for targets in graph.values()) > 100


def test_a_function_level_cycle_is_found() -> None:
    graph = import_graph()
    graph["imagegate.errors"].add("imagegate.app")  # as a function-level import in errors.py would be
    assert _cycle(graph) is not None


def test_imagegate_modules_import_each_other_without_cycles() -> None:
    cycle = _cycle(import_graph())
    if cycle is not None:
        pytest.fail("import cycle: " + " -> ".join(reversed(cycle)))
