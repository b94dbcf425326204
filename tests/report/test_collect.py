"""A pipeline's stage outputs to result summaries, and a finished run into a checkout."""

from __future__ import annotations

import json

import pytest

from turbda_kit.errors import InputError
from turbda_kit.report import readme as rd
from turbda_kit.report.cli import main
from turbda_kit.report.collect import collect, publish, relative_paths


def _stage(pipeline, name, data, status="ok", file="summary.json"):
    folder = pipeline / name
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "status": status, "cpu_seconds": 12.5, "wall_seconds": 20.0, "start_utc": "t",
        "git": {"revision": "abc", "dirty": False},
        "parameters_given": {"nature_run": f"{pipeline.resolve()}/nature/n.nc"}}))
    (folder / file).write_text(json.dumps(data))
    return folder


def test_relative_paths():
    assert relative_paths({"a": ["/p/x/y.nc", "/elsewhere/z.nc", "t"]}, "/p") == \
        {"a": ["x/y.nc", "z.nc", "t"]}


def test_collect_writes_summaries_without_machine_paths(tmp_path):
    pipeline = tmp_path / "pipe"
    _stage(pipeline, "da", {"rmse": 0.25, "file": f"{pipeline.resolve()}/da/out.nc"})
    written = collect(pipeline, pipeline / "collect", {"da": "summary.json"})
    record = json.loads(written[0].read_text())
    assert record["data"] == {"rmse": 0.25, "file": "da/out.nc"}
    assert record["command"] == "turbda pipeline paper (stage da)"
    assert record["provenance"]["stage_cpu_seconds"] == 12.5
    assert record["provenance"]["stage_parameters"] == {"nature_run": "nature/n.nc"}
    assert str(tmp_path) not in written[0].read_text()


def test_collect_refuses_unfinished_stages_and_missing_files(tmp_path):
    pipeline = tmp_path / "pipe"
    _stage(pipeline, "a", {}, status="running")
    with pytest.raises(InputError, match="status 'running'"):
        collect(pipeline, pipeline / "c", {"a": "summary.json"})
    _stage(pipeline, "b", {})
    with pytest.raises(InputError, match="missing.json is missing or not JSON"):
        collect(pipeline, pipeline / "c", {"b": "missing.json"})
    assert main(["collect", str(pipeline), "--out", str(tmp_path / "c"), "nonsense"]) == 2


def test_collect_skips_stages_a_part_run_left_out(tmp_path, capsys):
    # `turbda pipeline paper --only ...` runs some stages; collect summarises those.
    pipeline = tmp_path / "pipe"
    _stage(pipeline, "da", {"rmse": 0.25})
    written = collect(pipeline, pipeline / "collect", {"da": "summary.json",
                                                        "bench": "bench.json"})
    assert [p.name for p in written] == ["da.json"]
    assert "no summary: bench" in capsys.readouterr().out
    with pytest.raises(InputError, match="nothing to collect"):
        collect(pipeline, pipeline / "c2", {"bench": "bench.json"})


def test_publish_copies_summaries_bundle_figures_and_renders(tmp_path, monkeypatch):
    pipeline = tmp_path / "pipe"
    _stage(pipeline, "da", {"rmse": 0.25})
    collect(pipeline, pipeline / "collect", {"da": "summary.json"})
    bundle = pipeline / "ship_vit" / "model_x"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    (bundle / "surrogate.pt").write_bytes(b"w")
    (pipeline / "fig_rmse").mkdir()
    (pipeline / "fig_rmse" / "rmse.png").write_bytes(b"png")
    # a re-run keeps the old output beside the new one: never published
    (pipeline / "fig_rmse.replaced-20260101T000000Z").mkdir()
    (pipeline / "fig_rmse.replaced-20260101T000000Z" / "rmse.png").write_bytes(b"old")
    repo = tmp_path / "repo"
    (repo / "turbda_kit").mkdir(parents=True)
    (repo / "figures").mkdir()
    (repo / "README.md").write_text("x\n<!-- results:demo -->\nold\n<!-- /results:demo -->\n")
    monkeypatch.setitem(rd.RENDERERS, "demo",
                        lambda results: f"RMSE {results['da'].get('rmse')}")
    written = {p.relative_to(repo).as_posix() for p in publish(pipeline, repo)}
    assert written == {"results/da.json", "turbda_kit/pretrained/model_x/manifest.json",
                       "turbda_kit/pretrained/model_x/surrogate.pt", "figures/fig_rmse/rmse.png",
                       "README.md"}
    assert "RMSE 0.25" in (repo / "README.md").read_text()
    assert main(["check", "--readme", str(repo / "README.md"), "--results",
                 str(repo / "results")]) == 0
    (repo / "README.md").write_text((repo / "README.md").read_text().replace("0.25", "0.26"))
    assert main(["check", "--readme", str(repo / "README.md"), "--results",
                 str(repo / "results")]) == 1


def test_publish_refuses_quick_runs_and_unfinished_pipelines(tmp_path):
    repo = tmp_path / "repo"
    (repo / "turbda_kit").mkdir(parents=True)
    (repo / "README.md").write_text("")
    with pytest.raises(InputError, match="holds no summaries"):
        publish(tmp_path / "nothing", repo)
    pipeline = tmp_path / "pipe"
    _stage(pipeline, "da", {"rmse": 1.0})
    collect(pipeline, pipeline / "collect", {"da": "summary.json"}, quick=True)
    with pytest.raises(InputError, match="--quick size"):
        publish(pipeline, repo)
