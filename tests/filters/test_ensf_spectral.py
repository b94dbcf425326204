"""The spectral EnSF: an orthonormal Hartley basis, shell spreads, and what it buys."""

from __future__ import annotations

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.filters import (
    EnSFConfig,
    SpectralEnSF,
    SpectralEnSFConfig,
    ensf_analysis,
    hartley2,
    make_filter,
    shell_spread,
)
from turbda_kit.obs.operators import Arctan, Identity

N = 32


def _red_field(shape, generator, slope=3.0):
    """Random periodic fields with a red spectrum (amplitude ~ |k|^-slope/2 ...)."""
    white = torch.randn(shape, generator=generator, dtype=torch.float64)
    k = torch.fft.fftfreq(N, 1.0 / N, dtype=torch.float64)
    radius = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).clamp_min(1.0)
    field = torch.fft.ifft2(torch.fft.fft2(white) * radius ** (-slope / 2)).real
    return field / field.std()


def test_hartley_transform_is_orthonormal_and_its_own_inverse():
    x = torch.randn(3, 2, N, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = hartley2(x)
    torch.testing.assert_close(hartley2(h), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(h.square().sum((-2, -1)), x.square().sum((-2, -1)))


def test_shell_spread_is_constant_on_shells_and_floored():
    gen = torch.Generator().manual_seed(1)
    coefficients = hartley2(_red_field((20, 2, N, N), gen))
    spread = shell_spread(coefficients, floor=1e-3)
    assert spread.shape == (2, N, N)
    # (0, 3) and (3, 0) lie on one shell, so do (1, 2) and (2, 1)
    assert spread[0, 0, 3] == spread[0, 3, 0] and spread[1, 1, 2] == spread[1, 2, 1]
    assert (spread >= spread.flatten(-2).amax(-1)[:, None, None] * 1e-3).all()
    per_mode = shell_spread(coefficients, shells=False)
    torch.testing.assert_close(per_mode ** 2, coefficients.var(0).clamp_min(
        (per_mode.flatten(-2).amax(-1) * 1e-6)[:, None, None] ** 2))


def test_spectral_ensf_filters_white_observation_noise_out_of_a_red_field():
    """Dense identity observations (sigma 1) of a red field with a forecast ensemble of
    comparable error: the point-by-point EnSF cannot beat the per-point combination; the
    spectral one, which ignores the noise where the forecast is sure (small scales), can."""
    gen = torch.Generator().manual_seed(2)
    truth = 2.0 * _red_field((2, N, N), gen)
    # the forecast: mean error and member spread alike, both red (std 0.8)
    members = _red_field((40, 2, N, N), gen)
    forecast = truth + 0.8 * _red_field((2, N, N), gen) + 0.8 * (members - members.mean(0))
    obs = (truth + torch.randn(truth.shape, generator=gen, dtype=torch.float64)).reshape(-1)
    operator = Identity((2, N, N))
    config = EnSFConfig(n_steps=100, likelihood_step="implicit")
    spectral = SpectralEnSF(SpectralEnSFConfig(ensf=config))(forecast, obs, operator, 1.0, 5)
    plain = ensf_analysis(forecast, obs, operator, 1.0, 5,
                          EnSFConfig(n_steps=100, likelihood_step="implicit", normalize=True))

    def error(ensemble):
        return float((ensemble.mean(0) - truth).square().mean().sqrt())

    assert spectral.shape == forecast.shape and spectral.dtype == forecast.dtype
    assert error(spectral) < 0.7 * error(plain)
    assert error(spectral) < 0.6 * error(forecast)      # forecast 0.80, observations 1.0


def test_registered_and_refuses_what_it_cannot_do():
    assert isinstance(make_filter("ensf_spectral", None), SpectralEnSF)
    ensemble = torch.zeros(4, 2, 8, 8)
    obs = torch.zeros(128)
    spectral = SpectralEnSF()
    with pytest.raises(InputError, match="identity observations"):
        spectral(ensemble, obs, Arctan((2, 8, 8)), 0.1, 0)
    with pytest.raises(InputError, match="one observation error std"):
        spectral(ensemble, obs, Identity((2, 8, 8)), torch.ones(128), 0)
    with pytest.raises(InputError, match="2-D periodic field"):
        spectral(torch.zeros(4, 8), torch.zeros(8), Identity((8,)), 1.0, 0)
    with pytest.raises(InputError, match="normalize must be False"):
        SpectralEnSFConfig(ensf=EnSFConfig(normalize=True))
    with pytest.raises(InputError, match="spectrum"):
        SpectralEnSFConfig(spectrum="wavelet")


def test_dense_linear_preset_holds_the_tuned_spectral_settings():
    from turbda_kit.experiments import get_preset

    settings = get_preset("bao2024_sqg_linear").filter_settings("ensf_spectral")
    assert isinstance(settings, SpectralEnSFConfig)
    assert settings.ensf.likelihood_weight == 30.0 and not settings.ensf.normalize
    changed = get_preset("bao2024_sqg_linear").with_filter_settings(
        "ensf_spectral", {"ensf": {"likelihood_weight": 10.0}, "spectrum": "mode"})
    assert changed.filter_settings("ensf_spectral").ensf.likelihood_weight == 10.0
    assert changed.filter_settings("ensf_spectral").spectrum == "mode"
