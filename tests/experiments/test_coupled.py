"""Coupled ViT+EnSF experiments and their baselines on one shared truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.experiments.adapters import KelvinModel
from turbda_kit.experiments.coupled import COUPLED_EXPERIMENTS, run_coupled
from turbda_kit.experiments.surrogate_model import SurrogateModel
from turbda_kit.models.sqg import SQGModel, bao2024_at_resolution, random_initial_state
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.vit import ViT

N, CYCLES = 16, 5


@pytest.fixture(scope="module")
def truth():
    params = bao2024_at_resolution(N)
    model = KelvinModel(SQGModel(params))
    x = random_initial_state(params, torch.Generator().manual_seed(0)) * params.scalefact
    x = model.advance(x, int(20 * 86400 / params.dt))
    states = [x]
    for _ in range(CYCLES):
        states.append(model.advance(states[-1], int(43200 / params.dt)))
    return torch.stack(states).float().numpy()


class BiasedSQG:
    """A stand-in surrogate with model error: the SQG 12-h forecast, damped by 30%.

    It has the surrogate's interface (``state_shape``, ``dt``, ``advance``,
    ``check_grid``) and, unlike an untrained ViT (whose zero-initialised head predicts the
    same field for every member), a real forecast error that the filter must correct.
    """

    time_unit_seconds = 1.0

    def __init__(self):
        params = bao2024_at_resolution(N)
        self.physics = KelvinModel(SQGModel(params))
        self.steps = int(43200 / params.dt)
        self.state_shape, self.dt = (2, N, N), 43200.0

    def check_grid(self, shape):
        SurrogateModel.check_grid(self, shape)

    variables = ("sqg_0", "sqg_10000")

    def advance(self, state, n_steps):
        for _ in range(n_steps):
            state = 0.7 * self.physics.advance(state.double(), self.steps).to(state.dtype)
        return state


@pytest.fixture(scope="module")
def surrogate():
    return BiasedSQG()


def test_vit_surrogate_runs_in_the_coupled_loop(truth):
    vit = ViT(load_vit_config("tiny", img_size=N), generator=torch.Generator().manual_seed(1))
    model = SurrogateModel(vit, truth.mean(axis=(0, 2, 3)), truth.std(axis=(0, 2, 3)))
    ds = run_coupled("vit_ensf", truth, surrogate=model, n_cycles=2, n_members=4, spinup_cycles=0,
                     show_progress=False)
    assert np.isfinite(ds.rmse_analysis).all() and np.isfinite(ds.surrogate_drift).all()


def test_all_experiments_run_on_the_same_truth(truth, surrogate):
    results = {kind: run_coupled(kind, truth, surrogate=surrogate, n_cycles=CYCLES, n_members=6,
                                 spinup_cycles=0, seed=3, show_progress=False)
               for kind in COUPLED_EXPERIMENTS}
    for kind, ds in results.items():
        assert ds.sizes["cycle"] == CYCLES and np.isfinite(ds.rmse_analysis).all(), kind
        np.testing.assert_allclose(ds.truth.values[-1], truth[-1] if kind not in (
            "vit_ensf_shocks", "sqg_letkf", "sqg_ensf", "sqg_free") or ds.shock_std.values[-1] == 0
            else ds.truth.values[-1], rtol=1e-6)
    # a biased surrogate drifts away alone; EnSF keeps it near the truth
    assert results["vit_ensf"].attrs["mean_rmse_analysis"] < results["vit_only"].attrs["mean_rmse_analysis"]
    assert np.isfinite(results["vit_ensf"].surrogate_drift).all()
    assert results["vit_ensf"].surrogate_drift.values.min() > 0
    assert results["vit_ensf_shocks"].shock_std.values.max() > 0 or CYCLES < 3
    assert (results["vit_ensf"].shock_std == 0).all()
    assert results["vit_only"].attrs["reported_rmse_sc24"] == 10.5


def test_bad_input(truth, surrogate):
    with pytest.raises(InputError, match="needs a trained surrogate"):
        run_coupled("vit_ensf", truth, n_cycles=2)
    with pytest.raises(InputError, match="unknown experiment"):
        run_coupled("vit_letkf", truth, surrogate=surrogate)
    with pytest.raises(InputError, match="training grid"):
        run_coupled("vit_ensf", np.zeros((4, 2, 8, 8), np.float32), surrogate=surrogate, n_cycles=2)
    with pytest.raises(InputError, match="covers 5 cycles"):
        run_coupled("vit_ensf", truth, surrogate=surrogate, n_cycles=10)


def test_drift_diagnostic_gives_nan_where_sqg_cannot_step_the_state():
    from turbda_kit.errors import DivergenceError
    from turbda_kit.experiments.coupled import surrogate_drift_diagnostic

    class Unsteppable:
        def advance(self, state, steps):
            raise DivergenceError("CFL number 1.02 exceeds cfl_max = 1.0")

    class Identity:
        def advance(self, state, steps):
            return state

    ensemble = torch.zeros(3, 2, N, N)
    diagnose = surrogate_drift_diagnostic(Identity(), Unsteppable(), 36)
    assert np.isnan(diagnose(0, ensemble, ensemble, ensemble, ensemble[0])["surrogate_drift"])
    diagnose = surrogate_drift_diagnostic(Identity(), Identity(), 36)
    assert diagnose(0, ensemble, ensemble, ensemble, ensemble[0])["surrogate_drift"] == 0.0
