"""Fault injection: bad input across the kit's boundaries, one row per fault (#13.6).

Each kind of boundary has a list of cases and one parametrised test:

* ``CLI_CASES``: a ``turbda`` command line -> exit status, the one line on stderr, and no
  file written or changed anywhere under the test's directory;
* ``API_CASES``: a Python call -> exception type and message, and no file written.

Add a fault by adding a row. Placeholders in ``argv``: ``{nb}`` a notebook declaring
one parameter of each supported type hint (see ``TYPED_PARAMETERS``), ``{tmp}`` the
test's directory, ``{out}`` a fresh run directory path in it, ``{file}`` an existing
plain file, ``{dir}`` a non-empty directory. ``setup`` writes extra inputs before the
snapshot. ``docs/failures.md`` lists what is tried and how each is handled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest

from turbda_kit.errors import InputError
from turbda_kit.workflow import (
    check_parameters,
    load_parameter_file,
    notebook_parameters,
    run_notebook,
    run_pipeline,
)
from turbda_kit.workflow.cli import main
from turbda_kit.workflow.parameters import parse_hint
from turbda_kit.workflow.pipelines import Stage, pipeline_from_data

TYPED_PARAMETERS = '''\
from typing import Literal, Optional

n: int = 1  # an int
x: float = 0.5  # a float
flag: bool = False  # a bool
label: str = "a"  # a string
items: list = [1]  # a list
ints: list[int] = [1]  # a list of ints
settings: dict = {}  # a mapping
maybe: Optional[int] = None  # an int or None
mode: Literal["a", "b"] = "a"  # one of two
limit: int | None = None  # an int or None (PEP 604)
out_dir: str = "."  # run directory'''


def write_notebook(path: Path, parameters: str | None = TYPED_PARAMETERS,
                   body: str = "print(n)", tags: int = 1) -> Path:
    """A small notebook: ``tags`` cells tagged ``parameters`` holding ``parameters``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for _ in range(tags if parameters is not None else 0):
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.append(nbformat.v4.new_code_cell(body))
    nbformat.write(nb, path)
    return path


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text(text)


@dataclass(frozen=True)
class CliCase:
    """One bad ``turbda`` command line."""

    id: str
    argv: list[str]
    message: str
    exit_code: int = 2
    setup: Callable[[Path], Any] | None = None
    one_line: bool = True  # argparse's own errors print the usage line too


def _p(name: str, value: str) -> list[str]:
    return ["run", "{nb}", "--out", "{out}", "-p", name, value]


