"""Coupled ViT+EnSF experiments and their baselines on one shared truth.

The strongest check is an equivalence: a "surrogate" that is the SQG model itself (one
step = one 12-h SQG forecast) must give, cycle for cycle and bit for bit, the SQG+EnSF
baseline of the same settings — the coupled runs and the baselines share the truth, the
ensemble, every observation draw and the filter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbda_kit.errors import DivergenceError, InputError
from turbda_kit.experiments.coupled import (
    COUPLED_EXPERIMENTS,
    coupled_experiment,
    run_coupled,
    surrogate_drift_diagnostic,
)
from turbda_kit.experiments.cycling import TIMING_VARIABLES
from turbda_kit.experiments.initial import ensemble_around_truth
from turbda_kit.experiments.presets import PRESETS, VIT_ENSF_SETTINGS
from turbda_kit.filters.ensf import ensf_analysis
from turbda_kit.metrics import rmse
from turbda_kit.models.sqg import SQGModel, bao2024_at_resolution, random_initial_state
from turbda_kit.obs.operators import Identity
from turbda_kit.random_streams import cycle_generator
from turbda_kit.surrogate import SurrogateModel
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.vit import ViT

N, CYCLES = 16, 5
PARAMS = bao2024_at_resolution(N)
STEPS = int(43200 / PARAMS.dt)
#: The SQG preset's EnSF, i.e. undoing the ViT presets' VIT_ENSF_SETTINGS.
SQG_ENSF = {"normalize": PRESETS["yin2024_sqg_shocks"].ensf.normalize,
            "likelihood_weight": PRESETS["yin2024_sqg_shocks"].ensf.likelihood_weight}


@pytest.fixture(scope="module")
def truth():
    model = SQGModel(PARAMS, state_units="K")
    x = random_initial_state(PARAMS, torch.Generator().manual_seed(0)) * PARAMS.scalefact
    x = model.advance(x, int(20 * 86400 / PARAMS.dt))
    states = [x]
    for _ in range(CYCLES):
        states.append(model.advance(states[-1], STEPS))
    return torch.stack(states).float().numpy()


class SQGAsSurrogate:
    """A 'surrogate' whose one step is the SQG model's 12-h forecast (states in K)."""

    time_unit_seconds = 1.0

    def __init__(self, damping: float = 1.0):
        self.physics = SQGModel(PARAMS, state_units="K")
        self.state_shape, self.dt = (2, N, N), 43200.0
        self.damping = damping

    def step(self, state):
        return self.advance(state, 1)

    def advance(self, state, n_steps):
        for _ in range(n_steps):
            state = self.physics.advance(state, STEPS)
            if self.damping != 1.0:
                state = self.damping * state
        return state


@pytest.fixture(scope="module")
def biased():
    """A stand-in with model error: the SQG 12-h forecast, damped by 30%. Unlike an
    untrained ViT (whose zero-initialised head predicts the same field for every member),
    it has a real forecast error that the filter must correct."""
    return SQGAsSurrogate(damping=0.7)


def _same_cycles(a, b, skip=()):
    compared = [v for v in a.data_vars if v not in (*TIMING_VARIABLES, *skip)]
    assert compared and set(compared) <= set(b.data_vars)
    for v in compared:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


@pytest.mark.parametrize("shocks", [False, True])
def test_vit_ensf_with_sqg_as_surrogate_equals_the_sqg_ensf_run(truth, shocks):
    kind = "vit_ensf_shocks" if shocks else "vit_ensf"
    common = dict(n_cycles=CYCLES, n_members=6, spinup_cycles=1, seed=3, show_progress=False)
    coupled = run_coupled(kind, truth, surrogate=SQGAsSurrogate(), vit_ensf_settings=SQG_ENSF,
                          **common)
    baseline = run_coupled("sqg_ensf", truth, shocks=shocks, **common)
    _same_cycles(coupled, baseline, skip=("surrogate_drift", "rmse_forecast_surrogate",
                                          "rmse_forecast_physics"))
    assert (coupled.shock_std.values > 0).any() == shocks or CYCLES < 3
    assert coupled.attrs["mean_rmse_analysis"] == baseline.attrs["mean_rmse_analysis"]
    # the surrogate is the physics: the drift diagnostic sees float32-vs-float64 round-off only
    assert float(np.abs(coupled.surrogate_drift).max()) < 1e-3


