"""README result sections rendered from the committed result summaries.

A result section of the README is a marked block::

    <!-- results:da_sqg -->
    ...generated markdown...
    <!-- /results:da_sqg -->

Its content is produced by the renderer registered under that name from the summaries in
``results/`` (:func:`turbda_kit.report.summaries.load_results`). ``turbda report check``
(and the test suite) fails when a block differs from what its summaries give, so a number
in the README cannot drift from the output of the command it names; ``turbda report
render`` (or ``publish``) rewrites the blocks after the results pipeline has refreshed
``results/``. The renderers are in :mod:`turbda_kit.report.sections`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import atomic_path
from .summaries import Summary, default_results_dir, load_results

__all__ = ["RENDERERS", "check_readme", "fmt", "markdown_table", "render_readme", "renderer",
           "write_readme"]

Results = Mapping[str, Summary]
Renderer = Callable[[Results], str]

RENDERERS: dict[str, Renderer] = {}
"""Block name → function building the block's markdown from the loaded summaries."""

_BLOCK = re.compile(r"(<!-- results:(?P<name>[A-Za-z0-9_.-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- /results:(?P=name) -->)", re.S)


def renderer(name: str) -> Callable[[Renderer], Renderer]:
    """Register a block renderer under ``name`` (decorator)."""

    def register(func: Renderer) -> Renderer:
        RENDERERS[name] = func
        return func

    return register


def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    """A number for a table: fixed ``digits`` decimals, ``—`` for missing/NaN, optional unit."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, str):
        return value
    text = f"{float(value):.{digits}f}"
    return f"{text} {unit}".rstrip()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (cells converted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def source_line(*summaries: Summary) -> str:
    """The closing line of a block: the commands and files its numbers come from."""
    parts = [f"`{s.command}` → `results/{s.name}.json`" for s in summaries]
    return "Produced by " + "; ".join(parts) + "."


def _render_block(name: str, results: Results) -> str:
    if name not in RENDERERS:
        raise InputError(f"README block results:{name} has no renderer; known: "
                         f"{', '.join(sorted(RENDERERS))}")
    body = RENDERERS[name](results).strip("\n")
    return body + "\n"


def render_readme(text: str, results: Results) -> str:
    """``text`` with every result block replaced by its rendering."""
    return _BLOCK.sub(lambda m: m.group(1) + _render_block(m.group("name"), results) + m.group(4),
                      text)


def check_readme(path: str | os.PathLike = "README.md",
                 results_dir: str | os.PathLike | None = None) -> list[str]:
    """Differences between the README's result blocks and their summaries.

    Returns
    -------
    list of str
        One unified diff per block that differs (empty when the README is current).
    """
    text = Path(path).read_text()
    results = load_results(results_dir or default_results_dir())
    problems = []
    for match in _BLOCK.finditer(text):
        expected = _render_block(match.group("name"), results)
        if match.group("body") != expected:
            diff = difflib.unified_diff(match.group("body").splitlines(), expected.splitlines(),
                                        "README.md", f"rendered from results ({match.group('name')})",
                                        lineterm="")
            problems.append("\n".join(diff))
    return problems


def write_readme(path: str | os.PathLike = "README.md",
                 results_dir: str | os.PathLike | None = None) -> bool:
    """Re-render the README's result blocks in place (atomically); True when it changed."""
    path = Path(path)
    text = path.read_text()
    new = render_readme(text, load_results(results_dir or default_results_dir()))
    if new == text:
        return False
    with atomic_path(path) as tmp:
        tmp.write_text(new)
    return True
