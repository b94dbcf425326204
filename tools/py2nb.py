"""Build an output-free notebook from a percent-format script (developer tool).

Cells start with ``# %%`` (code), ``# %% [markdown]`` (markdown; lines lose a leading
``# ``) or ``# %% [parameters]`` (a code cell tagged ``parameters`` for papermill).

Usage: python tools/py2nb.py notebooks/src/01_x.py notebooks/01_x.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def convert(source: str) -> nbformat.NotebookNode:
    """Percent-format text to a notebook with no outputs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    kind, lines = None, []

    def flush() -> None:
        text = "\n".join(lines).strip("\n")
        if kind is None or not text:
            return
        if kind == "markdown":
            md = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.splitlines())
            nb.cells.append(nbformat.v4.new_markdown_cell(md))
        else:
            cell = nbformat.v4.new_code_cell(text)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            tag = line[4:].strip()
            kind = {"[markdown]": "markdown", "[parameters]": "parameters"}.get(tag, "code")
            lines = []
        else:
            lines.append(line)
    flush()
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    nbformat.write(convert(src.read_text()), dst)


if __name__ == "__main__":
    main()
