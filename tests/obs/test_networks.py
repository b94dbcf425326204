"""Observation networks: the spec's validation, draws by stream, mixed operators' scores."""

from __future__ import annotations

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.experiments import build_experiment, get_preset
from turbda_kit.obs.networks import NetworkSampler, ObsNetworkSpec, PointNetwork, observed_points
from turbda_kit.obs.operators import Arctan, Identity, Subset
from turbda_kit.random_streams import cycle_generator

SQG = (2, 8, 8)


def _autograd_score(op, x, y, std):
    x = x.detach().requires_grad_(True)
    log_l = -0.5 * ((op(x) - y) ** 2 / std ** 2).sum()
    (grad,) = torch.autograd.grad(log_l, x)
    return grad


@pytest.mark.parametrize("changes, match", [
    ({"n_obs": 0}, "n_obs"), ({"n_obs": 2.5}, "n_obs"), ({"resample": "daily"}, "resample"),
    ({"levels": (0, 0)}, "levels"), ({"levels": (-1,)}, "levels"),
    ({"arctan_fraction": 1.5}, "arctan_fraction"), ({"arctan_scale": 0.0}, "arctan_scale"),
    ({"arctan_error_std": -1.0}, "arctan_error_std"),
])
def test_spec_refuses_bad_fields(changes, match):
    with pytest.raises(InputError, match=match):
        ObsNetworkSpec(**changes)


def test_spec_checks_the_state_and_unknown_fields():
    with pytest.raises(InputError, match="more than the 64"):
        ObsNetworkSpec(n_obs=65, levels=(0,)).check(SQG)
    with pytest.raises(InputError, match="levels"):
        ObsNetworkSpec(levels=(2,)).check(SQG)
    with pytest.raises(InputError, match="levels=None"):
        ObsNetworkSpec(levels=(0,)).check((40,))
    with pytest.raises(InputError, match="unknown ObsNetworkSpec field"):
        ObsNetworkSpec().replace(n_points=3)
    with pytest.raises(InputError, match="unknown ObsNetworkSpec field"):
        get_preset("bao2024_sqg_linear").with_network({"count": 3})


def test_draws_surface_only_mixed_networks_from_named_streams():
    spec = ObsNetworkSpec(n_obs=40, levels=(0,), arctan_fraction=0.25, arctan_error_std=0.01)
    first = spec.draw(SQG, cycle_generator(3, 0, "obs_network"), 1.0)
    again = spec.draw(SQG, cycle_generator(3, 0, "obs_network"), 1.0)
    assert torch.equal(first.indices, again.indices)
    assert torch.equal(first.arctan_mask, again.arctan_mask)
    assert first.n_obs == 40 and int(first.indices.max()) < 64      # surface level only
    assert int(first.arctan_mask.sum()) == 10
    std = first.obs_error_std
    assert torch.equal(std[first.arctan_mask], torch.full((10,), 0.01, dtype=torch.float64))
    assert torch.equal(std[~first.arctan_mask], torch.ones(30, dtype=torch.float64))
    fixed = spec.build(SQG, 1.0, seed=3)
    assert isinstance(fixed, PointNetwork) and torch.equal(fixed.indices, first.indices)
    sampler = spec.replace(resample="every_cycle").build(SQG, 1.0, seed=3)
    assert isinstance(sampler, NetworkSampler)
    other = sampler(5, cycle_generator(3, 5, "obs_network"))
    assert not torch.equal(other.indices, first.indices)


def test_point_network_matches_subset_and_arctan_and_autograd():
    gen = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(4, *SQG, generator=gen, dtype=torch.float64)
    indices = torch.tensor([1, 5, 9, 64, 100, 127])
    mask = torch.tensor([False, True, False, True, True, False])
    op = PointNetwork(SQG, indices, mask, arctan_scale=0.4)
    expected = torch.where(mask, torch.atan(0.4 * x.reshape(4, -1)[:, indices]),
                           x.reshape(4, -1)[:, indices])
    torch.testing.assert_close(op(x), expected)
    y = torch.randn(6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(op.likelihood_score(x, y, 0.3), _autograd_score(op, x, y, 0.3))
    plain = PointNetwork(SQG, indices)
    torch.testing.assert_close(plain(x), Subset(SQG, indices)(x))
    torch.testing.assert_close(plain.gauss_newton_diagonal(x, 0.5),
                               Subset(SQG, indices).gauss_newton_diagonal(x, 0.5))
    assert torch.equal(op.locations, Subset(SQG, indices).locations)
    # the operator on the observed values alone gives the same observations
    found, pointwise = observed_points(op)
    torch.testing.assert_close(pointwise(x.reshape(4, -1)[:, found]), op(x))
    assert isinstance(observed_points(plain)[1], Identity)
    assert isinstance(observed_points(Subset(SQG, indices) @ Arctan(SQG))[1], Arctan)


def test_a_preset_network_runs_through_the_engine_with_per_observation_errors():
    preset = get_preset("bao2024_sqg_sparse_mixed").replace(
        n_cycles=3, spinup_cycles=1, n_members=4, shocks=False)
    preset = preset.with_network({"n_obs": 100})
    ds = build_experiment(preset, "letkf", model_overrides={"N": 16}, spinup_days=1.0,
                          seed=2).run(show_progress=False)
    assert ds.attrs["obs"] == "network" and "n_obs=100" in ds.attrs["obs_network"]
    assert ds["innovation_std"].attrs["units"] == "1"
    assert bool(torch.isfinite(torch.as_tensor(ds["rmse_analysis"].values)).all())


def test_the_sparse_presets_hold_their_published_set_ups():
    cv = get_preset("sqgturb_lgetkf_cv")
    assert (cv.network.n_obs, cv.network.resample, cv.network.arctan_fraction) == (
        1024, "every_cycle", 0.0)
    assert (cv.letkf.regularization, cv.letkf.perturbations, cv.letkf.inflation) == (
        "nerger", "cross_validation", "none")
    assert cv.obs_error_std == 1.0 and not cv.shocks
    mixed = get_preset("bao2024_sqg_sparse_mixed")
    assert (mixed.network.n_obs, mixed.network.arctan_fraction, mixed.shocks) == (2048, 0.5, True)
    assert (mixed.letkf.localization_radius, mixed.letkf.inflation,
            mixed.letkf.inflation_factor) == (5.8e6, "rtps", 0.9)
    for preset, ridge in ((cv, 0.1), (mixed, 0.3)):
        preset.network.check((2, 64, 64))
        assert preset.filter_settings("ensf_twostage").ridge == ridge


def test_network_in_words():
    from turbda_kit.experiments import get_preset

    assert get_preset("bao2024_sqg_sparse_mixed").network.describe() == (
        "2048 random points, redrawn every cycle, 50% arctan (error 0.01)")
    assert ObsNetworkSpec(n_obs=10, levels=(0,)).describe() == "10 random points on level(s) 0, fixed"
    assert ObsNetworkSpec().describe() == "every point"
