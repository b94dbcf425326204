"""Filter sweeps: each entry equals a direct run; divergence is recorded; bad input fails early."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from turbda_kit.errors import InputError
from turbda_kit.experiments import build_experiment, get_preset
from turbda_kit.experiments.sweep import best_setting, sweep

PRESET = get_preset("sakov2008")


def test_each_setting_equals_a_direct_run():
    settings = [{"inflation_factor": 1.02}, {"inflation_factor": 1.08}]
    ds = sweep(PRESET, "letkf", settings, n_cycles=30, spinup_cycles=10, seed=3)
    assert ds.sizes["setting"] == 2 and not ds["diverged"].any()
    for i, changes in enumerate(settings):
        preset = PRESET.replace(n_cycles=30, spinup_cycles=10,
                                letkf=dataclasses.replace(PRESET.letkf, **changes))
        direct = build_experiment(preset, "letkf", seed=3).run(show_progress=False)
        assert ds["mean_rmse_analysis"].values[i] == pytest.approx(
            float(np.nanmean(direct["rmse_analysis"].values[10:])), rel=1e-12)
    assert best_setting(ds) in settings


def test_diverged_runs_are_recorded_not_raised():
    ds = sweep(PRESET, "letkf", [{"inflation_factor": 1.04}], n_cycles=5, spinup_cycles=1,
               divergence_rmse=1e-9)
    assert bool(ds["diverged"][0]) and np.isnan(ds["mean_rmse_analysis"][0])
    assert int(ds["diverged_cycle"][0]) >= 0
    with pytest.raises(InputError, match="every run"):
        best_setting(ds)


@pytest.mark.parametrize(("args", "match"), [
    (("letkf", [{"no_such_field": 1}]), "unknown LETKFConfig"),
    (("letkf", []), "settings is empty"),
    (("free", [{}]), "tunes 'ensf' or 'letkf'"),
])
def test_bad_input_fails_before_any_run(args, match):
    with pytest.raises(InputError, match=match):
        sweep(PRESET, *args, n_cycles=5, spinup_cycles=1)
    with pytest.raises(InputError, match="spinup_cycles"):
        sweep(PRESET, "letkf", [{}], n_cycles=5, spinup_cycles=5)


def test_sweep_tool_writes_and_ranks_the_table(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    import xarray as xr

    tool = Path(__file__).resolve().parents[2] / "tools" / "sweep_filters.py"
    out = tmp_path / "letkf.nc"
    done = subprocess.run([sys.executable, str(tool), "--preset", "sakov2008", "--filter", "letkf",
                           "--grid", "inflation_factor=1.02,1.06", "--cycles", "20", "--spinup",
                           "5", "--out", str(out), "--json", str(tmp_path / "letkf.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ds = xr.load_dataset(out)
    import json

    summary = json.loads((tmp_path / "letkf.json").read_text())
    assert summary["command"].startswith("python tools/sweep_filters.py --preset sakov2008")
    assert [row["setting"] for row in summary["rows"]] == [{"inflation_factor": 1.02},
                                                          {"inflation_factor": 1.06}]
    assert summary["rows"][0]["mean_rmse_analysis"] == round(
        float(ds["mean_rmse_analysis"].values[0]), 4)
    assert summary["attrs"]["filter"] == "letkf"
    assert summary["rows"][1]["wall_s"] == round(float(ds["wall_s"].values[1]), 1)
    assert ds.sizes["setting"] == 2 and ds.attrs["filter"] == "letkf"
    assert ds["diverged"].dtype == bool
    rows = [line for line in done.stdout.splitlines() if re.match(r"\s*\d+\.\d+\s", line)]
    means = [float(line.split()[0]) for line in rows]
    assert len(means) == 2 and means == sorted(means)


def test_a_sweep_writes_after_each_run_and_skips_finished_settings(tmp_path, monkeypatch):
    from turbda_kit.experiments import sweep as sweep_module

    out = tmp_path / "sweep.nc"
    first = sweep(PRESET, "letkf", [{"inflation_factor": 1.02}], n_cycles=10, spinup_cycles=2,
                  out_path=out)
    built = []
    real_build = sweep_module.build_experiment

    def counting_build(preset, *args, **kwargs):
        built.append(preset.letkf.inflation_factor)
        return real_build(preset, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "build_experiment", counting_build)
    second = sweep(PRESET, "letkf", [{"inflation_factor": 1.02}, {"inflation_factor": 1.06}],
                   n_cycles=10, spinup_cycles=2, out_path=out)
    assert built == [1.06]            # the finished setting was taken from the file
    assert second["mean_rmse_analysis"].values[0] == first["mean_rmse_analysis"].values[0]
    assert second.sizes["setting"] == 2
    with pytest.raises(InputError, match="other settings"):
        sweep(PRESET, "letkf", [{"inflation_factor": 1.02}], n_cycles=12, spinup_cycles=2,
              out_path=out)


def test_sweep_tool_tunes_the_shipped_vit_on_a_sparse_network(tmp_path):
    """--surrogate and --network: the coupled runs' ViT + two-stage EnSF, swept."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    import xarray as xr

    root = Path(__file__).resolve().parents[2]
    truth = tmp_path / "nature.nc"
    rng = np.random.default_rng(0)
    theta = 280.0 + 5.0 * rng.standard_normal((6, 2, 64, 64)).astype(np.float32)
    xr.Dataset({"theta": (("time", "level", "y", "x"), theta)}).to_netcdf(truth)
    out = tmp_path / "vit.nc"
    tool = [sys.executable, str(root / "tools" / "sweep_filters.py")]
    common = ["--filter", "ensf_twostage", "--network", "sqgturb_lgetkf_cv", "--truth",
              str(truth), "--cycles", "3", "--spinup", "1", "--out", str(out)]
    surrogate = str(root / "turbda_kit" / "pretrained" / "sqg_64_cpu" / "surrogate.pt")
    done = subprocess.run(tool + ["--preset", "sc24_vit_ensf", "--surrogate", surrogate,
                                  "--base", "ensf.n_steps=10",
                                  "--grid", "ensf.prior_inflation=1,1.5"] + common,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ds = xr.load_dataset(out)
    assert ds.attrs["preset"] == "sc24_vit_ensf+sqgturb_lgetkf_cv"
    assert ds.attrs["surrogate"] == surrogate
    assert ds.sizes["setting"] == 2 and not ds["diverged"].values.any()
    # inflating the forecast by 1.5 widens the analysis ensemble
    assert ds["mean_spread_analysis"].values[1] > ds["mean_spread_analysis"].values[0]
    for wrong, message in ((["--preset", "sc24_vit_ensf"], "give --surrogate"),
                           (["--preset", "bao2024_sqg_linear", "--surrogate", surrogate],
                            "needs a ViT preset")):
        refused = subprocess.run(tool + wrong + common, capture_output=True, text=True,
                                 timeout=300)
        assert refused.returncode != 0 and message in refused.stderr
