"""The package's layering, read from its own import statements.

Layers import one way, bottom to top: io -> ops -> data -> modeling -> pseudo -> evaluation ->
engine -> runs -> sweep (``config.py`` imports nothing of wsss_d2, so every layer may use it). No module
imports wsss_d2 code inside a function (the usual way of hiding a cycle), no two modules import
each other through any chain, and no file is longer than 400 lines.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from conftest import REPO

PKG = REPO / "wsss_d2"
LAYERS = (
    "config", "io", "ops", "data", "modeling", "pseudo", "evaluation", "engine", "runs", "sweep"
)  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported wsss_d2 module, inside a function?, line) for every import in the file."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    modules = set(_modules())
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == "wsss_d2":
                        out.append((a.name, in_function, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    target = ".".join(base[: len(base) - child.level + 1] + [child.module or ""])
                else:
                    target = child.module or ""
                target = target.strip(".")
                if target.split(".")[0] != "wsss_d2":
                    continue
                for a in child.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{target}.{a.name}"
                    out.append((sub if sub in modules else target, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1


def test_layers_import_downwards_only():
    bad = []
    for name, path in _modules().items():
        if name == "wsss_d2":
            continue  # the package root imports every layer (it registers everything)
        for target, _, line in _imports(name, path):
            if target != "wsss_d2" and _layer(target) > _layer(name):
                bad.append(f"{path.relative_to(REPO)}:{line} ({name}) imports {target}")
            if target == "wsss_d2":
                bad.append(f"{path.relative_to(REPO)}:{line} imports the package root")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_function_level_imports_of_wsss_d2():
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {target} inside a function"
        for name, path in _modules().items()
        for target, in_function, line in _imports(name, path)
        if in_function
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = {
        name: {t for t, _, _ in _imports(name, path) if t != name}
        for name, path in _modules().items()
        if name != "wsss_d2"
    }

    def parent_packages(m):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = m.split(".")
        return {".".join(parts[:i]) for i in range(2, len(parts))}

    for name in graph:
        graph[name] |= {p for t in graph[name] for p in parent_packages(t)} - {"wsss_d2"}
        graph[name] -= parent_packages(name) | {name}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def dfs(m, stack):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle.extend(stack[stack.index(t) :] + [t])
                return True
            if state.get(t) is None and dfs(t, stack + [t]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if state.get(m) is None and dfs(m, [m]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_every_module_imports():
    for name in _modules():
        importlib.import_module(name)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_file_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


def test_pipeline_stage_kinds_have_runners():
    from wsss_d2 import runs
    from wsss_d2.engine.pipeline import STAGE_KINDS

    assert set(runs.STAGE_RUNNERS) == set(STAGE_KINDS)
