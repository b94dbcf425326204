"""The local ensemble-space EnSF: the EnSF's reverse SDE in the LETKF's local weight space."""

from __future__ import annotations

import math

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.experiments import get_preset
from turbda_kit.experiments.builder import build_experiment
from turbda_kit.filters import (
    LETKFConfig,
    LocalEnSF,
    LocalEnSFConfig,
    ensemble_space_ensf_transforms,
    letkf_analysis,
    make_filter,
    sde_noise,
    transforms_from_gram,
)
from turbda_kit.filters.base import FilterGeometry
from turbda_kit.filters.localization import grid_positions
from turbda_kit.obs.operators import Identity

M = 10


def _grams(n_loc: int, seed: int = 0, n_obs: int = 30) -> torch.Tensor:
    """Gram matrices ``[Y|d]ᵀ [Y|d]`` of random whitened local observations."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(n_loc, n_obs, M, generator=gen, dtype=torch.float64)
    y = y - y.mean(-1, keepdim=True)
    d = torch.randn(n_loc, n_obs, 1, generator=gen, dtype=torch.float64)
    aug = torch.cat([y, d], dim=-1)
    return aug.transpose(1, 2) @ aug


def test_without_observations_each_member_comes_back_to_itself():
    """No local observations: the paired prior score leads particle k back to member k
    (up to the SDE's last step noise, ~sqrt(eps_beta + dt))."""
    gram = torch.zeros(64, M + 1, M + 1, dtype=torch.float64)
    transforms = ensemble_space_ensf_transforms(gram, sde_noise(M, 100, 0), likelihood_weight=10.0)
    centring = torch.eye(M, dtype=torch.float64) - 1.0 / M
    error = (transforms - centring) * math.sqrt(M - 1)       # in prior-spread units
    assert float(error.square().mean().sqrt()) < 0.25
    # the same Gram and the same noise: the same transform everywhere
    torch.testing.assert_close(transforms, transforms[:1].expand_as(transforms), rtol=0, atol=0)


def test_observations_pull_the_mean_towards_the_kalman_mean():
    """With a linear-Gaussian likelihood the analysis mean weights move from 0 towards the
    Kalman mean weights, and more so with a larger likelihood weight (not onto them: the
    EnSF's ``h(t)`` schedule is not the exact diffused-posterior score)."""
    gram = _grams(200, seed=1)
    kalman = transforms_from_gram(gram).mean(-1)                 # ETKF mean weights
    distances = []
    for weight in (0.3, 3.0, 30.0):
        mean_weights = ensemble_space_ensf_transforms(
            gram, sde_noise(M, 100, 2), likelihood_weight=weight).mean(-1)
        distances.append(float((mean_weights - kalman).norm()))
    assert distances[2] < distances[1] < distances[0] < float(kalman.norm())
    assert distances[2] < 0.7 * float(kalman.norm())


def test_undamped_likelihood_pulls_harder_than_the_linear_damping():
    """``damping="none"`` (h = 1) weights the likelihood at least as much as ``1 - t`` at
    every pseudo-time, so at equal weight its mean weights lie closer to the Kalman mean."""
    gram = _grams(100, seed=4)
    kalman = transforms_from_gram(gram).mean(-1)
    noise = sde_noise(M, 100, 5, centred=True)
    distance = {damping: float((ensemble_space_ensf_transforms(
        gram, noise, likelihood_weight=1.0, damping=damping).mean(-1) - kalman).norm())
        for damping in ("linear", "none")}
    assert distance["none"] < distance["linear"]


def _kalman_case(members: int, n_obs: int = 30):
    """One location's Gram matrix with ensemble-space precisions up to ~6, and its Kalman
    posterior in ``z`` (prior ``N(0, I)``): mean ``(I + C)^-1 b``, covariance ``(I + C)^-1``."""
    gen = torch.Generator().manual_seed(1)
    y = 2.0 * torch.randn(1, n_obs, members, generator=gen, dtype=torch.float64)
    d = torch.randn(1, n_obs, 1, generator=gen, dtype=torch.float64)
    aug = torch.cat([y, d], dim=-1)
    gram = aug.transpose(1, 2) @ aug
    dof = members - 1.0
    precision = gram[0, :members, :members] / dof
    covariance = torch.linalg.inv(torch.eye(members, dtype=torch.float64) + precision)
    mean = covariance @ (gram[0, :members, members:] / math.sqrt(dof))
    return gram, mean[:, 0], covariance, torch.linalg.eigh(precision).eigenvectors


def test_diffused_likelihood_with_gaussian_prior_samples_the_kalman_posterior():
    """With the exact Gaussian prior score, ``likelihood="diffused"`` and ``w = 1`` the
    reverse SDE is the exact diffused-posterior score: from a start that is the process's
    own (``eps_alpha`` ~ 0, ``eps_beta = 0``) the particles' mean converges to the Kalman
    mean at first order in the step (centred noise: the mean is deterministic), and their
    variance along the most observed directions is the Kalman variance."""
    members = 200
    gram, mean, covariance, directions = _kalman_case(members)
    lead = directions[:, -3:]                       # the three most observed directions
    errors = []
    for n_steps in (50, 200):
        transforms = ensemble_space_ensf_transforms(
            gram, sde_noise(members, n_steps, 0, centred=True), likelihood_weight=1.0,
            eps_alpha=0.01, eps_beta=0.0, prior_score="gaussian", likelihood="diffused")
        z = transforms[0] * math.sqrt(members - 1)
        errors.append(float((lead.T @ (z.mean(1) - mean)).norm()))
        if n_steps == 200:
            variance = torch.diag(lead.T @ torch.cov(z) @ lead)
            kalman = torch.diag(lead.T @ covariance @ lead)
            torch.testing.assert_close(variance, kalman, rtol=0.25, atol=0)
    assert errors[0] < 0.03 * float((lead.T @ mean).norm()), errors
    assert 3.5 < errors[0] / errors[1] < 4.5, errors  # first order: 4x the steps, 1/4 the error


def test_probability_flow_of_the_gaussian_score_is_the_etkf_square_root():
    """``sampler="ode"`` with the exact diffused-posterior score (Gaussian prior,
    ``likelihood="diffused"``, ``w = 1``) carries member ``k`` deterministically to the
    ETKF's symmetric square-root member ``k``: in each eigen-direction the flow between
    Gaussians is the monotone affine map. Converges as ``eps_alpha`` -> 0 (the start is
    the prior's flow, exact when pseudo-time 1 forgets the observations) and the step ->
    0; measured at 20 members: 8.8e-3, 2.9e-3, 1.3e-3 for 100, 400, 1600 steps at
    ``eps_alpha = 0.01``, against transforms of size 0.58. The noise is not read."""
    members, n_obs = 20, 30
    gen = torch.Generator().manual_seed(1)
    y = 2.0 * torch.randn(1, n_obs, members, generator=gen, dtype=torch.float64)
    y = y - y.mean(-1, keepdim=True)                 # anomalies: C has 1 in its null space
    d = torch.randn(1, n_obs, 1, generator=gen, dtype=torch.float64)
    aug = torch.cat([y, d], dim=-1)
    gram = aug.transpose(1, 2) @ aug
    # on anomalies (which sum to zero) only the centred rows of a transform act
    centring = torch.eye(members, dtype=torch.float64) - 1.0 / members
    etkf = centring @ transforms_from_gram(gram)[0]
    errors = []
    for n_steps in (100, 400, 1600):
        flow = ensemble_space_ensf_transforms(
            gram, sde_noise(members, n_steps, 0), likelihood_weight=1.0, eps_alpha=0.01,
            eps_beta=0.0, prior_score="gaussian", likelihood="diffused", sampler="ode")
        errors.append(float((centring @ flow[0] - etkf).abs().max()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.005 * float(etkf.abs().max()), errors
    other = ensemble_space_ensf_transforms(
        gram, sde_noise(members, 1600, 7), likelihood_weight=1.0, eps_alpha=0.01,
        eps_beta=0.0, prior_score="gaussian", likelihood="diffused", sampler="ode")
    torch.testing.assert_close(other, flow, rtol=0, atol=0)


def test_ode_sampler_with_the_paired_score_reads_no_noise_and_keeps_members_unobserved():
    """The paired-score ODE reads no noise (two seeds, identical transforms), and without
    observations it returns each member to itself: from ``alpha_1 z_k`` its Euler step
    ``z (1 - dt f)`` is exact along ``alpha_t z_k`` (``alpha`` is linear in ``t``), so the
    transform is the identity on anomalies to rounding."""
    members = 12
    gram, _, _, _ = _kalman_case(members)
    a, b = (ensemble_space_ensf_transforms(gram, sde_noise(members, 50, seed),
                                           likelihood_weight=10.0, sampler="ode")
            for seed in (0, 1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    noise = sde_noise(members, 50, 3)
    unobserved = ensemble_space_ensf_transforms(torch.zeros_like(gram), noise,
                                                likelihood_weight=10.0, sampler="ode")
    centring = torch.eye(members, dtype=torch.float64) - 1.0 / members
    torch.testing.assert_close(unobserved[0], centring, rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="sampler"):
        ensemble_space_ensf_transforms(gram, noise, likelihood_weight=10.0, sampler="flow")
    with pytest.raises(InputError, match="sampler"):
        LocalEnSFConfig(sampler="flow")


def test_gaussian_prior_score_without_observations_samples_the_prior():
    """The exact score of the diffused N(0, I) with no likelihood: the particles end as
    draws of the prior (measured variance 0.94-1.02 over seeds 0-3 with 40 members),
    unlike the paired score, which returns each member to itself."""
    members = 40
    gram = torch.zeros(2, members + 1, members + 1, dtype=torch.float64)
    noise = sde_noise(members, 100, 0)
    gaussian = ensemble_space_ensf_transforms(gram, noise, likelihood_weight=1.0,
                                              prior_score="gaussian")
    z = gaussian[0] * math.sqrt(members - 1)                 # prior units
    assert 0.85 < float(z.var()) < 1.15 and abs(float(z.mean())) < 0.1
    centring = torch.eye(members, dtype=torch.float64) - 1.0 / members
    assert float((z - math.sqrt(members - 1) * centring).square().mean().sqrt()) > 1.0


def test_centred_noise_has_no_particle_mean_and_unit_variance():
    noise = sde_noise(M, 400, 3, centred=True)
    assert noise.shape == (401, M, M) and noise.dtype == torch.float64
    torch.testing.assert_close(noise.mean(-1), torch.zeros(401, M, dtype=torch.float64),
                               rtol=0, atol=1e-14)
    assert 0.95 < float(noise.var()) < 1.05


def test_centred_noise_makes_the_linear_analysis_mean_deterministic():
    """The likelihood is linear in z and the paired pull has zero mean over members, so with
    centred noise the particles' mean follows one path for every seed (iid noise: not)."""
    gram = _grams(20, seed=9)
    means = [ensemble_space_ensf_transforms(gram, sde_noise(M, 50, seed, centred=centred),
                                            likelihood_weight=10.0).mean(-1)
             for centred in (True, False) for seed in (0, 1)]
    torch.testing.assert_close(means[0], means[1], rtol=0, atol=1e-12)
    assert float((means[2] - means[3]).abs().max()) > 1e-3


def test_blocks_of_locations_equal_the_whole():
    """Shared noise: a location's transform does not depend on which block it is solved in."""
    gram = _grams(50, seed=5)
    noise = sde_noise(M, 30, 6)
    whole = ensemble_space_ensf_transforms(gram, noise, likelihood_weight=10.0)
    parts = torch.cat([ensemble_space_ensf_transforms(gram[a:b], noise, likelihood_weight=10.0)
                       for a, b in ((0, 7), (7, 31), (31, 50))])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)


def test_float32_grams_give_float32_transforms():
    gram = _grams(4, seed=7)
    out = ensemble_space_ensf_transforms(gram.float(), sde_noise(M, 20, 8), likelihood_weight=1.0)
    assert out.dtype == torch.float32 and out.shape == (4, M, M)


def _l96_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    truth = torch.randn(40, generator=gen, dtype=torch.float64)
    forecast = truth + 0.8 * torch.randn(M, 40, generator=gen, dtype=torch.float64)
    obs = truth + torch.randn(40, generator=gen, dtype=torch.float64)
    return truth, forecast, obs


def _filter(**changes) -> LocalEnSF:
    config = LocalEnSFConfig(LETKFConfig(localization_radius=4.0), **changes)
    return LocalEnSF(config, grid_positions((40,), (40.0,)), (40.0,))


def test_filter_is_reproducible_from_its_generator():
    _, forecast, obs = _l96_case()
    f = _filter()
    a = f(forecast, obs, Identity((40,)), 1.0, torch.Generator().manual_seed(3))
    b = f(forecast, obs, Identity((40,)), 1.0, torch.Generator().manual_seed(3))
    c = f(forecast, obs, Identity((40,)), 1.0, 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert a.shape == forecast.shape and a.dtype == forecast.dtype


def test_filter_draws_centred_noise_when_asked():
    _, forecast, obs = _l96_case(2)
    f = _filter(noise="centred", n_steps=20)
    got = f(forecast, obs, Identity((40,)), 1.0, 5)
    pos = grid_positions((40,), (40.0,))
    expected = letkf_analysis(forecast, forecast, obs, 1.0, config=f.config.letkf,
                              state_positions=pos, obs_positions=pos, domain_lengths=(40.0,),
                              transforms=f.transforms(sde_noise(M, 20, 5, centred=True)))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_filter_equals_the_letkf_driver_with_its_transforms():
    """The filter is the LETKF's localisation with the EnSF's local solve, nothing else."""
    _, forecast, obs = _l96_case(1)
    f = _filter(likelihood_weight=5.0, n_steps=40)
    got = f(forecast, obs, Identity((40,)), 1.0, 11)
    noise = sde_noise(M, 40, 11)
    pos = grid_positions((40,), (40.0,))
    expected = letkf_analysis(forecast, forecast, obs, 1.0, config=f.config.letkf,
                              state_positions=pos, obs_positions=pos, domain_lengths=(40.0,),
                              transforms=f.transforms(noise))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_letkf_default_transforms_unchanged():
    _, forecast, obs = _l96_case(2)
    pos = grid_positions((40,), (40.0,))
    config = LETKFConfig(localization_radius=4.0)
    kwargs = dict(config=config, state_positions=pos, obs_positions=pos, domain_lengths=(40.0,))
    torch.testing.assert_close(
        letkf_analysis(forecast, forecast, obs, 1.0, **kwargs),
        letkf_analysis(forecast, forecast, obs, 1.0, transforms=transforms_from_gram, **kwargs),
        rtol=0, atol=0)


def test_lorenz96_cycling_close_to_the_letkf():
    """DAPPER's sakov2008 set-up with 20 members: the local EnSF tracks the truth as well as
    the LETKF (this test's runs: 0.213 against 0.214 over cycles 51-150)."""
    preset = get_preset("sakov2008").replace(n_cycles=150, spinup_cycles=50, n_members=20)
    scores = {}
    for name in ("letkf", "ensf_local"):
        ds = build_experiment(preset, name).run(show_progress=False)
        scores[name] = float(ds["rmse_analysis"][50:].mean())
    assert scores["ensf_local"] < 1.25 * scores["letkf"], scores
    assert scores["ensf_local"] < 0.35, scores


def test_presets_give_their_letkf_localisation_with_rtps():
    mixed = get_preset("bao2024_sqg_sparse_mixed")
    local = mixed.filter_settings("ensf_local")               # derived from the LETKF's
    assert local.letkf.localization_radius == mixed.letkf.localization_radius
    assert (local.letkf.inflation, local.letkf.inflation_factor) == ("rtps", 0.5)
    assert local.likelihood_weight == 10.0
    cv = get_preset("sqgturb_lgetkf_cv")
    local = cv.filter_settings("ensf_local")                  # the preset's own (tuned)
    assert local.letkf.localization_radius == cv.letkf.localization_radius
    assert local.letkf.regularization == cv.letkf.regularization == "nerger"
    assert local.letkf.perturbations == "symmetric" and local.letkf.cv_groups is None
    assert (local.letkf.inflation_factor, local.likelihood_weight) == (0.6, 20.0)
    changed = cv.with_filter_settings("ensf_local", {"likelihood_weight": 3.0,
                                                     "letkf": {"inflation_factor": 0.3}})
    settings = changed.filter_settings("ensf_local")
    assert settings.likelihood_weight == 3.0 and settings.letkf.inflation_factor == 0.3
    with pytest.raises(InputError, match="unknown LETKFConfig"):
        cv.with_filter_settings("ensf_local", {"letkf": {"radius": 1.0}})
    geometry = FilterGeometry(grid_positions((40,), (40.0,)), (40.0,))
    assert isinstance(make_filter("ensf_local", settings, geometry), LocalEnSF)
    linear = get_preset("bao2024_sqg_linear").filter_settings("ensf_local")
    assert (linear.likelihood, linear.likelihood_weight, linear.letkf.inflation_factor) == (
        "damped", 10.0, 0.5)


@pytest.mark.parametrize("changes, match", [
    ({"likelihood_weight": 0.0}, "likelihood_weight"),
    ({"likelihood_weight": math.nan}, "likelihood_weight"),
    ({"n_steps": 0}, "n_steps"),
    ({"n_steps": True}, "n_steps"),
    ({"eps_alpha": 1.0}, "eps_alpha"),
    ({"eps_beta": -0.1}, "eps_beta"),
    ({"prior_score": "mixture"}, "prior_score"),
    ({"noise": "antithetic"}, "noise"),
    ({"damping": "quadratic"}, "damping"),
    ({"likelihood": "exact"}, "likelihood"),
    ({"letkf": LETKFConfig(perturbations="cross_validation")}, "symmetric"),
    ({"letkf": {"localization_radius": 1.0}}, "LETKFConfig"),
])
def test_bad_settings_are_refused(changes, match):
    with pytest.raises(InputError, match=match):
        LocalEnSFConfig(**changes)


@pytest.mark.parametrize("changes, match", [
    ({"likelihood": "difused"}, "likelihood"),
    ({"damping": "quadratic"}, "damping"),
    ({"prior_score": "mixture"}, "prior_score"),
])
def test_transforms_refuse_unknown_options(changes, match):
    with pytest.raises(InputError, match=match):
        ensemble_space_ensf_transforms(_grams(2), sde_noise(M, 4, 0), likelihood_weight=1.0,
                                       **changes)


def test_bad_calls_are_refused():
    _, forecast, obs = _l96_case()
    f = _filter()
    with pytest.raises(InputError, match="Generator"):
        f(forecast, obs, Identity((40,)), 1.0, None)
    with pytest.raises(InputError, match="generator"):
        sde_noise(M, 10, 1.5)
    with pytest.raises(InputError, match="member"):
        f(forecast[:1], obs, Identity((40,)), 1.0, 0)
    with pytest.raises(InputError, match="noise must have shape"):
        ensemble_space_ensf_transforms(_grams(2), sde_noise(M + 1, 5, 0), likelihood_weight=1.0)
    with pytest.raises(InputError, match="cross-validated"):
        letkf_analysis(forecast, forecast, obs, 1.0,
                       config=LETKFConfig(perturbations="cross_validation"),
                       transforms=transforms_from_gram)
