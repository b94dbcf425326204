"""Progress reporting conventions and atomic writes."""

from __future__ import annotations

import io
import sys
import types

import nbformat
import numpy as np
import pytest
import xarray as xr

from turbda_kit import progress as progress_module
from turbda_kit.errors import InputError
from turbda_kit.io import atomic_path, open_dataset, write_dataset, write_json
from turbda_kit.progress import PlainProgress, process_rank, progress, progress_bar, progress_mode


def test_plain_progress_prints_first_last_and_no_carriage_returns():
    stream = io.StringIO()
    for _ in progress(range(50), desc="work", every_seconds=3600, enabled=True, stream=stream):
        pass
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("work: 1/50") and lines[-1].startswith("work: 50/50")


def test_progress_silent_off_rank_zero(monkeypatch):
    monkeypatch.setenv("PMI_RANK", "1")
    assert process_rank() == 1
    stream = io.StringIO()
    assert list(progress(range(3), stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""


def test_plain_progress_postfix():
    stream = io.StringIO()
    bar = PlainProgress(2, "c", every_seconds=0, stream=stream)
    bar.set_postfix_str("rmse 1.0")
    bar.update()
    assert "[rmse 1.0]" in stream.getvalue()


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{") and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_write_dataset_round_trip(tmp_path, suffix):
    ds = xr.Dataset({"theta": (("time", "x"), np.arange(6, dtype=np.float32).reshape(2, 3))})
    path = write_dataset(ds, tmp_path / f"d{suffix}")
    back = open_dataset(path).load()
    xr.testing.assert_identical(ds, back)
    write_dataset(ds * 2, path)  # replace in place
    np.testing.assert_array_equal(open_dataset(path).theta.values, ds.theta.values * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"d{suffix}"]


def test_write_dataset_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="suffix"):
        write_dataset(xr.Dataset(), tmp_path / "d.txt")


class ZMQInteractiveShell:  # the name is what the detection looks at
    pass


@pytest.fixture
def fake_kernel(monkeypatch):
    """Pretend to run inside an ipykernel; returns a setter for the parent's command line."""
    fake = types.SimpleNamespace(get_ipython=lambda: ZMQInteractiveShell())
    monkeypatch.setitem(sys.modules, "IPython", fake)
    for name in ("TURBDA_PROGRESS", "TURBDA_PLAIN_PROGRESS", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)

    def parent(command: str) -> None:
        monkeypatch.setattr(progress_module, "_kernel_parent_command", lambda: command)

    parent("")
    return parent


def test_progress_mode_in_jupyterlab_and_under_papermill(fake_kernel, monkeypatch):
    fake_kernel("/venv/bin/python /venv/bin/jupyter-lab --no-browser")
    assert progress_mode(io.StringIO()) == "widget"
    fake_kernel("/venv/bin/python /venv/bin/papermill in.ipynb out.ipynb")
    assert progress_mode(io.StringIO()) == "plain"
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/05_da_cycling.ipynb")  # set by jupyter_server
    assert progress_mode(io.StringIO()) == "widget"
    monkeypatch.setenv("TURBDA_PLAIN_PROGRESS", "1")  # what turbda run gives its kernels
    assert progress_mode(io.StringIO()) == "plain"
    monkeypatch.setenv("TURBDA_PROGRESS", "terminal")
    assert progress_mode(io.StringIO()) == "terminal"


def test_progress_mode_outside_a_kernel(monkeypatch):
    for name in ("TURBDA_PROGRESS", "TURBDA_PLAIN_PROGRESS"):
        monkeypatch.delenv(name, raising=False)
    assert progress_mode(io.StringIO()) == "plain"  # a log file or pipe


def test_widget_mode_makes_a_notebook_bar(monkeypatch):
    monkeypatch.setenv("TURBDA_PROGRESS", "widget")
    bar = progress_bar(3, desc="w", enabled=True)
    assert type(bar).__module__ == "tqdm.notebook"
    bar.close()


def test_kernels_run_by_papermill_print_plain_progress(tmp_path, monkeypatch):
    # A real kernel, started by papermill (not turbda run): plain lines; the same kernel
    # started with a Jupyter server's session name: the widget.
    import papermill

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells.append(nbformat.v4.new_code_cell(
        "from turbda_kit.progress import progress_mode\nprint('mode', progress_mode())"))
    nbformat.write(nb, tmp_path / "p.ipynb")
    for name in ("TURBDA_PROGRESS", "TURBDA_PLAIN_PROGRESS", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)
    seen = []
    for session in ("", "lab.ipynb"):
        if session:
            monkeypatch.setenv("JPY_SESSION_NAME", session)
        out = tmp_path / f"out{len(seen)}.ipynb"
        papermill.execute_notebook(str(tmp_path / "p.ipynb"), str(out), progress_bar=False,
                                   cwd=str(tmp_path))
        executed = nbformat.read(out, as_version=4)
        seen.append(executed.cells[0].outputs[0]["text"].split()[1])
    assert seen == ["plain", "widget"]
