"""The rules of the layout that `lint-imports` cannot see: dependencies are visible at the top of each module, private
names stay in their module, and files and functions stay small enough to read (docs/testing.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "opcd"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_opcd_is_imported_at_the_top_of_a_module_never_inside_a_function(path):
    """An import inside a function is only for an optional or slow third-party library (vLLM, peft, matplotlib):
    never an opcd module, which would hide a dependency (or dodge a cycle)."""
    inside = [
        f"{_name(path)}:{node.lineno}"
        for function in _functions(ast.parse(path.read_text()))
        for node in ast.walk(function)
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").split(".")[0] == "opcd"
        or isinstance(node, ast.Import)
        and any(a.name.split(".")[0] == "opcd" for a in node.names)
    ]
    assert not inside, inside


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_private_name_crosses_a_module_border(path):
    imported = [
        f"{_name(path)}:{node.lineno} {node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opcd")
        for alias in node.names
        if alias.name.startswith("_") and alias.name != "__version__"
    ]
    assert not imported, imported


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_files_and_functions_stay_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 400, f"{_name(path)} has {len(text.splitlines())} lines: split it along a seam"
    for function in _functions(ast.parse(text)):
        lines = function.end_lineno - function.lineno + 1
        assert lines <= 80, f"{_name(path)}:{function.lineno} {function.name}() has {lines} lines"


def test_the_training_loop_reads_top_to_bottom_in_one_screenful():
    tree = ast.parse((PACKAGE / "core" / "train.py").read_text())
    for function in [f for f in _functions(tree) if f.name in ("train", "loop")]:
        assert function.end_lineno - function.lineno + 1 <= 120
        assert "game" not in ast.unparse(function).lower()  # what the rollouts are is the source's business
