"""Experiment presets: DAPPER's Lorenz-96 LETKF benchmarks and quick SQG cycling runs."""

from __future__ import annotations

import numpy as np
import pytest

from turbda_kit.errors import DivergenceError, InputError
from turbda_kit.experiments.presets import PRESETS, build_experiment, get_preset


def test_sakov2008_letkf_reaches_dapper_score():
    # DAPPER's mods/Lorenz96/sakov2008: LETKF N=7, infl 1.04, loc_rad 4 -> RMSE ~0.22 (+-10%).
    preset = get_preset("sakov2008").replace(n_cycles=1500, spinup_cycles=300)
    ds = build_experiment(preset, "letkf", seed=1).run(show_progress=False)
    assert 0.22 * 0.9 <= ds.attrs["mean_rmse_analysis"] <= 0.22 * 1.1, ds.attrs["mean_rmse_analysis"]


@pytest.mark.slow
@pytest.mark.parametrize("name, score", [("sakov2008", 0.22), ("hoteit2015", 0.20)])
def test_dapper_benchmarks_full_length(name, score):
    ds = build_experiment(name, "letkf", seed=3).run(show_progress=False)
    assert score * 0.9 <= ds.attrs["mean_rmse_analysis"] <= score * 1.1


@pytest.mark.parametrize("filter_name", ["ensf", "letkf"])
def test_small_sqg_filters_beat_the_free_run(filter_name):
    preset = get_preset("bao2024_sqg_linear").replace(n_cycles=8, spinup_cycles=2, n_members=10)
    kwargs = dict(seed=2, model_overrides={"N": 16}, spinup_days=20)
    filtered = build_experiment(preset, filter_name, **kwargs).run(show_progress=False)
    free = build_experiment(preset, "free", **kwargs).run(show_progress=False)
    assert filtered.attrs["mean_rmse_analysis"] < 0.7 * free.attrs["mean_rmse_analysis"]
    assert filtered.attrs["mean_rmse_analysis"] < 1.5  # K, with 1 K observation error
    assert np.isfinite(filtered.crps_analysis).all()


def test_small_sqg_arctan_ensf_tracks_the_truth():
    """The arctan case (error 0.01) with the preset's implicit likelihood step."""
    preset = get_preset("bao2024_sqg_arctan").replace(n_cycles=8, spinup_cycles=2, n_members=10)
    kwargs = dict(seed=2, model_overrides={"N": 16}, spinup_days=20)
    filtered = build_experiment(preset, "ensf", **kwargs).run(show_progress=False)
    free = build_experiment(preset, "free", **kwargs).run(show_progress=False)
    assert np.isfinite(filtered.rmse_analysis).all()
    assert filtered.attrs["mean_rmse_analysis"] < 0.7 * free.attrs["mean_rmse_analysis"]
    # The authors' explicit Euler step blows the model up here (CFL ~10 at cycle 2).
    explicit = preset.with_filter_settings("ensf", {"likelihood_step": "explicit"})
    with pytest.raises(DivergenceError, match="CFL"):
        build_experiment(explicit, "ensf", **kwargs).run(show_progress=False)


def test_truth_trajectory_checks():
    preset = get_preset("bao2024_sqg_linear").replace(n_cycles=3, spinup_cycles=0, n_members=4)
    with pytest.raises(InputError, match="covers 1 cycles"):
        build_experiment(preset, "free", truth_trajectory=np.zeros((2, 2, 16, 16)),
                         model_overrides={"N": 16})
    with pytest.raises(InputError, match="does not match the model grid"):
        build_experiment(preset, "free", truth_trajectory=np.zeros((5, 2, 8, 8)),
                         model_overrides={"N": 16})
    with pytest.raises(InputError, match="unknown filter"):
        build_experiment(preset, "kalman")
    with pytest.raises(InputError, match="unknown preset"):
        get_preset("nope")


def test_presets_carry_their_reported_scores():
    assert PRESETS["yin2024_sqg_shocks"].reported == {"ensf": 1.05, "letkf": 5.4, "free": 9.6}
    assert PRESETS["sakov2008"].reported["letkf"] == 0.22


def test_with_filter_settings_changes_only_the_named_filter():
    preset = get_preset("bao2024_sqg_linear")
    tuned = preset.with_filter_settings("letkf", {"localization_radius": 1.5e6})
    assert tuned.letkf.localization_radius == 1.5e6 and tuned.ensf == preset.ensf
    assert preset.with_filter_settings("ensf", None) == preset
    with pytest.raises(InputError, match="unknown EnSFConfig"):
        preset.with_filter_settings("ensf", {"localisation": 1.0})
    with pytest.raises(InputError, match="filter settings exist"):
        preset.with_filter_settings("free", {})
