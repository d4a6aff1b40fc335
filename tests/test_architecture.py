"""The layers hold: rules are pure, storage alone speaks Redis, nothing imports upwards, no cycles.

Every import is counted, those inside functions too: a lazy import hides a cycle, it
does not remove it.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "batchy")

# What each layer may not import (a prefix of a module name).
FORBIDDEN = {
    "batchy.rules": ("flask", "werkzeug", "redis", "fakeredis", "batchy.storage", "batchy.web", "batchy.cli",
                     "batchy.client", "batchy.testing"),
    "batchy.storage": ("flask", "werkzeug", "batchy.web", "batchy.cli", "batchy.client"),
    "batchy.web": ("batchy.cli", "batchy.client"),
}


def module_files(package: str = PACKAGE) -> dict[str, str]:
    """Return {dotted module name: path} of every module under package."""
    found = {}
    for dirpath, _dirs, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imports_of(dotted: str, path: str, modules: dict[str, str]) -> set[str]:
    """Return every module (ours or not) that the module imports, anywhere in its body."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = dotted if path.endswith("__init__.py") else dotted.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # "from pkg import name": name is a module of ours, or a name in pkg
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)
    return found


def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> str | None:
    return next((layer for layer in FORBIDDEN if module == layer or module.startswith(layer + ".")), None)


def violations(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(edges.items()):
        layer = layer_of(module)
        if layer is None:
            continue
        for target in sorted(targets):
            if any(target == bad or target.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                found.append(f"{module} imports {target}")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components of more than one module (Tarjan), or a self-import."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
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
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges from a package to its own submodules (an __init__ importing its modules)."""
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}


def test_the_layers_exist():
    modules = module_files()
    for layer in ("batchy.rules", "batchy.storage", "batchy.web", "batchy.cli"):
        assert layer in modules, layer
        assert any(m.startswith(layer + ".") for m in modules), layer


def test_no_layer_imports_what_it_may_not():
    assert violations(graph()) == []


def test_no_import_cycle():
    assert cycles(package_edges(graph())) == []


def test_batchy_holds_only_what_a_user_imports_at_the_top():
    top = sorted(os.path.splitext(n)[0] for n in os.listdir(PACKAGE) if n.endswith(".py"))
    assert top == ["__init__", "client", "errors", "settings", "testing"]


@pytest.mark.parametrize("source, expected", [
    ("import redis\n", ["batchy.rules.example imports redis"]),
    ("from flask import Flask\n", ["batchy.rules.example imports flask"]),
    ("from ..storage import keys\n", ["batchy.rules.example imports batchy.storage.keys"]),
    ("def f():\n    from ..web.api import bp\n", ["batchy.rules.example imports batchy.web.api"]),
    ("from . import times\nimport json\n", []),
])
def test_the_layer_check_would_catch_a_forbidden_import(tmp_path, source, expected):
    path = tmp_path / "example.py"
    path.write_text(source)
    modules = module_files()
    edges = {"batchy.rules.example": imports_of("batchy.rules.example", str(path), modules)}
    assert violations(edges) == expected


def test_the_cycle_check_would_catch_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(edges) == [["a", "b", "c"], ["e"]]