def test_vit_twostage_on_a_sparse_network_equals_the_sqg_run_of_that_preset(truth):
    # The surrogate is the physics, the EnSF settings are the SQG preset's: the coupled
    # run on the network of sqgturb_lgetkf_cv is that preset's own SQG experiment.
    common = dict(n_cycles=CYCLES, n_members=6, spinup_cycles=1, seed=3, show_progress=False,
                  network_preset="sqgturb_lgetkf_cv", network_changes={"n_obs": 128})
    coupled = run_coupled("vit_ensf_twostage", truth, surrogate=SQGAsSurrogate(),
                          vit_ensf_settings=SQG_ENSF, **common)
    baseline = run_coupled("sqg_ensf_twostage", truth, **common)
    _same_cycles(coupled, baseline, skip=("surrogate_drift", "rmse_forecast_surrogate",
                                          "rmse_forecast_physics"))
    assert "sqgturb_lgetkf_cv" in coupled.attrs["obs_network"] or coupled.attrs["obs"] == "network"
    assert coupled.attrs["preset"] == "sc24_vit_ensf+sqgturb_lgetkf_cv"
    assert baseline.attrs["preset"] == "sqgturb_lgetkf_cv"
    # the same analyses forecast by the 'surrogate' and by SQG: equal skill up to round-off
    np.testing.assert_allclose(coupled.rmse_forecast_surrogate, coupled.rmse_forecast_physics,
                               atol=1e-3)
    with pytest.raises(InputError, match="has no observation network"):
        coupled_experiment("sqg_ensf", truth, network_preset="bao2024_sqg_linear")
    with pytest.raises(InputError, match="needs a network_preset"):
        coupled_experiment("sqg_ensf", truth, network_changes={"n_obs": 3})


def test_surrogate_skill_beside_the_physics_and_forecast_skill(truth, biased, tmp_path):
    from turbda_kit.experiments import SkillConfig, run_comparison

    comparison = run_comparison(
        ["vit_ensf"], lambda kind: coupled_experiment(
            kind, truth, surrogate=biased, n_cycles=CYCLES, n_members=4, spinup_cycles=1,
            skill=SkillConfig(lead_cycles=(1, 2), every=1)), tmp_path, prefix="coupled",
        show_progress=False, verbose=False)
    ds = comparison.results["vit_ensf"]
    # the damped 'surrogate' forecasts worse than the physics from the same analyses
    assert (ds.rmse_forecast_surrogate > ds.rmse_forecast_physics).all()
    entry = comparison.summary()["vit_ensf"]
    assert entry["mean_rmse_forecast_surrogate"] == pytest.approx(
        float(ds.rmse_forecast_surrogate[1:].mean()))
    assert entry["mean_rmse_forecast_physics"] < entry["mean_rmse_forecast_surrogate"]
    assert "lead_time" in ds.coords and "forecast_rmse_by_lead_hours" in entry


def test_vit_only_is_one_initial_analysis_then_free_forecasts(truth):
    """Rebuild cycle 1 of ``vit_only`` by hand from its documented recipe."""
    seed, members = 4, 6
    ds = run_coupled("vit_only", truth, surrogate=SQGAsSurrogate(), n_cycles=2,
                     n_members=members, spinup_cycles=0, seed=seed, show_progress=False)
    truth0 = torch.as_tensor(truth[0])
    preset = PRESETS["sc24_vit_only"]
    initial = ensemble_around_truth(truth0, members, preset.initial_spread,
                                    cycle_generator(seed, 0, "initial"))
    operator = Identity(truth0.shape)
    noise = torch.empty(operator.n_obs).normal_(generator=cycle_generator(seed, 0, "obs_noise"))
    analysed = ensf_analysis(initial, operator(truth0) + preset.obs_error_std * noise, operator,
                             preset.obs_error_std, cycle_generator(seed, 0, "analysis"),
                             preset.ensf)
    forecast = SQGModel(PARAMS, state_units="K").advance(analysed, STEPS)
    assert ds.rmse_forecast.values[0] == float(rmse(forecast, torch.as_tensor(truth[1])))
    np.testing.assert_array_equal(ds.rmse_forecast.values, ds.rmse_analysis.values)  # free
    assert ds.attrs["reported_rmse"] == 10.5 and ds.attrs["initial_filter"] == "ensf"


