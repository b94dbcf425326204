"""Notebook cells show plots and printed lines, never a stray return value.

A cell whose last line is, say, ``tmp.write_text(...)`` prints the number of characters
written (``533``) as its result. Each cell's last top-level expression must be a display
(``show(plot)``, a bare name such as ``plot``) or a ``print``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("notebooks/src/*.py"), *ROOT.glob("figures/src/*.py")])
DISPLAYS = ("print", "show", "display")


def _cells(path: Path) -> list[str]:
    return re.split(r"^# %%.*$", path.read_text(), flags=re.MULTILINE)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_no_cell_ends_in_a_stray_value(source):
    stray = []
    for index, cell in enumerate(_cells(source)):
        body = ast.parse(cell).body
        if not body or not isinstance(body[-1], ast.Expr):
            continue
        value = body[-1].value
        shown = isinstance(value, ast.Name) or (
            isinstance(value, ast.Call) and getattr(value.func, "id", None) in DISPLAYS)
        if not shown:
            stray.append(f"cell {index}: {ast.unparse(value)[:80]}")
    assert not stray, f"{source.name}: cells end in a value that would be printed: {stray}"
