"""Committed notebooks: no outputs, a parameters cell with out_dir, in sync with their source."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p for p in REPO.glob("*/**/*.ipynb")
                   if ".venv" not in p.parts and "runs" not in p.parts
                   and ".ipynb_checkpoints" not in p.parts)


def _py2nb():
    spec = importlib.util.spec_from_file_location("py2nb", REPO / "tools" / "py2nb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: strip outputs before committing"
            assert cell.get("execution_count") is None, f"{path.name}: strip execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_notebook_declares_parameters_with_out_dir(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    lines = [ln for ln in cells[0].source.splitlines() if ln.strip() and not ln.startswith("#")]
    assert any(ln.startswith("out_dir") for ln in lines), f"{path.name}: declare out_dir"
    for ln in lines:
        assert "#" in ln, f"{path.name}: parameter line without a comment: {ln!r}"
    # papermill silently drops lines it cannot parse (e.g. comments with '=' or quotes),
    # which would turn those parameters into "unknown parameter" errors.
    from turbda_kit.workflow import notebook_parameters

    names = {ln.split(":")[0].split("=")[0].strip() for ln in lines}
    assert names == set(notebook_parameters(path)), f"{path.name}: papermill cannot parse " \
        f"{sorted(names - set(notebook_parameters(path)))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_notebook_matches_its_source(path):
    src = path.parent / "src" / f"{path.stem}.py"
    if not src.exists():
        pytest.skip("no percent-format source")
    built = _py2nb().convert(src.read_text())
    committed = nbformat.read(path, as_version=4)
    assert [c.source for c in built.cells] == [c.source for c in committed.cells], (
        f"rebuild with: python tools/py2nb.py {src.relative_to(REPO)} {path.relative_to(REPO)}")