def test_vit_presets_hold_the_tuned_physical_unit_ensf():
    for name in ("sc24_vit_only", "sc24_vit_ensf", "sc24_vit_ensf_shocks"):
        ensf = PRESETS[name].ensf
        assert (ensf.normalize, ensf.likelihood_weight) == (
            VIT_ENSF_SETTINGS["normalize"], VIT_ENSF_SETTINGS["likelihood_weight"])
    assert PRESETS["sc24_vit_ensf_shocks"].shocks and not PRESETS["sc24_vit_ensf"].shocks


def test_vit_surrogate_runs_in_the_coupled_loop(truth):
    vit = ViT(load_vit_config("tiny", img_size=N), generator=torch.Generator().manual_seed(1))
    model = SurrogateModel(vit, truth.mean(axis=(0, 2, 3)), truth.std(axis=(0, 2, 3)))
    ds = run_coupled("vit_ensf", truth, surrogate=model, n_cycles=2, n_members=4, spinup_cycles=0,
                     show_progress=False)
    assert np.isfinite(ds.rmse_analysis).all() and np.isfinite(ds.surrogate_drift).all()


def test_all_experiments_run_on_the_same_truth(truth, biased):
    results = {kind: run_coupled(kind, truth, surrogate=biased, n_cycles=CYCLES, n_members=6,
                                 spinup_cycles=0, seed=3, show_progress=False)
               for kind in COUPLED_EXPERIMENTS}
    for kind, ds in results.items():
        assert ds.sizes["cycle"] == CYCLES and np.isfinite(ds.rmse_analysis).all(), kind
        assert ds.attrs["experiment"] == kind == ds.attrs["experiment_kind"]
        unshocked = ds.shock_std.values == 0
        np.testing.assert_array_equal(ds.truth.values[unshocked], truth[1:][unshocked])
    # one truth, one observation draw: the free SQG run and the SQG filters start alike
    for kind in ("sqg_letkf", "sqg_ensf"):
        assert results[kind].rmse_forecast.values[0] == results["sqg_free"].rmse_forecast.values[0]
    # a biased surrogate drifts away alone; EnSF keeps it near the truth
    assert results["vit_ensf"].attrs["mean_rmse_analysis"] < results["vit_only"].attrs["mean_rmse_analysis"]
    assert results["vit_ensf"].surrogate_drift.values.min() > 0
    assert (results["vit_ensf"].shock_std == 0).all()
    # published scores come from the presets, stored once
    assert results["vit_only"].attrs["reported_rmse"] == PRESETS["sc24_vit_only"].reported["free"]
    assert results["sqg_letkf"].attrs["reported_rmse"] == 5.4


def test_bad_input(truth, biased):
    with pytest.raises(InputError, match="needs a trained surrogate"):
        run_coupled("vit_ensf", truth, n_cycles=2)
    with pytest.raises(InputError, match="unknown experiment"):
        run_coupled("vit_letkf", truth, surrogate=biased)
    with pytest.raises(InputError, match="training grid"):
        run_coupled("vit_ensf", np.zeros((4, 2, 8, 8), np.float32), surrogate=biased, n_cycles=2)
    with pytest.raises(InputError, match="covers 5 cycles"):
        run_coupled("vit_ensf", truth, surrogate=biased, n_cycles=10)
    with pytest.raises(InputError, match="unknown EnSFConfig"):
        coupled_experiment("vit_ensf", truth, surrogate=biased, vit_ensf_settings={"weight": 3})


def test_drift_diagnostic_gives_nan_where_sqg_cannot_step_the_state():
    class Unsteppable:
        def advance(self, state, steps):
            raise DivergenceError("CFL number 1.02 exceeds cfl_max = 1.0")

    class Unchanged:
        def advance(self, state, steps):
            return state

    ensemble = torch.zeros(3, 2, N, N)
    diagnose = surrogate_drift_diagnostic(Unchanged(), Unsteppable(), 36)
    assert np.isnan(diagnose(0, ensemble, ensemble, ensemble, ensemble[0])["surrogate_drift"])
    diagnose = surrogate_drift_diagnostic(Unchanged(), Unchanged(), 36)
    assert diagnose(0, ensemble, ensemble, ensemble, ensemble[0])["surrogate_drift"] == 0.0
