"""The filter interface and registry: one protocol, filters made by name, settings checked."""

from __future__ import annotations

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.filters import (
    LETKF,
    EnSF,
    EnSFConfig,
    Filter,
    FilterGeometry,
    LETKFConfig,
    as_filter,
    available_filters,
    ensf_analysis,
    filter_settings_type,
    grid_positions,
    letkf_analysis,
    make_filter,
    register_filter,
)
from turbda_kit.obs.operators import Identity

N = 24


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(2)
    forecast = 1.0 + torch.randn(8, N, generator=gen, dtype=torch.float64)
    obs = torch.randn(N, generator=gen, dtype=torch.float64)
    return forecast, obs, Identity((N,))


def test_registered_filters_fit_the_protocol_and_equal_their_pure_functions(problem):
    forecast, obs, operator = problem
    assert set(available_filters()) >= {"ensf", "letkf"}
    config = EnSFConfig(n_steps=20)
    ensf = make_filter("ensf", config)
    assert isinstance(ensf, Filter) and isinstance(ensf, EnSF) and ensf.name == "ensf"
    torch.testing.assert_close(ensf(forecast, obs, operator, 0.5, torch.Generator().manual_seed(4)),
                               ensf_analysis(forecast, obs, operator, 0.5,
                                             torch.Generator().manual_seed(4), config),
                               rtol=0, atol=0)
    geometry = FilterGeometry(grid_positions((N,), (float(N),)), (float(N),))
    letkf_config = LETKFConfig(localization_radius=3.0, inflation="rtps", inflation_factor=0.5)
    letkf = make_filter("letkf", letkf_config, geometry)
    assert isinstance(letkf, LETKF) and letkf.name == "letkf" and isinstance(letkf, Filter)
    flat = geometry.state_positions.reshape(N, 1)
    torch.testing.assert_close(letkf(forecast, obs, operator, 0.5, None),
                               letkf_analysis(forecast, forecast, obs, 0.5, config=letkf_config,
                                              state_positions=flat, obs_positions=flat,
                                              domain_lengths=(float(N),)),
                               rtol=0, atol=0)
    assert filter_settings_type("letkf") is LETKFConfig
    # no settings: the filter's defaults
    assert make_filter("ensf").config == EnSFConfig()


def test_registry_refuses_unknown_names_wrong_settings_and_duplicates():
    with pytest.raises(InputError, match="unknown filter 'kalman'; known: .*ensf.*letkf"):
        make_filter("kalman")
    with pytest.raises(InputError, match="takes LETKFConfig settings, got EnSFConfig"):
        make_filter("letkf", EnSFConfig())
    with pytest.raises(InputError, match="already registered"):
        register_filter("ensf", lambda settings, geometry: None)
    with pytest.raises(InputError, match="both state_positions and domain_lengths"):
        FilterGeometry(state_positions=torch.zeros(4, 1))


def test_a_new_filter_is_one_registration(problem):
    forecast, obs, operator = problem
    register_filter("test_keep_forecast",
                    lambda settings, geometry: as_filter(
                        lambda f, y, h, std, gen: f * (settings or 1.0), "test_keep_forecast"),
                    replace=True)
    keep = make_filter("test_keep_forecast", 2.0)
    assert keep.name == "test_keep_forecast" and isinstance(keep, Filter)
    torch.testing.assert_close(keep(forecast, obs, operator, 1.0, None), 2.0 * forecast)
    with pytest.raises(InputError, match="must be callable"):
        as_filter(3, "three")
