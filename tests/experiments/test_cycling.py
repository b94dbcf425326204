"""The cycling engine: free runs, filters, resume-after-kill identity, divergence, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from turbda_kit.errors import DivergenceError, InputError
from turbda_kit.experiments.cycling import (
    CHECKPOINT_NAME,
    DIVERGED_NAME,
    TIMING_VARIABLES,
    CyclingConfig,
    run_cycling,
)
from turbda_kit.experiments.initial import ensemble_around_truth
from turbda_kit.experiments.truth import ArrayTruth, ModelTruth, truth_every
from turbda_kit.filters import as_filter
from turbda_kit.io import write_dataset
from turbda_kit.models.lorenz96 import LORENZ96_TIME_UNIT_SECONDS, Lorenz96
from turbda_kit.obs.operators import Identity
from turbda_kit.testing import synthetic_nature_run

N_VARS, N_MEMBERS = 40, 10


def _truth(model):
    x0 = 8.0 + torch.randn(N_VARS, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return model.advance(x0, 500)  # onto the attractor


def _nudge(forecast, obs, operator, obs_error_std, generator):
    """A stand-in filter: pull every member half-way to the (fully observed) obs, plus noise."""
    noise = torch.empty_like(forecast).normal_(generator=generator)
    return 0.5 * forecast + 0.5 * obs.reshape(forecast.shape[1:]) + 0.1 * noise


nudging_analysis = as_filter(_nudge, "nudging")


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
    assert ds.attrs["filter"] == "nudging" and free.attrs["filter"] == "free"
    # model time from the protocol's time unit: 30 cycles of 0.05 MTU, 5 days per MTU
    assert ds.time_hours.values[-1] == pytest.approx(30 * 0.05 * LORENZ96_TIME_UNIT_SECONDS
                                                     / 3600)


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

    def explode_at_3(forecast, obs, operator, std, generator):
        calls.append(1)
        return forecast * math.inf if len(calls) == 3 else forecast

    exploding = as_filter(explode_at_3, "exploding")

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
        state_shape, dt, time_unit_seconds = model.state_shape, model.dt, 1.0

        def step(self, state):
            return self.advance(state, 1)

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


def test_filter_blow_up_is_a_divergence_naming_the_cycle(setup, tmp_path):
    model, x_true, ensemble = setup

    def give_up_at_2(forecast, obs, operator, std, generator):
        if give_up_at_2.calls == 1:
            raise DivergenceError("EnSF analysis is not finite after 100 steps")
        give_up_at_2.calls += 1
        return forecast

    give_up_at_2.calls = 0
    cfg = CyclingConfig(n_cycles=4, steps_per_cycle=1, obs_error_std=0.5)
    with pytest.raises(DivergenceError, match="cycle 2: the filter stopped: EnSF") as err:
        run_cycling(model, as_filter(give_up_at_2, "giving-up"), Identity((N_VARS,)),
                    ModelTruth(model, x_true, 1), ensemble, cfg, out_dir=tmp_path,
                    show_progress=False)
    assert err.value.cycle == 2
    assert torch.load(tmp_path / DIVERGED_NAME, weights_only=True)["cycle"] == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other_payload"])
def test_a_damaged_checkpoint_is_an_input_error_naming_the_file(setup, tmp_path, damage):
    model, x_true, ensemble = setup
    cfg = CyclingConfig(n_cycles=4, steps_per_cycle=1, obs_error_std=0.5, checkpoint_every=2)
    run_cycling(model, nudging_analysis, Identity((N_VARS,)), ModelTruth(model, x_true, 1),
                ensemble, cfg, out_dir=tmp_path, show_progress=False)
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    if damage == "truncate":   # a kill during a copy, a full disk
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(InputError) as err:
        run_cycling(model, nudging_analysis, Identity((N_VARS,)), ModelTruth(model, x_true, 1),
                    ensemble, cfg, out_dir=tmp_path, show_progress=False)
    message = str(err.value)
    assert str(path) in message and "not a readable cycling checkpoint" in message
    assert "Delete it to restart" in message
    # deleting it, as the message says, restarts the run
    path.unlink()
    ds = run_cycling(model, nudging_analysis, Identity((N_VARS,)), ModelTruth(model, x_true, 1),
                     ensemble, cfg, out_dir=tmp_path, show_progress=False)
    assert ds.sizes["cycle"] == 4


def test_model_and_filter_must_fit_the_protocols(setup):
    model, x_true, ensemble = setup
    cfg = CyclingConfig(n_cycles=2, steps_per_cycle=1, obs_error_std=0.5)

    class NoTimeUnit:
        state_shape, dt = model.state_shape, model.dt
        step, advance = model.step, model.advance

    with pytest.raises(InputError, match="not a ForecastModel .missing: time_unit_seconds"):
        run_cycling(NoTimeUnit(), None, Identity((N_VARS,)), ModelTruth(model, x_true, 1),
                    ensemble, cfg, show_progress=False)
    with pytest.raises(InputError, match="not a Filter"):
        run_cycling(model, _nudge, Identity((N_VARS,)), ModelTruth(model, x_true, 1), ensemble,
                    cfg, show_progress=False)


def test_truth_every_reads_the_stride_from_the_output_interval():
    six_hourly = xr.Dataset(coords={"time": np.arange(9) * 6 * 3600.0})
    assert truth_every(six_hourly, 12.0) == 2 and truth_every(six_hourly, 6.0) == 1
    with pytest.raises(InputError, match="not a whole number"):
        truth_every(six_hourly, 9.0)
    with pytest.raises(InputError, match="not equally spaced"):
        truth_every(xr.Dataset(coords={"time": [0.0, 3600.0, 9000.0]}), 1.0)
    with pytest.raises(InputError, match="at least two"):
        truth_every(xr.Dataset(coords={"time": [0.0]}), 12.0)
    with pytest.raises(InputError, match="cycle_hours"):
        truth_every(six_hourly, 0.0)


def test_truth_every_reads_a_cf_decoded_nature_run(tmp_path):
    """Nature runs store CF time ("seconds since ..."); xarray decodes it to datetimes."""
    nature = synthetic_nature_run(n_days=2, steps_per_day=4)
    write_dataset(nature, tmp_path / "nature.nc")
    with xr.open_dataset(tmp_path / "nature.nc") as decoded:
        assert np.issubdtype(decoded["time"].dtype, np.datetime64)
        assert truth_every(decoded, 12.0) == 2 and truth_every(decoded, 6.0) == 1
