"""Experiment presets: DAPPER's Lorenz-96 LETKF benchmarks and quick SQG cycling runs."""

from __future__ import annotations

import numpy as np
import pytest

from turbda_kit.errors import DivergenceError, InputError
from turbda_kit.experiments import (
    PRESETS,
    Experiment,
    available_models,
    build_experiment,
    get_preset,
    model_setup,
)
from turbda_kit.filters import LETKF, EnSF
from turbda_kit.models import ForecastModel, Lorenz96, SQGModel, bao2024_at_resolution


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
    with pytest.raises(InputError, match="unknown filter 'kalman'; choose from ensf, ensf_local, ensf_spectral, ensf_twostage, letkf.*free"):
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


def test_the_builder_assembles_every_part_by_name():
    preset = get_preset("bao2024_sqg_linear").replace(n_cycles=2, spinup_cycles=0, n_members=3)
    experiment = build_experiment(preset, "letkf", model_overrides={"N": 16}, spinup_days=0)
    assert isinstance(experiment, Experiment) and experiment.name == "bao2024_sqg_linear:letkf"
    assert isinstance(experiment.model, SQGModel) and experiment.model.state_units == "K"
    assert isinstance(experiment.analysis, LETKF) and experiment.analysis.config == preset.letkf
    assert experiment.preset.steps_per_cycle == experiment.config.steps_per_cycle == 9  # 12 h
    assert experiment.initial_ensemble.shape == (3, 2, 16, 16)
    l96 = build_experiment(get_preset("sakov2008"), "ensf")
    assert isinstance(l96.model, Lorenz96) and isinstance(l96.analysis, EnSF)
    assert l96.initial_ensemble.dtype.is_floating_point and l96.analysis.config == PRESETS[
        "sakov2008"].ensf
    assert build_experiment(preset, "free", model_overrides={"N": 16}, spinup_days=0).analysis \
        is None
    assert set(available_models()) >= {"sqg", "lorenz96", "vit"}
    assert isinstance(model_setup(get_preset("hoteit2015")).model, ForecastModel)


def test_builder_refuses_models_that_do_not_fit_the_preset():
    vit = get_preset("sc24_vit_ensf").replace(n_cycles=2, spinup_cycles=0)
    with pytest.raises(InputError, match="pass build_experiment.*model="):
        build_experiment(vit, "ensf")
    with pytest.raises(InputError, match="builds its own lorenz96 model"):
        build_experiment("sakov2008", "letkf", model=Lorenz96(40))
    with pytest.raises(InputError, match="unknown model 'gcm'"):
        build_experiment(get_preset("sakov2008").replace(model="gcm"), "letkf")
    with pytest.raises(InputError, match="unknown observation operator 'radar'"):
        build_experiment(get_preset("sakov2008").replace(obs="radar"), "letkf")
    # a surrogate of the right grid but no stored truth: nothing to run on the fly
    sqg = SQGModel(bao2024_at_resolution(16), state_units="K")

    class TwelveHours:
        state_shape, dt, time_unit_seconds = (2, 16, 16), 43200.0, 1.0
        step, advance = sqg.step, sqg.advance

    with pytest.raises(InputError, match="cannot run a truth on the fly"):
        build_experiment(vit, "ensf", model=TwelveHours(), model_overrides={"N": 16})
