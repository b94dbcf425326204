"""Notebook execution and the `turbda` CLI: run directories, run.json, output, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from turbda_kit.errors import InputError
from turbda_kit.workflow import notebook_parameters, parse_value, run_notebook
from turbda_kit.workflow.cli import main

REPO = Path(__file__).resolve().parents[2]


def make_notebook(path: Path, body: str, params: str | None = "x: int = 1  # a number\n"
                  "out_dir: str = '.'  # run dir") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if params is not None:
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.append(nbformat.v4.new_code_cell(body))
    nbformat.write(nb, path)
    return path


@pytest.fixture
def ok_notebook(tmp_path):
    return make_notebook(tmp_path / "ok.ipynb",
                         "from pathlib import Path\nPath(out_dir, 'x.txt').write_text(str(x * 2))\n"
                         "print('value', x)")


def test_parse_value_reads_yaml_scalars_and_lists():
    assert parse_value("3") == 3
    assert parse_value("1e-3") == pytest.approx(1e-3)
    assert parse_value("2.5") == 2.5
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("hello") == "hello"
    assert parse_value("file.nc") == "file.nc"
    with pytest.raises(InputError, match="cannot parse"):
        parse_value("[1, 2")
    assert parse_value("[1e-3, 2]") == [pytest.approx(1e-3), 2]
    assert parse_value('{"radius": 1.5e6, "factor": 0.3, "step": implicit}') == {
        "radius": 1.5e6, "factor": 0.3, "step": "implicit"}
    assert parse_value("{}") == {}


def test_notebook_parameters_lists_declared_names(ok_notebook):
    params = notebook_parameters(ok_notebook)
    assert set(params) == {"x", "out_dir"}
    assert params["x"].type_name == "int" and params["x"].help == "a number"


def test_run_writes_executed_notebook_and_run_json(ok_notebook, tmp_path):
    out = tmp_path / "run"
    result = run_notebook(ok_notebook, {"x": 21}, out, log_output=False)
    assert result.ok
    assert (out / "ok.ipynb").exists()
    assert (out / "x.txt").read_text() == "42"  # the notebook got out_dir and x
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok"
    assert record["parameters"]["x"] == 21 and record["parameters_given"] == {
        "x": 21, "out_dir": str(out.resolve())}
    for key in ("turbda_kit_version", "git", "python", "torch", "numpy", "host", "device",
                "rank", "world_size", "slurm_job_id", "start_utc", "end_utc", "wall_seconds",
                "cpu_seconds"):
        assert key in record, key
    assert record["wall_seconds"] > 0 and record["cpu_seconds"] > 0  # the kernel's CPU
    executed = nbformat.read(out / "ok.ipynb", as_version=4)
    assert any("value 21" in o.get("text", "") for c in executed.cells for o in c.get("outputs", []))


def test_failed_cell_marks_run_failed_and_keeps_traceback(tmp_path):
    nb = make_notebook(tmp_path / "bad.ipynb", "raise RuntimeError('boom in cell')")
    out = tmp_path / "run"
    result = run_notebook(nb, {}, out, log_output=False)
    assert result.status == "failed"
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and "boom in cell" in record["error"]
    executed = nbformat.read(out / "bad.ipynb", as_version=4)
    tracebacks = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert tracebacks and tracebacks[0]["evalue"] == "boom in cell"


def test_cli_exit_status_and_failed_run(tmp_path, capsys):
    nb = make_notebook(tmp_path / "bad.ipynb", "1/0")
    assert main(["run", str(nb), "--out", str(tmp_path / "r"), "-q"]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("missing", "notebook not found"),
    ("no_params", "no cell tagged 'parameters'"),
    ("unknown", "unknown parameter(s) nope"),
    ("unparsable", "cannot parse value"),
])
def test_bad_input_exits_2_and_writes_nothing(case, message, tmp_path, ok_notebook, capsys):
    nb = ok_notebook
    args = []
    if case == "missing":
        nb = tmp_path / "nothere.ipynb"
    elif case == "no_params":
        nb = make_notebook(tmp_path / "np.ipynb", "print(1)", params=None)
    elif case == "unknown":
        args = ["-p", "nope", "1"]
    elif case == "unparsable":
        args = ["-p", "x", "[1,"]
    out = tmp_path / "out"
    status = main(["run", str(nb), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.count("\n") == 1  # one line
    assert not out.exists()


def test_unknown_parameter_message_lists_valid_names(ok_notebook, tmp_path):
    with pytest.raises(InputError, match="valid names: out_dir, x"):
        run_notebook(ok_notebook, {"y": 1}, tmp_path / "o", log_output=False)


def test_non_empty_run_dir_refused(ok_notebook, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        run_notebook(ok_notebook, {}, out, log_output=False)
    assert (out / "old.txt").read_text() == "keep me"


def test_param_file_and_cli_override(ok_notebook, tmp_path):
    pfile = tmp_path / "p.yaml"
    pfile.write_text("x: 5\n")
    out = tmp_path / "o"
    assert main(["run", str(ok_notebook), "--out", str(out), "-f", str(pfile), "-q"]) == 0
    assert (out / "x.txt").read_text() == "10"
    out2 = tmp_path / "o2"
    assert main(["run", str(ok_notebook), "--out", str(out2), "-f", str(pfile), "-p", "x", "7",
                 "-q"]) == 0
    assert (out2 / "x.txt").read_text() == "14"


def test_help_of_every_subcommand(capsys):
    proc = subprocess.run([sys.executable, "-m", "turbda_kit", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "usage: turbda" in proc.stdout  # python -m turbda_kit
    for args in (["run", "--help"], ["pipeline", "--help"], ["info", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 0 and "usage: turbda" in capsys.readouterr().out


def test_info_reports_versions_and_devices(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("turbda_kit", "torch", "devices", "mpi", "deepspeed", "kernel"):
        assert label in out
    assert "MPICH" in out or "Open MPI" in out


def test_live_output_is_streamed_without_papermill_chatter(ok_notebook, tmp_path, capsys):
    run_notebook(ok_notebook, {"x": 5}, tmp_path / "o", log_output=True)
    captured = capsys.readouterr()
    assert "value 5" in captured.out and "Executing Cell" not in captured.out
    assert "without encryption" not in captured.err


def test_verbose_shows_cells_and_quiet_prints_nothing(ok_notebook, tmp_path, capsys):
    assert main(["run", str(ok_notebook), "--out", str(tmp_path / "v"), "-v", "-p", "x", "5"]) == 0
    assert "Executing Cell" in capsys.readouterr().out
    assert main(["run", str(ok_notebook), "--out", str(tmp_path / "q"), "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_every_type_hint_reaches_the_notebook_without_warnings(tmp_path, capfd):
    # papermill cannot read `Literal[...]` or `int | None` lines; the kit can, and injects
    # checked values without papermill's "Passed unknown parameter" warning.
    params = ("from typing import Literal, Optional\n"
              "mode: Literal['a', 'b'] = 'a'  # a choice\n"
              "limit: int | None = None  # optional\n"
              "scale: float = 1.0  # ints accepted\n"
              "out_dir: str = '.'  # run dir")
    nb = make_notebook(tmp_path / "hints.ipynb",
                       "from pathlib import Path\n"
                       "Path(out_dir, 'v.txt').write_text(repr((mode, limit, scale)))", params)
    assert main(["run", str(nb), "--out", str(tmp_path / "r"), "-p", "mode", "b",
                 "-p", "limit", "7", "-p", "scale", "2"]) == 0
    assert (tmp_path / "r" / "v.txt").read_text() == "('b', 7, 2.0)"
    assert "Passed unknown parameter" not in capfd.readouterr().err
