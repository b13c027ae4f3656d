"""The package's layers, checked from the source: no import cycles, no upward imports.

Layers, lowest first (docs/architecture.md): ``errors``/``config`` and ``net`` ->
``http`` -> ``observe`` -> ``proxy`` -> ``app`` -> ``cli``/``tools``. A module may
import its own layer and the ones below it, never one above; imports made only
for type checking (``if TYPE_CHECKING:``) do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dsproxy"
# The rank of each top-level part of dsproxy: imports may only go to an equal or lower rank.
RANKS = {
    "errors": 0,
    "net": 1,
    "config": 1,
    "http": 2,
    "observe": 3,
    "proxy": 4,
    "app": 5,
    "tools": 6,
    "cli": 7,
    "__main__": 8,
    "": 0,  # dsproxy/__init__.py (the version)
}
MAX_MODULE_LINES = 450  # "about 400": the layout keeps one concern per module


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _runtime_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(sub) for sub in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dsproxy"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dsproxy"))
    return {m for m in found if m in modules}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {m: _runtime_imports(p, modules) for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_module_imports_a_layer_above_it() -> None:
    modules = _modules()
    upward = []
    for module, path in modules.items():
        rank = RANKS[_layer(module)]
        for dep in _runtime_imports(path, modules):
            if RANKS[_layer(dep)] > rank:
                upward.append(f"{module} -> {dep}")
    assert upward == []


def test_modules_stay_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES} == {}
