"""The spectral Wiener filter: the closed-form posterior of the homogeneous prior."""

from __future__ import annotations

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.experiments import get_preset
from turbda_kit.filters import (
    SpectralWiener,
    SpectralWienerConfig,
    hartley2,
    make_filter,
    spectral_wiener_analysis,
)
from turbda_kit.obs.operators import Arctan, Identity

N = 16


def _case(seed: int = 0, members: int = 12):
    gen = torch.Generator().manual_seed(seed)
    truth = torch.randn(2, N, N, generator=gen, dtype=torch.float64)
    forecast = truth + 0.7 * torch.randn(members, 2, N, N, generator=gen, dtype=torch.float64)
    obs = truth + torch.randn(truth.shape, generator=gen, dtype=torch.float64)
    return truth, forecast, obs


def test_each_mode_gets_its_kalman_update_and_square_root_spread():
    _, forecast, obs = _case()
    sigma = 0.8
    config = SpectralWienerConfig(spectrum="mode", spread_floor=1e-12)
    analysis = spectral_wiener_analysis(forecast, obs, sigma, config)
    c, y = hartley2(forecast), hartley2(obs)
    prior_var = c.var(0)
    gain = prior_var / (prior_var + sigma**2)
    a = hartley2(analysis)
    torch.testing.assert_close(a.mean(0), c.mean(0) + gain * (y - c.mean(0)), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.var(0), prior_var * (1 - gain), rtol=1e-10, atol=1e-14)


def test_limits_inflation_and_rtps():
    _, forecast, obs = _case(1)
    keep = spectral_wiener_analysis(forecast, obs, 1e8)                 # useless obs
    torch.testing.assert_close(keep, forecast, rtol=0, atol=1e-6)
    exact = spectral_wiener_analysis(forecast, obs, 1e-8)               # perfect obs
    torch.testing.assert_close(exact.mean(0), obs, rtol=0, atol=1e-6)
    assert float(exact.std(0).max()) < 1e-5
    relaxed = spectral_wiener_analysis(forecast, obs, 1.0, SpectralWienerConfig(rtps=1.0))
    torch.testing.assert_close(relaxed - relaxed.mean(0), forecast - forecast.mean(0))
    plain = spectral_wiener_analysis(forecast, obs, 1.0)
    inflated = spectral_wiener_analysis(forecast, obs, 1.0, SpectralWienerConfig(inflation=2.0))
    # more prior variance: closer to the observations, more spread
    assert (inflated.mean(0) - obs).norm() < (plain.mean(0) - obs).norm()
    assert inflated.std(0).mean() > plain.std(0).mean()


def test_filters_white_observation_noise_out_of_a_red_field():
    """With a red prior the small-scale noise of dense observations is left out: better
    than both the forecast and the point-by-point combination."""
    from tests.filters.test_ensf_spectral import _red_field  # the same red fields

    gen = torch.Generator().manual_seed(2)
    size = 32
    truth = 2.0 * _red_field((2, size, size), gen)
    members = _red_field((40, 2, size, size), gen)
    forecast = truth + 0.8 * _red_field((2, size, size), gen) + 0.8 * (members - members.mean(0))
    obs = truth + torch.randn(truth.shape, generator=gen, dtype=torch.float64)
    analysis = SpectralWiener()(forecast, obs.reshape(-1), Identity((2, size, size)), 1.0, None)

    def error(field):
        return float((field - truth).square().mean().sqrt())

    point_var = forecast.var(0)
    per_point = forecast.mean(0) + point_var / (point_var + 1.0) * (obs - forecast.mean(0))
    assert analysis.dtype == forecast.dtype and analysis.shape == forecast.shape
    assert error(analysis.mean(0)) < 0.7 * error(per_point)
    assert error(analysis.mean(0)) < 0.6 * error(forecast.mean(0))


def test_registered_in_presets_and_refuses_what_it_cannot_do():
    assert isinstance(make_filter("wiener_spectral"), SpectralWiener)
    preset = get_preset("bao2024_sqg_linear").with_filter_settings("wiener_spectral",
                                                                   {"inflation": 1.2})
    assert preset.filter_settings("wiener_spectral").inflation == 1.2
    ensemble, obs = torch.zeros(4, 2, 8, 8), torch.zeros(128)
    wiener = SpectralWiener()
    with pytest.raises(InputError, match="identity observations"):
        wiener(ensemble, obs, Arctan((2, 8, 8)), 1.0, None)
    with pytest.raises(InputError, match="one observation error std"):
        wiener(ensemble, obs, Identity((2, 8, 8)), torch.ones(128), None)
    with pytest.raises(InputError, match="needs every value"):
        wiener(ensemble, obs, Identity((128,)), 1.0, None)
    with pytest.raises(InputError, match="2-D field"):
        spectral_wiener_analysis(torch.zeros(4, 8), torch.zeros(8), 1.0)
    with pytest.raises(InputError, match="every value"):
        spectral_wiener_analysis(ensemble, torch.zeros(5), 1.0)
    with pytest.raises(InputError, match="obs_error_std"):
        spectral_wiener_analysis(ensemble, obs, 0.0)
    for bad in ({"inflation": 0.0}, {"rtps": 1.5}, {"spectrum": "ring"},
                {"spread_floor": 1.0}, {"inflation": True}):
        with pytest.raises(InputError, match="SpectralWienerConfig"):
            SpectralWienerConfig(**bad)
    with pytest.raises(InputError, match="SpectralWienerConfig"):
        SpectralWiener("inflation")