CLI_CASES = [
    # the notebook
    CliCase("missing notebook", ["run", "{tmp}/nothere.ipynb", "--out", "{out}"],
            "notebook not found"),
    CliCase("not a notebook", ["run", "{tmp}/junk.ipynb", "--out", "{out}"],
            "is not a readable Jupyter notebook", setup=_write("junk.ipynb", "{not json")),
    CliCase("no parameters cell", ["run", "{tmp}/noparams.ipynb", "--out", "{out}"],
            "no cell tagged 'parameters'",
            setup=lambda tmp: write_notebook(tmp / "noparams.ipynb", parameters=None)),
    CliCase("two parameters cells", ["run", "{tmp}/two.ipynb", "--out", "{out}"],
            "has 2 cells tagged 'parameters'",
            setup=lambda tmp: write_notebook(tmp / "two.ipynb", tags=2)),
    CliCase("parameters cell not Python", ["run", "{tmp}/syntax.ipynb", "--out", "{out}"],
            "parameters cell is not valid Python",
            setup=lambda tmp: write_notebook(tmp / "syntax.ipynb", "n: int = = 1  # bad")),
    # parameter names and values
    CliCase("unknown parameter", _p("nope", "1"), "unknown parameter(s) nope"),
    CliCase("int given text", _p("n", "abc"), "parameter n of typed.ipynb expects int, got 'abc'"),
    CliCase("int given a float", _p("n", "1.5"), "expects int, got 1.5 (float)"),
    CliCase("int given a bool", _p("n", "true"), "expects int, got True (bool)"),
    CliCase("float given a list", _p("x", "[1, 2]"), "parameter x of typed.ipynb expects float"),
    CliCase("float given text", _p("x", "fast"), "expects float, got 'fast'"),
    CliCase("bool given text", _p("flag", "maybe"), "parameter flag of typed.ipynb expects bool"),
    CliCase("list given text", _p("items", "abc"), "parameter items of typed.ipynb expects list"),
    CliCase("list[int] given text items", _p("ints", "[1, a]"), "expects list of int"),
    CliCase("dict given text", _p("settings", "abc"), "expects mapping (dict), got 'abc'"),
    CliCase("dict given a list", _p("settings", "[1]"), "expects mapping (dict), got [1]"),
    CliCase("Optional[int] given text", _p("maybe", "abc"), "expects int or None (null)"),
    CliCase("Literal given another value", _p("mode", "c"), "expects one of 'a', 'b'"),
    CliCase("int | None given a float", _p("limit", "2.5"), "expects int or None (null)"),
    CliCase("unparsable YAML", _p("n", "[1,"), "cannot parse value '[1,'"),
    CliCase("unparsable YAML mapping", _p("settings", "{a: 1"), "cannot parse value"),
    # the run directory
    CliCase("--out is a file", ["run", "{nb}", "--out", "{file}"], "is a file, not a directory"),
    CliCase("--out below a file", ["run", "{nb}", "--out", "{file}/run"],
            "is a file, not a directory"),
    CliCase("--out not empty", ["run", "{nb}", "--out", "{dir}"], "is not empty"),
    # parameter files
    CliCase("-f missing", ["run", "{nb}", "--out", "{out}", "-f", "{tmp}/none.yaml"],
            "parameter file not found"),
    CliCase("-f a directory", ["run", "{nb}", "--out", "{out}", "-f", "{dir}"],
            "parameter file not found"),
    CliCase("-f invalid YAML", ["run", "{nb}", "--out", "{out}", "-f", "{tmp}/bad.yaml"],
            "is not valid YAML", setup=_write("bad.yaml", "n: [1,\n")),
    CliCase("-f not a mapping", ["run", "{nb}", "--out", "{out}", "-f", "{tmp}/list.yaml"],
            "must hold a mapping of name: value lines, not a list",
            setup=_write("list.yaml", "- 1\n- 2\n")),
    CliCase("-f number as a name", ["run", "{nb}", "--out", "{out}", "-f", "{tmp}/key.yaml"],
            "names must be text, got 1", setup=_write("key.yaml", "1: 2\n")),
    CliCase("-f wrong type", ["run", "{nb}", "--out", "{out}", "-f", "{tmp}/typed.yaml"],
            "parameter label of typed.ipynb expects str, got 3 (int)",
            setup=_write("typed.yaml", "label: 3\n")),
    CliCase("-f unknown name", ["run", "{nb}", "--out", "{out}", "-f", "{tmp}/unknown.yaml"],
            "unknown parameter(s) nope", setup=_write("unknown.yaml", "nope: 1\n")),
    # pipelines (the `check` pipeline's one stage: 00_kit_check)
    CliCase("pipeline unknown", ["pipeline", "nope", "--out", "{out}"], "unknown pipeline 'nope'"),
    CliCase("pipeline without a name", ["pipeline", "--out", "{out}"], "name a pipeline"),
    CliCase("pipeline unknown stage", ["pipeline", "check", "--out", "{out}", "-p",
                                       "nostage.seed", "1"],
            "a stage named 'nostage' does not exist"),
    CliCase("pipeline stage without the parameter", ["pipeline", "check", "--out", "{out}",
                                                     "-p", "00_kit_check.nope", "1"],
            "stage 00_kit_check has no parameter 'nope'"),
    CliCase("pipeline parameter no stage declares", ["pipeline", "check", "--out", "{out}",
                                                     "-p", "nope", "1"],
            "no stage declares parameter 'nope'"),
    CliCase("pipeline out_dir set by hand", ["pipeline", "check", "--out", "{out}", "-p",
                                             "out_dir", "x"],
            "no stage declares parameter 'out_dir'"),
    CliCase("pipeline wrong type", ["pipeline", "check", "--out", "{out}", "-p", "n_values",
                                    "many"],
            "parameter n_values of 00_kit_check.ipynb expects int, got 'many'"),
    CliCase("pipeline --out is a file", ["pipeline", "check", "--out", "{file}"], "is a file"),
    CliCase("pipeline --out foreign directory", ["pipeline", "check", "--out", "{dir}"],
            "is not empty and holds no pipeline.json"),
    CliCase("pipeline --restart-from unknown", ["pipeline", "check", "--out", "{out}",
                                                "--restart-from", "nostage"],
            "restart_from='nostage' is not a stage of check"),
    CliCase("pipeline --list unknown", ["pipeline", "nope", "--list"], "unknown pipeline 'nope'"),
    # the command line itself (argparse: usage line + error)
    CliCase("-q with -v", ["run", "{nb}", "--out", "{out}", "-q", "-v"],
            "not allowed with argument", one_line=False),
    CliCase("run without a notebook", ["run"], "the following arguments are required",
            one_line=False),
    CliCase("-p without a value", ["run", "{nb}", "-p", "n"], "expected 2 arguments",
            one_line=False),
]


