"""Result summaries and README blocks rendered from them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from turbda_kit.errors import InputError
from turbda_kit.report import readme as rd
from turbda_kit.report.summaries import load_results, read_summary, write_summary


def test_summary_round_trip_converts_numpy_and_non_finite(tmp_path):
    path = write_summary(tmp_path / "demo.json", {"a": np.float32(1.5), "b": [np.int64(2), math.nan],
                                                  "c": {"d": "x"}}, command="turbda pipeline paper")
    summary = read_summary(path)
    assert summary.name == "demo" and summary.command == "turbda pipeline paper"
    assert summary.data == {"a": 1.5, "b": [2, None], "c": {"d": "x"}}
    assert summary.get("c.d") == "x" and summary.get("b.0") == 2
    assert summary.provenance["kit_version"] and "utc" in summary.provenance
    assert "/work" not in json.dumps(summary.provenance)  # no machine paths


@pytest.mark.parametrize("bad, match", [
    ({"command": ""}, "command"),
    ({"command": "/abs/path/tool"}, "relative"),
    ({"data": {"x": object()}}, "only numbers"),
])
def test_write_summary_refuses_bad_input(tmp_path, bad, match):
    kwargs = {"data": {"x": 1}, "command": "make test", **bad}
    with pytest.raises(InputError, match=match):
        write_summary(tmp_path / "s.json", kwargs["data"], kwargs["command"])
    assert not list(tmp_path.iterdir())


def test_read_summary_names_the_file_when_broken(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json is not a result summary"):
        read_summary(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"name": "x"}')
    with pytest.raises(InputError, match="needs the keys"):
        read_summary(tmp_path / "partial.json")
    with pytest.raises(InputError, match="no result summary"):
        read_summary(tmp_path / "missing.json")


def test_missing_key_names_the_command(tmp_path):
    summary = read_summary(write_summary(tmp_path / "s.json", {"a": {"b": 1}}, "turbda x"))
    with pytest.raises(InputError, match="no 'a.c'.*turbda x"):
        summary.get("a.c")


def test_readme_blocks_render_check_and_write(tmp_path, monkeypatch):
    write_summary(tmp_path / "res" / "demo.json", {"rmse": 0.23456}, "turbda pipeline paper")
    monkeypatch.setitem(rd.RENDERERS, "demo",
                        lambda results: f"RMSE {rd.fmt(results['demo'].get('rmse'), 3)} K\n\n"
                                        + rd.source_line(results["demo"]))
    readme = tmp_path / "README.md"
    readme.write_text("intro 1.0\n<!-- results:demo -->\nRMSE 9.999 K\n<!-- /results:demo -->\nend\n")
    problems = rd.check_readme(readme, tmp_path / "res")
    assert len(problems) == 1 and "-RMSE 9.999 K" in problems[0] and "+RMSE 0.235 K" in problems[0]
    assert rd.write_readme(readme, tmp_path / "res")
    text = readme.read_text()
    assert text.startswith("intro 1.0\n") and text.endswith("end\n")
    assert "RMSE 0.235 K" in text and "`turbda pipeline paper` → `results/demo.json`" in text
    assert rd.check_readme(readme, tmp_path / "res") == []
    assert not rd.write_readme(readme, tmp_path / "res")


def test_unknown_block_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:nope -->\nx\n<!-- /results:nope -->\n")
    (tmp_path / "res").mkdir()
    with pytest.raises(InputError, match="results:nope has no renderer"):
        rd.check_readme(readme, tmp_path / "res")


def test_fmt_and_table():
    assert rd.fmt(None) == "—" and rd.fmt(math.nan) == "—" and rd.fmt(1.234, 1, "K") == "1.2 K"
    table = rd.markdown_table(["a", "b"], [[1, 2]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_load_results_reads_every_summary(tmp_path):
    write_summary(tmp_path / "one.json", {"x": 1}, "cmd one")
    write_summary(tmp_path / "two.json", {"x": 2}, "cmd two")
    assert sorted(load_results(tmp_path)) == ["one", "two"]
