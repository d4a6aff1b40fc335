"""Print the shape of the batchy package: modules, their sizes, function sizes, import depth.

    python -m bench.tools.sizes [path-to-a-checkout]

Run it on two checkouts to compare a restructure's before and after.
"""
from __future__ import annotations

import ast
import os
import statistics
import sys
from functools import lru_cache


def modules(root: str) -> dict[str, str]:
    found = {}
    package = os.path.join(root, "batchy")
    for dirpath, _dirs, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                found[dotted] = path
    return found


def imports(dotted: str, path: str, known: dict[str, str]) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = dotted if path.endswith("__init__.py") else dotted.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                out.add(candidate if candidate in known else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("batchy"):
            out.add(node.module)
    return {m for m in out if m in known and m != dotted and not m.startswith(dotted + ".")}


def main(argv=None) -> int:
    root = (argv or sys.argv[1:] or ["."])[0]
    known = modules(root)
    if not known:
        print(f"no batchy package under {root!r}: give a checkout's folder (the one holding batchy/)",
              file=sys.stderr)
        return 2
    lines = {m: sum(1 for _ in open(p, encoding="utf-8")) for m, p in known.items()}
    functions = []
    for path in known.values():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append(node.end_lineno - node.lineno + 1)
    edges = {m: imports(m, p, known) for m, p in known.items()}

    @lru_cache(maxsize=None)
    def depth(m: str, seen: frozenset = frozenset()) -> int:
        return 1 + max((depth(t, seen | {m}) for t in edges[m] if t not in seen), default=0)

    folders = sorted({m.rpartition(".")[0] for m in known})
    print(f"modules: {len(known)} in {len(folders)} packages ({', '.join(folders)})")
    print("largest modules: " + ", ".join(f"{m} {n}" for m, n in sorted(lines.items(), key=lambda x: -x[1])[:5]))
    print(f"module lines: median {statistics.median(lines.values()):g}, max {max(lines.values())}, "
          f"total {sum(lines.values())}")
    print(f"functions: {len(functions)}, median {statistics.median(functions):g} lines, "
          f"max {max(functions)}, over 40 lines: {sum(1 for f in functions if f > 40)}")
    print(f"longest import chain (floors): {max(depth(m) for m in known)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
