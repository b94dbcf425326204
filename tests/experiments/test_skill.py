"""Forecast skill by lead time and the baselines, scored by the cycling engine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.experiments import build_experiment, get_preset, run_comparison
from turbda_kit.experiments.cycling import (
    CHECKPOINT_NAME,
    TIMING_VARIABLES,
    CyclingConfig,
    run_cycling,
)
from turbda_kit.experiments.initial import ensemble_around_truth
from turbda_kit.experiments.skill import SkillConfig
from turbda_kit.experiments.truth import ModelTruth
from turbda_kit.filters import as_filter
from turbda_kit.models.lorenz96 import Lorenz96
from turbda_kit.obs.operators import Identity

N_VARS, N_MEMBERS = 40, 8


def _nudge(forecast, obs, operator, obs_error_std, generator):
    noise = torch.empty_like(forecast).normal_(generator=generator)
    return 0.5 * forecast + 0.5 * obs.reshape(forecast.shape[1:]) + 0.1 * noise


@pytest.fixture
def setup():
    model = Lorenz96(N_VARS, dt=0.05)
    x0 = 8.0 + torch.randn(N_VARS, generator=torch.Generator().manual_seed(3),
                           dtype=torch.float64)
    x_true = model.advance(x0, 500)
    ensemble = ensemble_around_truth(x_true, N_MEMBERS, 1.0, torch.Generator().manual_seed(4))
    return model, x_true, ensemble


def test_config_validation_and_hours():
    assert SkillConfig.from_hours([24, 12, 72], 12.0).lead_cycles == (1, 2, 6)
    with pytest.raises(InputError, match="multiple"):
        SkillConfig.from_hours([18], 12.0)
    for bad in ({"lead_cycles": ()}, {"lead_cycles": (0,)}, {"lead_cycles": (1, 1)},
                {"every": 0}, {"launch": "median"}):
        with pytest.raises(InputError):
            SkillConfig(**bad)


def test_scores_match_forecasts_made_by_hand(setup):
    model, x_true, ensemble = setup
    config = CyclingConfig(n_cycles=12, steps_per_cycle=2, obs_error_std=0.5, spinup_cycles=2,
                           save_means=True, seed=1)
    skill = SkillConfig(lead_cycles=(1, 3), every=2)
    ds = run_cycling(model, as_filter(_nudge, "nudge"), Identity((N_VARS,)),
                     ModelTruth(model, x_true, 2), ensemble, config, skill=skill,
                     show_progress=False)
    # launches at cycles 3, 5, 7, 9 (9 + 3 <= 12; 11 + 3 > 12)
    truth = torch.as_tensor(ds["truth"].values, dtype=torch.float64)
    means = torch.as_tensor(ds["analysis_mean"].values, dtype=torch.float64)
    expected, persistence = [], []
    for lead in (1, 3):
        errors, persisted = [], []
        for launch in (3, 5, 7, 9):
            forecast = model.advance(means[launch - 1], 2 * lead)
            errors.append(float((forecast - truth[launch + lead - 1]).square().mean().sqrt()))
            persisted.append(float((truth[launch - 1] - truth[launch + lead - 1])
                                   .square().mean().sqrt()))
        expected.append(np.mean(errors))
        persistence.append(np.mean(persisted))
    np.testing.assert_allclose(ds["rmse_forecast_lead"].values, expected, rtol=1e-4)
    np.testing.assert_allclose(ds["rmse_persistence_lead"].values, persistence, rtol=1e-5)
    assert ds["n_forecasts_lead"].values.tolist() == [4, 4]
    lead_hours = 2 * 0.05 * model.time_unit_seconds / 3600.0 * np.array([1, 3])
    np.testing.assert_allclose(ds["lead_time"].values, lead_hours)
    assert ds["lead_time"].attrs["units"] == "h"
    assert ds["lead_time"].attrs["standard_name"] == "forecast_period"
    scored = truth[2:]
    climatology = float((scored - scored.mean(0)).square().mean().sqrt())
    assert float(ds["rmse_climatology"]) == pytest.approx(climatology, rel=1e-5)
    # dense identity observations: the observation error
    assert float(ds.attrs["mean_rmse_obs_only"]) == pytest.approx(0.5, rel=0.3)
    for name in ("rmse_forecast_lead", "rmse_persistence_lead", "rmse_climatology",
                 "rmse_obs_only", "n_forecasts_lead"):
        assert ds[name].attrs["long_name"] and "units" in ds[name].attrs


def test_a_resumed_run_scores_what_an_uninterrupted_one_does(setup, tmp_path):
    model, x_true, ensemble = setup
    config = CyclingConfig(n_cycles=12, steps_per_cycle=2, obs_error_std=0.5, spinup_cycles=2,
                           checkpoint_every=4, seed=2)
    skill = SkillConfig(lead_cycles=(1, 2, 4), every=1, launch="ensemble")
    nudge = as_filter(_nudge, "nudge")

    def run(**kwargs):
        return run_cycling(model, nudge, Identity((N_VARS,)), ModelTruth(model, x_true, 2),
                           ensemble, config, skill=skill, show_progress=False, **kwargs)

    reference = run()

    class Killed(Exception):
        pass

    def kill(cycle, record):
        if cycle == 10:
            raise Killed()

    with pytest.raises(Killed):
        run(out_dir=tmp_path, on_cycle_end=kill)
    assert (tmp_path / CHECKPOINT_NAME).exists()
    resumed = run(out_dir=tmp_path)
    for name in reference.data_vars:
        if name not in TIMING_VARIABLES:
            np.testing.assert_array_equal(resumed[name].values, reference[name].values,
                                          err_msg=name)


def test_summary_json_carries_skill_and_baselines(tmp_path):
    preset = get_preset("bao2024_sqg_linear").replace(n_cycles=5, spinup_cycles=1, n_members=4)
    skill = SkillConfig.from_hours([12, 24], 12.0, every=1)
    comparison = run_comparison(
        ["free"], lambda name: build_experiment(preset, name, model_overrides={"N": 16},
                                                spinup_days=1.0, skill=skill),
        tmp_path, prefix="cycling", verbose=False, show_progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())["free"]
    assert set(summary["forecast_rmse_by_lead_hours"]) == {"12", "24"}
    assert summary["forecasts_per_lead"] == 2   # launches at cycles 2 and 3
    assert summary["climatology_rmse"] > 0
    assert summary["obs_only_rmse"] == pytest.approx(1.0, rel=0.1)
    ds = comparison.results["free"]
    assert ds["rmse_forecast_lead"].attrs["units"] == "K"
    assert not math.isnan(float(ds["rmse_forecast_lead"][0]))
