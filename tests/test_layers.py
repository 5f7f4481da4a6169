"""Layers import only downward: the gateway knows nothing of the api layer that serves it,
and the dashboard (web, beside api) nothing of api either — api includes web's routers,
so an import back would be a cycle; bench/ imports nothing of tests/. Read from the
source, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ownllm

PACKAGE = Path(ownllm.__file__).parent


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", ["gateway", "web", "evals", "redteam"])
def test_a_layer_below_api_does_not_import_it(layer):
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            m for m in imported_modules(path) if m.startswith("ownllm.api")
        )
        for path in sorted((PACKAGE / layer).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_benchmarks_do_not_import_the_tests():
    """bench/ runs without the test suite (README, Development): what a benchmark shares
    with a test lives in bench/ or the package."""
    bench = PACKAGE.parent / "bench"
    offenders = {
        path.name: sorted(
            m for m in imported_modules(path) if m == "tests" or m.startswith("tests.")
        )
        for path in sorted(bench.rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