def _fill(arg: str, inputs: dict[str, str]) -> str:
    for key, value in inputs.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def _files(root: Path) -> dict[str, float]:
    """Every file and directory under ``root`` with its modification time."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture
def inputs(tmp_path):
    write_notebook(tmp_path / "typed.ipynb")
    (tmp_path / "plain.txt").write_text("a file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep me")
    return {"nb": str(tmp_path / "typed.ipynb"), "tmp": str(tmp_path),
            "out": str(tmp_path / "out"), "file": str(tmp_path / "plain.txt"),
            "dir": str(tmp_path / "full")}


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_refuses_bad_input_and_writes_nothing(case, inputs, tmp_path, capsys):
    if case.setup is not None:
        case.setup(tmp_path)
    before = _files(tmp_path)
    argv = [_fill(arg, inputs) for arg in case.argv]
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's own errors
        status = stop.code
    err = capsys.readouterr().err
    assert status == case.exit_code, err
    assert case.message in err, err
    if case.one_line:
        assert err.count("\n") == 1 and err.startswith("turbda: error: "), err
    assert _files(tmp_path) == before, "a refused command left or changed files"


@dataclass(frozen=True)
class ApiCase:
    """One bad Python call: ``call(tmp_path)`` must raise ``exception`` matching ``match``."""

    id: str
    call: Callable[[Path], Any]
    match: str
    exception: type[BaseException] = InputError
    setup: Callable[[Path], Any] | None = field(default=None)


def _typed(tmp: Path) -> Path:
    return tmp / "typed.ipynb"


API_CASES = [
    ApiCase("run_notebook wrong type", lambda tmp: run_notebook(_typed(tmp), {"n": "3"},
                                                                tmp / "out"),
            "parameter n of typed.ipynb expects int, got '3'"),
    ApiCase("run_notebook list for float", lambda tmp: run_notebook(_typed(tmp), {"x": [1]},
                                                                    tmp / "out"),
            "expects float"),
    ApiCase("run_notebook int accepted for float, unknown name refused",
            lambda tmp: run_notebook(_typed(tmp), {"x": 1, "y": 2}, tmp / "out"),
            r"unknown parameter\(s\) y"),
    ApiCase("run_notebook into a file", lambda tmp: run_notebook(_typed(tmp), {},
                                                                 tmp / "plain.txt"),
            "is a file"),
    ApiCase("check_parameters Literal", lambda tmp: check_parameters(
        notebook_parameters(_typed(tmp)), {"mode": "z"}, "typed.ipynb"), "one of 'a', 'b'"),
    ApiCase("load_parameter_file not a mapping", lambda tmp: load_parameter_file(
        tmp / "scalar.yaml"), "must hold a mapping",
            setup=_write("scalar.yaml", "3\n")),
    ApiCase("parse_hint not an expression", lambda tmp: parse_hint("list["),
            "is not a Python expression"),
    ApiCase("pipeline stage without notebook", lambda tmp: pipeline_from_data(
        "p", {"stages": [{"name": "a"}]}), "needs 'name' and one of 'notebook' or 'command'"),
    ApiCase("pipeline stage name with a slash", lambda tmp: pipeline_from_data(
        "p", {"stages": [{"name": "a/b", "notebook": "x.ipynb"}]}), "must use letters"),
    ApiCase("pipeline placeholder to a later stage", lambda tmp: run_pipeline(
        "demo", {}, tmp / "out", stages=[
            Stage("a", str(_typed(tmp)), {"label": "{stage:b}/x"}),
            Stage("b", str(_typed(tmp)))]), "names a stage that has not run yet"),
]


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_refuses_bad_input_and_writes_nothing(case, inputs, tmp_path):
    if case.setup is not None:
        case.setup(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(case.exception, match=case.match):
        case.call(tmp_path)
    assert _files(tmp_path) == before, "a refused call left or changed files"
