"""Named notebook pipelines: stage directories, placeholders, overrides, failure stop."""

from __future__ import annotations

import json

import pytest

from turbda_kit.errors import InputError
from turbda_kit.pipelines import PIPELINES, Stage, run_pipeline, split_overrides

from .test_runner import make_notebook


def test_stages_pass_outputs_through_placeholders(tmp_path):
    a = make_notebook(tmp_path / "a.ipynb", "from pathlib import Path\n"
                      "Path(out_dir, 'a.txt').write_text(str(x))")
    b = make_notebook(tmp_path / "b.ipynb", "from pathlib import Path\n"
                      "Path(out_dir, 'b.txt').write_text(Path(src).read_text() + '+b')",
                      params="src: str = ''  # input file\nout_dir: str = '.'  # run dir")
    stages = [Stage("first", str(a)), Stage("second", str(b), {"src": "{stage:first}/a.txt"})]
    out = tmp_path / "pipe"
    results = run_pipeline("demo", {"x": 3}, out, log_output=False, stages=stages)
    assert [r.status for r in results] == ["ok", "ok"]
    assert (out / "second" / "b.txt").read_text() == "3+b"
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["status"] == "ok" and [s["stage"] for s in summary["stages"]] == ["first", "second"]


def test_pipeline_stops_at_first_failure(tmp_path):
    bad = make_notebook(tmp_path / "bad.ipynb", "raise ValueError('stage broke')")
    good = make_notebook(tmp_path / "good.ipynb", "print('never')")
    out = tmp_path / "pipe"
    results = run_pipeline("demo", {}, out, log_output=False,
                           stages=[Stage("bad", str(bad)), Stage("good", str(good))])
    assert [r.status for r in results] == ["failed"]
    assert json.loads((out / "pipeline.json").read_text())["status"] == "failed"
    assert not (out / "good").exists()


def test_overrides_go_to_declaring_stages_and_unknown_names_are_refused(tmp_path):
    a = make_notebook(tmp_path / "a.ipynb", "pass")
    b = make_notebook(tmp_path / "b.ipynb", "pass", params="y: int = 0  # y\nout_dir: str = '.'  # d")
    stages = [Stage("a", str(a)), Stage("b", str(b))]
    assert split_overrides(stages, {"x": 1, "b.y": 2}) == {"a": {"x": 1}, "b": {"y": 2}}
    with pytest.raises(InputError, match="no stage declares parameter 'z'"):
        split_overrides(stages, {"z": 1})
    with pytest.raises(InputError, match="stage b has no parameter 'x'"):
        split_overrides(stages, {"b.x": 1})


def test_registered_pipelines_name_existing_notebooks():
    for name, stages in PIPELINES.items():
        for stage in stages:
            assert stage.notebook_path().exists(), (name, stage)


def test_unknown_pipeline(tmp_path):
    with pytest.raises(InputError, match="unknown pipeline"):
        run_pipeline("nope", {}, tmp_path / "p")
