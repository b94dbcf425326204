"""Named notebook pipelines: stage directories, placeholders, overrides, failure stop, resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from turbda_kit.errors import InputError
from turbda_kit.workflow.cli import main
from turbda_kit.workflow.pipelines import (
    PIPELINES,
    Stage,
    load_pipelines,
    pipeline_from_data,
    run_pipeline,
    select_stages,
    split_overrides,
    stage_dependencies,
    stage_inputs,
)

from .test_execute import make_notebook

REPO = Path(__file__).resolve().parents[2]


def _counter(name: str) -> str:
    """Cell body: append one line to <out_dir>/<name>.count (how often the stage ran)."""
    return (f"from pathlib import Path\nwith open(Path(out_dir, '{name}.count'), 'a') as f:\n"
            "    f.write('x')\n")


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


def test_failed_pipeline_continues_where_it_stopped(tmp_path, capsys):
    # Stage b fails on its first attempt and succeeds on the second, reading what the first
    # attempt left in its own run directory: how a notebook resumes from its checkpoints.
    a = make_notebook(tmp_path / "a.ipynb", _counter("a"))
    b = make_notebook(tmp_path / "b.ipynb", _counter("b") +
                      "if Path(out_dir, 'b.count').read_text() == 'x':\n"
                      "    raise RuntimeError('first attempt dies')")
    c = make_notebook(tmp_path / "c.ipynb", _counter("c"))
    stages = [Stage("a", str(a)), Stage("b", str(b), resumable=True), Stage("c", str(c))]
    out = tmp_path / "pipe"
    first = run_pipeline("demo", {}, out, log_output=False, stages=stages)
    assert [r.status for r in first] == ["ok", "failed"]
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["status"] == "failed" and summary["stages"][2]["status"] == "not run"
    assert not (out / "c").exists()

    second = run_pipeline("demo", {}, out, log_output=False, stages=stages)
    assert [r.run_dir.name for r in second] == ["b", "c"] and all(r.ok for r in second)
    assert (out / "a" / "a.count").read_text() == "x"     # completed stage skipped
    assert (out / "b" / "b.count").read_text() == "xx"    # re-run in its own directory
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["status"] == "ok" and summary["stages"][0]["skipped"] is True
    assert "1 already done" in capsys.readouterr().out


def test_changed_parameters_of_a_completed_stage_are_refused_or_restarted(tmp_path):
    a = make_notebook(tmp_path / "a.ipynb", _counter("a"))
    stages = [Stage("a", str(a), {"x": 1})]
    out = tmp_path / "pipe"
    run_pipeline("demo", {}, out, log_output=False, stages=stages, announce=False)
    with pytest.raises(InputError, match=r"stage a completed with other parameters \(x: 1 -> 2\)"):
        run_pipeline("demo", {"x": 2}, out, log_output=False, stages=stages)
    assert run_pipeline("demo", {}, out, log_output=False, stages=stages) == []  # nothing to do
    results = run_pipeline("demo", {"x": 2}, out, log_output=False, stages=stages,
                           restart_from="a", announce=False)
    assert [r.status for r in results] == ["ok"]
    assert json.loads((out / "a" / "run.json").read_text())["parameters"]["x"] == 2
    kept = [p.name for p in out.iterdir() if p.name.startswith("a.replaced-")]
    assert len(kept) == 1 and (out / kept[0] / "a.count").exists()


def test_pipeline_directories_are_not_mixed_up(tmp_path):
    a = make_notebook(tmp_path / "a.ipynb", "pass")
    out = tmp_path / "pipe"
    run_pipeline("one", {}, out, log_output=False, stages=[Stage("a", str(a))], announce=False)
    with pytest.raises(InputError, match="holds pipeline 'one', not 'two'"):
        run_pipeline("two", {}, out, log_output=False, stages=[Stage("a", str(a))])
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and holds no pipeline.json"):
        run_pipeline("one", {}, other, log_output=False, stages=[Stage("a", str(a))])


def test_overrides_go_to_declaring_stages_and_unknown_names_are_refused(tmp_path):
    a = make_notebook(tmp_path / "a.ipynb", "pass")
    b = make_notebook(tmp_path / "b.ipynb", "pass", params="y: int = 0  # y\nout_dir: str = '.'  # d")
    stages = [Stage("a", str(a)), Stage("b", str(b))]
    assert split_overrides(stages, {"x": 1, "b.y": 2}) == {"a": {"x": 1}, "b": {"y": 2}}
    with pytest.raises(InputError, match="no stage declares parameter 'z'"):
        split_overrides(stages, {"z": 1})
    with pytest.raises(InputError, match="stage b has no parameter 'x'"):
        split_overrides(stages, {"b.x": 1})
    with pytest.raises(InputError, match="a stage named 'nostage' does not exist"):
        split_overrides(stages, {"nostage.x": 1})


def test_registered_pipelines_name_existing_notebooks_and_parameters():
    for name, pipeline in PIPELINES.items():
        assert pipeline.stages and pipeline.estimate() > 0
        for stage in pipeline.stages:
            if stage.command:
                scripts = [w for w in stage.command if w.endswith(".py")]
                assert all((REPO / w).is_file() for w in scripts), (name, stage)
                continue
            assert stage.notebook_path().exists(), (name, stage)
            # every parameter a stage sets (at either size) is declared, with a fitting type
            split_overrides((stage,), {**stage.parameters, **stage.quick})


def test_pipeline_data_is_checked(tmp_path):
    with pytest.raises(InputError, match="needs a non-empty 'stages' list"):
        pipeline_from_data("p", {"stages": []})
    with pytest.raises(InputError, match="unknown keys"):
        pipeline_from_data("p", {"stages": [{"name": "a", "notebook": "a.ipynb", "typo": 1}]})
    with pytest.raises(InputError, match="stage names repeat"):
        pipeline_from_data("p", {"stages": [{"name": "a", "notebook": "x"}] * 2})
    path = tmp_path / "p.yaml"
    path.write_text("mine:\n  stages:\n    - {name: a, notebook: a.ipynb, estimate_cpu_s: 5}\n")
    assert load_pipelines(path)["mine"].estimate() == 5


def test_list_shows_stages_and_estimates(capsys):
    assert main(["pipeline", "--list"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "03_train_vit" in out and "estimated CPU time" in out


def test_unknown_pipeline(tmp_path):
    with pytest.raises(InputError, match="unknown pipeline"):
        run_pipeline("nope", {}, tmp_path / "p")


def test_command_stages_run_scripts_with_placeholders_records_and_resume(tmp_path):
    """A script stage: placeholders filled, output logged, run.json written, skipped when done."""
    script = ("import sys, pathlib; out = pathlib.Path(sys.argv[1]); "
              "out.joinpath('n.txt').write_text(sys.argv[2]); "
              "print('wrote', sys.argv[2]); sys.exit(int(sys.argv[3]))")
    stages = [Stage("tool", "", {"n": 3, "code": 0}, quick={"n": 1},
                    command=(sys.executable, "-c", script, "{run_dir}", "{n}", "{code}")),
              Stage("after", "", {"src": "{stage:tool}/n.txt"},
                    command=("{python}", "-c", "import sys; print(open(sys.argv[1]).read())",
                             "{src}"))]
    out = tmp_path / "p"
    results = run_pipeline("demo", {}, out, log_output=False, stages=stages, quick=True)
    assert [r.status for r in results] == ["ok", "ok"]
    assert (out / "tool" / "n.txt").read_text() == "1"
    record = json.loads((out / "tool" / "run.json").read_text())
    assert record["status"] == "ok" and record["exit_code"] == 0 and record["cpu_seconds"] >= 0
    assert "wrote 1" in (out / "tool" / "output.log").read_text()
    assert "1" in (out / "after" / "output.log").read_text()
    assert run_pipeline("demo", {}, out, log_output=False, stages=stages, quick=True) == []

    failing = tmp_path / "f"
    result, = run_pipeline("demo", {"tool.code": 3}, failing, log_output=False,
                           stages=stages[:1])
    record = json.loads((failing / "tool" / "run.json").read_text())
    assert result.status == "failed" and record["exit_code"] == 3 and "wrote 3" in record["error"]


def test_command_stage_parameters_are_checked(tmp_path):
    stage = Stage("tool", "", {"n": 3}, command=("{python}", "-c", "pass", "{n}"))
    with pytest.raises(InputError, match="parameter n expects int, got 'abc'"):
        run_pipeline("demo", {"n": "abc"}, tmp_path / "a", stages=[stage], announce=False)
    with pytest.raises(InputError, match="no stage declares parameter 'm'"):
        run_pipeline("demo", {"m": 1}, tmp_path / "b", stages=[stage], announce=False)
    bad = Stage("tool", "", {}, command=("{python}", "{missing}"))
    with pytest.raises(InputError, match="placeholder \\{missing\\}"):
        run_pipeline("demo", {}, tmp_path / "c", stages=[bad], announce=False)
    assert not (tmp_path / "c").exists()  # refused before anything was written
    with pytest.raises(InputError, match="one of 'notebook' or 'command'"):
        pipeline_from_data("p", {"stages": [{"name": "a", "notebook": "x", "command": ["y"]}]})
    with pytest.raises(InputError, match="non-empty list"):
        pipeline_from_data("p", {"stages": [{"name": "a", "command": []}]})


def test_only_runs_named_stages_and_what_they_read_then_the_rest(tmp_path, capsys):
    py = "{python}"
    stages = [Stage("a", "", {}, command=(py, "-c", "print('a')")),
              Stage("b", "", {"src": "{stage:a}"}, command=(py, "-c", "print('{src}')")),
              Stage("c", "", {}, command=(py, "-c", "print('c')")),
              Stage("d", "", {"src": "{stage:b}"}, command=(py, "-c", "print('{src}')"))]
    assert [s.name for s in select_stages(stages, ["d"])] == ["a", "b", "d"]
    assert stage_dependencies(stages[3]) == {"b"}
    out = tmp_path / "p"
    first = run_pipeline("demo", {}, out, log_output=False, stages=stages, only=["d"])
    assert [r.run_dir.name for r in first] == ["a", "b", "d"] and not (out / "c").exists()
    assert json.loads((out / "pipeline.json").read_text())["only"] == ["d"]
    rest = run_pipeline("demo", {}, out, log_output=False, stages=stages)
    assert [r.run_dir.name for r in rest] == ["c"]
    with pytest.raises(InputError, match="'z' is not a stage"):
        run_pipeline("demo", {}, out, log_output=False, stages=stages, only=["z"])
    # The CLI takes comma lists and repeats.
    assert main(["pipeline", "paper", "--only", "nope,da_linear", "--out",
                 str(tmp_path / "q")]) == 2
    assert "'nope' is not a stage" in capsys.readouterr().err


def test_a_stage_whose_inputs_were_rerun_runs_again(tmp_path, capsys):
    """Re-running a stage (here with only + restart_from) makes every completed stage that
    reads it stale: the next run runs them again, the old directories kept; a stage that
    reads the whole pipeline directory (the results collector) reads every earlier one."""
    py = "{python}"
    stages = [Stage("a", "", {}, command=(py, "-c", "print('a')")),
              Stage("b", "", {"src": "{stage:a}"}, command=(py, "-c", "print('{src}')")),
              Stage("c", "", {}, command=(py, "-c", "print('c')")),
              Stage("collect", "", {"pipe": "{pipeline_dir}"},
                    command=(py, "-c", "print('{pipe}')"))]
    out = tmp_path / "p"
    assert len(run_pipeline("demo", {}, out, log_output=False, stages=stages)) == 4
    assert run_pipeline("demo", {}, out, log_output=False, stages=stages) == []  # all done
    import time
    time.sleep(1.1)  # records are stamped to the second
    again = run_pipeline("demo", {}, out, log_output=False, stages=stages, only=["a"],
                         restart_from="a")
    assert [r.run_dir.name for r in again] == ["a"]
    capsys.readouterr()
    rest = run_pipeline("demo", {}, out, log_output=False, stages=stages)
    assert [r.run_dir.name for r in rest] == ["b", "collect"]      # c does not read a
    printed = capsys.readouterr().out
    assert "stage b: " in printed and "(again: newer inputs from a)" in printed
    assert "(again: newer inputs from a, b)" in printed            # collect reads both
    assert len(list(out.glob("b.replaced-*"))) == 1 and len(list(out.glob("collect.replaced-*"))) == 1
    assert run_pipeline("demo", {}, out, log_output=False, stages=stages) == []
    # inputs come from the placeholders, whatever else the parameters hold
    assert stage_inputs(stages[3], ["a", "b", "c"]) == {"a", "b", "c"}
    assert stage_inputs(Stage("x", "", {"p": Path("a"), "n": 3, "s": "{stage:b}"}),
                        ["a", "b"]) == {"b"}


def test_paper_pipeline_parts_are_what_the_stages_read():
    stages = PIPELINES["paper"].stages
    assert [s.name for s in select_stages(stages, ["coupled"])] == [
        "nature_train", "nature_truth", "preprocess", "vit_k1", "vit_k4", "vit_k8", "ship_vit",
        "coupled"]
    assert [s.name for s in select_stages(stages, ["da_linear", "bench_ensf"])] == [
        "nature_truth", "da_linear", "bench_ensf"]


def test_until_stops_after_a_stage_and_a_later_run_continues(tmp_path):
    stages = [Stage(n, "", {}, command=("{python}", "-c", f"print('{n}')")) for n in "abc"]
    out = tmp_path / "p"
    first = run_pipeline("demo", {}, out, log_output=False, stages=stages, until="b")
    assert [r.run_dir.name for r in first] == ["a", "b"] and not (out / "c").exists()
    assert json.loads((out / "pipeline.json").read_text())["until"] == "b"
    rest = run_pipeline("demo", {}, out, log_output=False, stages=stages)
    assert [r.run_dir.name for r in rest] == ["c"]
    with pytest.raises(InputError, match="until='z' is not a stage"):
        run_pipeline("demo", {}, out, log_output=False, stages=stages, until="z")
