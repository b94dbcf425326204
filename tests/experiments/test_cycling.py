"""The cycling engine: free runs, filters, resume-after-kill identity, divergence, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from turbda_kit.errors import DivergenceError, InputError
from turbda_kit.experiments.cycling import (
    CHECKPOINT_NAME,
    DIVERGED_NAME,
    TIMING_VARIABLES,
    ArrayTruth,
    CyclingConfig,
    ModelTruth,
    run_cycling,
)
from turbda_kit.experiments.initial import ensemble_around_truth
from turbda_kit.models.lorenz96 import Lorenz96
from turbda_kit.obs.operators import Identity

N_VARS, N_MEMBERS = 40, 10


def _truth(model):
    x0 = 8.0 + torch.randn(N_VARS, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return model.advance(x0, 500)  # onto the attractor


def nudging_analysis(forecast, obs, operator, obs_error_std, generator):
    """A stand-in filter: pull every member half-way to the (fully observed) obs, plus noise."""
    noise = torch.empty_like(forecast).normal_(generator=generator)
    return 0.5 * forecast + 0.5 * obs.reshape(forecast.shape[1:]) + 0.1 * noise


@pytest.fixture
def setup():
    model = Lorenz96(N_VARS, dt=0.05)
    x_true = _truth(model)
    ensemble = ensemble_around_truth(x_true, N_MEMBERS, 1.0, torch.Generator().manual_seed(4))
    return model, x_true, ensemble


def test_free_run_has_no_analysis_effect_and_grows_error(setup):
    model, x_true, ensemble = setup
    cfg = CyclingConfig(n_cycles=20, steps_per_cycle=1, obs_error_std=1.0)
    ds = run_cycling(model, None, Identity((N_VARS,)), ModelTruth(model, x_true, 1), ensemble, cfg,
                     show_progress=False)
    np.testing.assert_array_equal(ds.rmse_forecast.values, ds.rmse_analysis.values)
    assert ds.rmse_analysis.values[-1] > ds.rmse_analysis.values[0]
    assert int(ds.rank_histogram.sum()) == 20 * N_VARS


def test_filter_beats_free_run_and_records_everything(setup):
    model, x_true, ensemble = setup
    cfg = CyclingConfig(n_cycles=30, steps_per_cycle=1, obs_error_std=0.5, spinup_cycles=5,
                        save_means=True)
    truth = ModelTruth(model, x_true, 1)
    ds = run_cycling(model, nudging_analysis, Identity((N_VARS,)), truth, ensemble, cfg,
                     show_progress=False)
    free = run_cycling(model, None, Identity((N_VARS,)), ModelTruth(model, x_true, 1), ensemble,
                       cfg, show_progress=False)
    assert ds.attrs["mean_rmse_analysis"] < 0.5 * free.attrs["mean_rmse_analysis"]
    assert float(ds.rmse_analysis.mean()) < float(ds.rmse_forecast.mean())
    for name in ("spread_analysis", "crps_analysis", "innovation_mean", "innovation_std",
                 "time_forecast_s", "time_analysis_s"):
        assert np.isfinite(ds[name].values).all(), name
    assert ds.analysis_mean.dims == ("cycle", "i") and ds.truth.shape == (30, N_VARS)
    # the stored mean reproduces the stored RMSE
    err = ds.analysis_mean - ds.truth
    np.testing.assert_allclose(np.sqrt((err ** 2).mean("i")), ds.rmse_analysis, rtol=1e-5)
    assert int(ds.rank_histogram.sum()) == 25 * N_VARS
    assert ds.attrs["realtime_factor"] > 0 and "provenance_git_revision" in ds.attrs


def test_killed_run_resumes_to_identical_dataset(setup, tmp_path):
    model, x_true, ensemble = setup
    cfg = CyclingConfig(n_cycles=12, steps_per_cycle=2, obs_error_std=0.5, checkpoint_every=4,
                        save_means=True, seed=11)
    reference = run_cycling(model, nudging_analysis, Identity((N_VARS,)), ModelTruth(model, x_true, 2),
                            ensemble, cfg, show_progress=False)

    class Killed(Exception):
        pass

    def kill_at_cycle_10(cycle, record):
        if cycle == 10:
            raise Killed()

    out = tmp_path / "exp"
    with pytest.raises(Killed):
        run_cycling(model, nudging_analysis, Identity((N_VARS,)), ModelTruth(model, x_true, 2),
                    ensemble, cfg, out_dir=out, on_cycle_end=kill_at_cycle_10, show_progress=False)
    assert (out / CHECKPOINT_NAME).exists()  # written at cycle 8
    resumed = run_cycling(model, nudging_analysis, Identity((N_VARS,)), ModelTruth(model, x_true, 2),
                          ensemble, cfg, out_dir=out, show_progress=False)
    compare = [v for v in reference.data_vars if v not in TIMING_VARIABLES]
    for v in compare:
        np.testing.assert_array_equal(resumed[v].values, reference[v].values, err_msg=v)


def test_checkpoint_of_other_settings_is_refused(setup, tmp_path):
    model, x_true, ensemble = setup
    cfg = CyclingConfig(n_cycles=4, steps_per_cycle=1, obs_error_std=0.5, checkpoint_every=2)
    run_cycling(model, None, Identity((N_VARS,)), ModelTruth(model, x_true, 1), ensemble, cfg,
                out_dir=tmp_path, show_progress=False)
    other = CyclingConfig(n_cycles=4, steps_per_cycle=1, obs_error_std=0.7, checkpoint_every=2)
    with pytest.raises(InputError, match="other settings"):
        run_cycling(model, None, Identity((N_VARS,)), ModelTruth(model, x_true, 1), ensemble, other,
                    out_dir=tmp_path, show_progress=False)


def test_divergence_stops_and_saves_last_good_state(setup, tmp_path):
    model, x_true, ensemble = setup

    calls = []

    def exploding(forecast, obs, operator, std, generator):
        calls.append(1)
        return forecast * math.inf if len(calls) == 3 else forecast

    cfg = CyclingConfig(n_cycles=10, steps_per_cycle=1, obs_error_std=0.5)
    with pytest.raises(DivergenceError, match="diverged at cycle 3") as err:
        run_cycling(model, exploding, Identity((N_VARS,)), ModelTruth(model, x_true, 1), ensemble,
                    cfg, out_dir=tmp_path, show_progress=False)
    saved = torch.load(tmp_path / DIVERGED_NAME, weights_only=True)
    assert err.value.saved_path.endswith(DIVERGED_NAME)
    assert saved["cycle"] == 2 and torch.isfinite(saved["ensemble"]).all()


def test_rmse_threshold_divergence(setup):
    model, x_true, ensemble = setup
    cfg = CyclingConfig(n_cycles=50, steps_per_cycle=1, obs_error_std=0.5, divergence_rmse=0.5)
    with pytest.raises(DivergenceError, match="above divergence_rmse"):
        run_cycling(model, None, Identity((N_VARS,)), ModelTruth(model, x_true, 1), ensemble, cfg,
                    show_progress=False)


def test_array_truth_and_bad_input(setup):
    model, x_true, ensemble = setup
    traj = torch.stack([x_true] * 3)
    truth = ArrayTruth(traj, dtype=torch.float64)
    assert truth.n_cycles_available() == 2
    cfg = CyclingConfig(n_cycles=5, steps_per_cycle=1, obs_error_std=0.5)
    with pytest.raises(InputError, match="cycle 3 needs index 3"):
        run_cycling(model, None, Identity((N_VARS,)), truth, ensemble, cfg, show_progress=False)
    with pytest.raises(InputError, match="does not match the model grid"):
        run_cycling(model, None, Identity((N_VARS,)), ArrayTruth(torch.zeros(3, 20)), ensemble, cfg,
                    show_progress=False)
    for bad in (dict(n_cycles=0), dict(steps_per_cycle=0), dict(obs_error_std=0.0),
                dict(spinup_cycles=5)):
        kwargs = dict(n_cycles=5, steps_per_cycle=1, obs_error_std=0.5) | bad
        with pytest.raises(InputError):
            CyclingConfig(**kwargs)


def test_model_blow_up_is_a_divergence_with_the_state_saved(setup, tmp_path):
    model, x_true, ensemble = setup

    class Exploding:
        state_shape, dt = model.state_shape, model.dt

        def advance(self, state, n_steps):
            if Exploding.calls == 2:
                raise DivergenceError("CFL number 3 exceeds cfl_max")
            Exploding.calls += 1
            return model.advance(state, n_steps)

    Exploding.calls = 0
    cfg = CyclingConfig(n_cycles=5, steps_per_cycle=1, obs_error_std=0.5)
    with pytest.raises(DivergenceError, match="cycle 3: the forecast model stopped: CFL") as err:
        run_cycling(Exploding(), nudging_analysis, Identity((N_VARS,)), ModelTruth(model, x_true, 1),
                    ensemble, cfg, out_dir=tmp_path, show_progress=False)
    assert err.value.cycle == 3
    saved = torch.load(tmp_path / DIVERGED_NAME, weights_only=True)
    assert saved["cycle"] == 2 and np.isfinite(saved["records"]["rmse_analysis"][:2].numpy()).all()
