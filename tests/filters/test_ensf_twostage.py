"""The two-stage EnSF: it is the EnSF when everything is observed, its regression is the
Kalman gain's, and it moves unobserved points toward the truth."""

from __future__ import annotations

import math

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.experiments import build_experiment, get_preset
from turbda_kit.filters import EnSFConfig, TwoStageEnSFConfig, make_filter
from turbda_kit.filters.base import FilterGeometry
from turbda_kit.filters.ensf import ensf_analysis
from turbda_kit.filters.ensf_twostage import localization_matrix, regression_increments
from turbda_kit.filters.localization import grid_positions
from turbda_kit.obs.operators import DifferentiableObs, Identity, Subset

ENSF = EnSFConfig(n_steps=40, normalize=True, likelihood_step="implicit",
                  likelihood_weight=3.0)


def test_with_every_point_observed_it_is_the_ensf():
    gen = torch.Generator().manual_seed(0)
    forecast = torch.randn(6, 2, 6, 6, generator=gen)
    truth = torch.zeros(2, 6, 6)
    operator = Identity((2, 6, 6))
    obs = operator(truth) + 0.5 * torch.randn(72, generator=gen)
    twostage = make_filter("ensf_twostage", TwoStageEnSFConfig(ensf=ENSF))
    expected = ensf_analysis(forecast, obs, operator, 0.5, 7, ENSF)
    assert torch.equal(twostage(forecast, obs, operator, 0.5, 7), expected)


def test_regression_is_the_kalman_gain_of_the_localised_covariance():
    """Linear-Gaussian toy: the Kalman update with B = rho * P, split into observed and
    unobserved points; regressing the observed increments gives the unobserved ones."""
    n, m, length = 30, 8, 30.0
    gen = torch.Generator().manual_seed(1)
    positions = grid_positions((n,), (length,)).reshape(n, 1)
    ensemble = torch.randn(m, n, generator=gen, dtype=torch.float64).cumsum(1) / 3
    observed = torch.tensor([2, 5, 11, 12, 19, 27])
    unobserved = torch.tensor([i for i in range(n) if i not in observed.tolist()])
    config = TwoStageEnSFConfig(localization_radius=6.0, ridge=0.0)
    anomalies = ensemble - ensemble.mean(0)
    rho = localization_matrix(positions, positions, (length,), 6.0)
    background = rho * (anomalies.T @ anomalies) / (m - 1)
    obs_error_var = 0.3
    h = torch.eye(n, dtype=torch.float64)[observed]
    innovation = torch.randn(observed.numel(), generator=gen, dtype=torch.float64)
    gain = background @ h.T @ torch.linalg.inv(h @ background @ h.T
                                               + obs_error_var * torch.eye(observed.numel(),
                                                                           dtype=torch.float64))
    kalman_increment = gain @ innovation                                   # (n,)
    # every member gets the same increment: the regression is linear, member by member
    increments = kalman_increment[observed].expand(m, -1)
    regressed = regression_increments(ensemble[:, observed], ensemble[:, unobserved],
                                      increments, positions[observed], positions[unobserved],
                                      (length,), config)
    torch.testing.assert_close(regressed, kalman_increment[unobserved].expand(m, -1),
                               rtol=1e-8, atol=1e-10)


def test_refuses_what_it_cannot_do():
    with pytest.raises(InputError, match="ridge"):
        TwoStageEnSFConfig(localization_radius=math.inf, ridge=0.0)
    with pytest.raises(InputError, match="localization_radius"):
        TwoStageEnSFConfig(localization_radius=-1.0)
    twostage = make_filter("ensf_twostage", TwoStageEnSFConfig(ensf=ENSF,
                                                               localization_radius=3.0))
    forecast = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    user = DifferentiableObs(lambda x: x[..., :3] ** 2, (10,), 3)
    with pytest.raises(InputError, match="grid points"):
        twostage(forecast, torch.zeros(3), user, 1.0, 0)
    with pytest.raises(InputError, match="positions"):
        twostage(forecast, torch.zeros(3), Subset((10,), [0, 4, 8]), 1.0, 0)
    geometry = FilterGeometry(grid_positions((10,), (10.0,)), (10.0,))
    located = make_filter("ensf_twostage", TwoStageEnSFConfig(ensf=ENSF,
                                                              localization_radius=3.0), geometry)
    assert located(forecast, torch.zeros(3), Subset((10,), [0, 4, 8]), 1.0, 0).shape == (4, 10)


def _large_scale(shape, generator, max_wavenumber=2):
    """Random fields of unit std with only the wavenumbers up to ``max_wavenumber``."""
    spectrum = torch.fft.rfft2(torch.randn(shape, generator=generator, dtype=torch.float64))
    ky = torch.fft.fftfreq(shape[-2]) * shape[-2]
    kx = torch.fft.rfftfreq(shape[-1]) * shape[-1]
    keep = (ky[:, None].abs() <= max_wavenumber) & (kx[None, :] <= max_wavenumber)
    field = torch.fft.irfft2(spectrum * keep, s=shape[-2:])
    return field / field.std()


def test_unobserved_points_move_toward_the_truth_on_sqg():
    """A 16² SQG truth, a quarter of the points observed, forecast errors of the scales
    the members span: the plain EnSF leaves the unobserved points at their prior, the
    two-stage filter corrects them about as much as the LETKF does."""
    preset = get_preset("sqgturb_lgetkf_cv").replace(n_cycles=1, spinup_cycles=0,
                                                     n_members=12)
    preset = preset.with_network({"n_obs": 128, "resample": "fixed"})
    preset = preset.with_filter_settings("ensf_twostage", {"localization_radius": 2.5e6})
    preset = preset.with_filter_settings("letkf", {"localization_radius": 2.5e6})
    errors = {}
    for name in ("ensf", "ensf_twostage", "letkf"):
        experiment = build_experiment(preset, name, model_overrides={"N": 16},
                                      spinup_days=2.0, seed=4)
        truth = experiment.truth.state(0)
        generator = torch.Generator().manual_seed(9)
        forecast = (truth + 2.0 * _large_scale((2, 16, 16), generator)
                    + 2.0 * _large_scale((12, 2, 16, 16), generator)).to(truth.dtype)
        operator = experiment.obs_operator
        obs = operator(truth) + torch.randn(operator.n_obs,
                                            generator=torch.Generator().manual_seed(5))
        analysis = experiment.analysis(forecast, obs, operator, 1.0, 11)
        unobserved = torch.ones(truth.numel(), dtype=torch.bool)
        unobserved[operator.indices] = False

        def rmse(ensemble, points=unobserved, truth=truth):
            return float((ensemble.mean(0) - truth).reshape(-1)[points].square().mean().sqrt())

        errors[name] = rmse(analysis)
        prior = rmse(forecast)
    assert abs(errors["ensf"] - prior) < 0.05 * prior           # plain EnSF: the prior
    assert errors["ensf_twostage"] < 0.9 * prior                 # two-stage: corrected
    assert errors["ensf_twostage"] < 1.1 * errors["letkf"]       # about as the LETKF
