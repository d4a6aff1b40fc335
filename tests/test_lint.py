"""Static checks: no undefined name, unused import or other pyflakes finding in any of our code.

An undefined name hides in a branch the other tests may never take (an error fallback,
say) and fails only in production: pyflakes finds it without running the code.
"""
from __future__ import annotations

import os

from pyflakes import api, reporter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Collect(reporter.Reporter):
    def __init__(self):
        self.found: list[str] = []

    def unexpectedError(self, filename, message):
        self.found.append(f"{filename}: {message}")

    def syntaxError(self, filename, message, lineno, offset, text):
        self.found.append(f"{filename}:{lineno}: {message}")

    def flake(self, message):
        self.found.append(str(message))


def test_pyflakes_finds_nothing():
    collect = Collect()
    paths = [os.path.join(ROOT, d) for d in ("batchy", "waitsy", "bench", "tests")]
    api.checkRecursive(paths, collect)
    assert collect.found == []


def test_pyflakes_would_find_an_undefined_name():
    collect = Collect()
    api.check("def f():\n    return _no_such_name(1)\n", "example.py", collect)
    assert any("undefined name '_no_such_name'" in line for line in collect.found)
