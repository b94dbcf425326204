"""Multiplicative prior inflation of the EnSF (``EnSFConfig.prior_inflation``): the same
analysis as inflating the forecast by hand, in the EnSF and in the two-stage EnSF; off by
default; slab-consistent; refused where it cannot apply."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.filters import EnSFConfig, TwoStageEnSFConfig, make_filter
from turbda_kit.filters.base import FilterGeometry
from turbda_kit.filters.ensf import ensf_analysis, inflate_anomalies
from turbda_kit.filters.localization import grid_positions
from turbda_kit.obs.operators import Arctan, Identity, Subset

ENSF = EnSFConfig(n_steps=30, normalize=True, likelihood_step="implicit",
                  likelihood_weight=3.0, spread_relaxation=0.5)


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    forecast = 2.0 + torch.randn(8, 2, 6, 6, generator=gen)
    operator = Identity((2, 6, 6))
    obs = 0.5 * torch.randn(72, generator=gen)
    return forecast, operator, obs


def test_inflate_anomalies_scales_the_spread_and_keeps_the_mean():
    forecast, _, _ = _problem()
    inflated = inflate_anomalies(forecast, 1.5)
    torch.testing.assert_close(inflated.mean(0), forecast.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(inflated.std(0), 1.5 * forecast.std(0), rtol=1e-5, atol=0)
    # the default is off, and off returns the forecast itself: the same bits as before the
    # option existed (the stored references check the analyses themselves)
    assert EnSFConfig().prior_inflation == 1.0
    assert inflate_anomalies(forecast, 1.0) is forecast


def test_inflation_is_the_analysis_of_the_inflated_forecast():
    forecast, operator, obs = _problem()
    inflated = dataclasses.replace(ENSF, prior_inflation=1.3)
    by_hand = ensf_analysis(inflate_anomalies(forecast, 1.3), obs, operator, 0.5, 11, ENSF)
    assert torch.equal(ensf_analysis(forecast, obs, operator, 0.5, 11, inflated), by_hand)
    # and it does something: a wider prior moves the mean further toward the observations
    plain = ensf_analysis(forecast, obs, operator, 0.5, 11, ENSF)
    distance_to_obs = (by_hand.mean(0).reshape(-1) - obs).abs().mean()
    assert distance_to_obs < (plain.mean(0).reshape(-1) - obs).abs().mean()


def test_slab_of_an_inflated_analysis_is_the_same_slab():
    """Inflation is per variable: a slab (global_offset) reproduces the full analysis."""
    gen = torch.Generator().manual_seed(2)
    forecast = torch.randn(6, 40, generator=gen)
    obs = torch.randn(40, generator=gen)
    config = EnSFConfig(n_steps=20, prior_inflation=1.4)
    full = ensf_analysis(forecast, obs, Arctan((40,)), 0.3, 5, config)
    slab = ensf_analysis(forecast[:, 16:32], obs[16:32], Arctan((16,)), 0.3, 5, config,
                         global_offset=16, global_size=40)
    assert torch.equal(slab, full[:, 16:32])


def test_two_stage_inflates_the_whole_forecast_once():
    forecast, _, _ = _problem(3)
    gen = torch.Generator().manual_seed(4)
    keep = torch.arange(0, 72, 3)
    operator = Subset((2, 6, 6), keep)
    obs = torch.randn(keep.numel(), generator=gen)
    # (y, x) horizontal first, the level last (FilterGeometry's order)
    positions = grid_positions((2, 6, 6), (2.0, 6.0, 6.0))[..., [1, 2, 0]]
    geometry = FilterGeometry(state_positions=positions, domain_lengths=(6.0, 6.0))
    base = TwoStageEnSFConfig(ensf=ENSF, localization_radius=3.0, ridge=0.1)
    inflated = dataclasses.replace(base, ensf=dataclasses.replace(ENSF, prior_inflation=1.25))
    by_hand = make_filter("ensf_twostage", base, geometry)(
        inflate_anomalies(forecast, 1.25), obs, operator, 0.5, 9)
    got = make_filter("ensf_twostage", inflated, geometry)(forecast, obs, operator, 0.5, 9)
    assert torch.equal(got, by_hand)


@pytest.mark.parametrize("value", [0.9, 0.0, float("inf"), float("nan"), True, "2"])
def test_refuses_bad_factors(value):
    with pytest.raises(InputError, match="prior_inflation"):
        EnSFConfig(prior_inflation=value)


def test_refuses_a_single_member():
    forecast, operator, obs = _problem()
    with pytest.raises(InputError, match="at least 2"):
        ensf_analysis(forecast[:1], obs, operator, 0.5, 1, EnSFConfig(prior_inflation=1.2))
