"""Every figure notebook runs under the runner (papermill) on small saved results.

The results are made in ``tmp_path`` by the real writers (see ``test_plots.py``); each
notebook must write its PNG (matplotlib), self-contained HTML (bokeh) and JSON summary,
and a results directory missing a run the figure asks for must fail with an InputError
naming what is missing and where it looked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_plots import make_cycling_dirs, make_scaling_dirs, make_training_dir

from turbda_kit.workflow import run_notebook

FIGURES = Path(__file__).resolve().parents[2] / "figures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    make_cycling_dirs(root / "pipeline")
    make_scaling_dirs(root / "scaling")
    make_training_dir(root / "training" / "single", "none", 1, [3.0, 10.0, 11.0])
    make_training_dir(root / "training" / "03_train_vit", "ddp", 2, [3.0, 19.0], style="stage")
    make_training_dir(root / "training" / "zero1", "deepspeed", 2, [3.0, 17.0])
    return root


def _run(name: str, out_dir: Path, **parameters):
    result = run_notebook(FIGURES / f"{name}.ipynb", parameters, out_dir=out_dir,
                          log_output=False)
    assert result.ok, f"{name} failed: {result.record.get('error')}"
    png, html = out_dir / f"{name}.png", out_dir / f"{name}.html"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert "<html" in html.read_text()[:2000].lower()
    return json.loads((out_dir / f"{name}.json").read_text()), html.read_text()


def test_fig_rmse_vs_time_as_a_pipeline_stage(results):
    # No run_dirs: the figure's run directory sits in the pipeline directory it reads.
    out = results / "pipeline" / "fig_rmse_vs_time"
    summary, html = _run("fig_rmse_vs_time", out, runs=["vit_only", "vit_ensf", "sqg_letkf"],
                         logy=True)
    assert list(summary["runs"]) == ["vit_only", "vit_ensf", "sqg_letkf"]
    ensf, free = summary["runs"]["vit_ensf"], summary["runs"]["vit_only"]
    assert ensf["mean_rmse_analysis_K"] < free["mean_rmse_analysis_K"]
    assert ensf["hours"] == 60.0
    assert summary["reference_levels"]["observation_error_K"] == 1.0
    assert summary["reference_levels"]["climatological_spread_K"] is None  # 60 h: too short
    assert "ViT + EnSF" in html and "analysis RMSE (K)" in html and "time (h)" in html
    assert "observation error: 1.00 K" in html


def test_fig_rmse_vs_time_missing_run_names_it_and_where_it_looked(results, tmp_path):
    result = run_notebook(FIGURES / "fig_rmse_vs_time.ipynb",
                          {"run_dirs": [str(results / "pipeline" / "06_coupled_vit_ensf")],
                           "runs": ["vit_ensf", "vit_ensf_shocks"]},
                          out_dir=tmp_path / "fig", log_output=False)
    assert not result.ok
    error = result.record["error"]
    assert error.startswith("InputError")
    assert "vit_ensf_shocks" in error and "coupled_vit_ensf_shocks.nc" in error
    assert str(results / "pipeline" / "06_coupled_vit_ensf") in error
    assert not (tmp_path / "fig" / "fig_rmse_vs_time.png").exists()


def test_fig_ensf_scaling(results, tmp_path):
    summary, html = _run("fig_ensf_scaling", tmp_path / "fig",
                         run_dirs=[str(results / "scaling")])
    assert list(summary["modes"]) == ["strong", "weak"]
    strong = summary["modes"]["strong"]
    assert strong["ranks"] == [1, 2] and len(strong["sources"]) == 2  # two jobs merged
    assert strong["efficiency"][1][0] == pytest.approx(1 / 1.2)
    assert "EnSF strong: efficiency" in html and "EnSF weak: time per cycle" in html


def test_fig_vit_throughput(results, tmp_path):
    summary, html = _run("fig_vit_throughput", tmp_path / "fig",
                         run_dirs=[str(results / "training")])
    by_strategy = {(r["strategy"], r["devices"]): r for r in summary["runs"]}
    assert set(by_strategy) == {("single process", 1), ("ddp", 2), ("deepspeed ZeRO-1", 2)}
    assert by_strategy[("ddp", 2)]["samples_per_s"] == 19.0
    assert by_strategy[("ddp", 2)]["samples_per_s_per_device"] == 9.5
    assert "achieved TFLOPS per device" in html and "linear scaling" in html


def test_fig_fields(results, tmp_path):
    pipeline = results / "pipeline"
    summary, html = _run("fig_fields", tmp_path / "fig", run_dirs=[str(pipeline)],
                         runs=["letkf"], cycles=[1, -1], forecast_error=True)
    titles = list(summary["panels"])
    assert titles == ["SQG + LETKF, 12 h, surface (z = 0 km)",
                      "SQG + LETKF, 60 h, surface (z = 0 km)"]
    assert [summary["panels"][t]["cycle"] for t in titles] == [1, 5]
    assert "forecast error" in html and "error (K)" in html and "x (km)" in html


def test_fig_spread_skill(results, tmp_path):
    files = [f"ensf={results / 'pipeline' / '06_coupled_vit_ensf' / 'coupled_vit_ensf.nc'}"]
    summary, html = _run("fig_spread_skill", tmp_path / "fig",
                         run_dirs=[str(results / "pipeline" / "05_da_cycling")], files=files)
    assert set(summary["runs"]) == {"ensf", "letkf"}
    for scores in summary["runs"].values():
        assert scores["n_cycles"] == 4 and sum(scores["rank_histogram"]) == 4 * 128
        assert scores["ratio_corrected"] > scores["ratio"] > 0
    assert (tmp_path / "fig" / "fig_rank_histograms.png").read_bytes()[:8] == PNG_MAGIC
    assert "spread = RMSE" in html and "reliable, 6 members" in html
