"""Committed notebooks: no outputs, a parameters cell with out_dir, in sync with their
percent-format source (jupytext pairing, ``jupytext.toml``)."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

from turbda_kit.workflow import notebook_parameters

REPO = Path(__file__).resolve().parents[2]
# The kit's notebooks live in notebooks/ and figures/; a recursive search would also find
# those of a built docs site (site/), of .venv-dapper's packages and of run directories.
NOTEBOOKS = sorted([*REPO.glob("notebooks/*.ipynb"), *REPO.glob("figures/*.ipynb")])


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


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
    # every line declares a parameter the kit can read (and check the type of)
    names = {ln.split(":")[0].split("=")[0].strip() for ln in lines}
    assert names == set(notebook_parameters(path)), f"{path.name}: cannot parse " \
        f"{sorted(names - set(notebook_parameters(path)))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_notebook_matches_its_source(path):
    src = path.parent / "src" / f"{path.stem}.py"
    assert src.exists(), f"{path.name}: every notebook is paired with src/{path.stem}.py"
    source = jupytext.read(src)
    committed = nbformat.read(path, as_version=4)
    assert _cells(source) == _cells(committed), "rebuild with: make notebooks"
    assert committed.metadata.get("kernelspec", {}).get("name") == "python3"


def test_jupytext_pairs_every_source_with_its_notebook():
    config = (REPO / "jupytext.toml").read_text()
    assert 'formats = "ipynb,src//py:percent"' in config
    sources = sorted(REPO.glob("*/src/*.py"))
    assert sources and all(p.parent.parent.joinpath(f"{p.stem}.ipynb").exists()
                           for p in sources)
    for src in sources:
        text = src.read_text()
        assert "# %% [parameters]" not in text, f"{src.name}: tag with # %% tags=[\"parameters\"]"
