"""sqgturb's default filter: Nerger-regularised R-localisation and leave-one-out
cross-validated perturbations (``LETKFConfig(regularization="nerger",
perturbations="cross_validation")``).

The reference below is a per-point NumPy implementation of the algorithm as described in
the docs (and in J. Whitaker's sqgturb), written independently of the kit: the mean in
the observation-space Kalman form with ``R / w``, the leave-one-out done literally (the
withheld members deleted with ``np.delete``, every quantity recomputed from the rest),
Bishop et al.'s gain-form factor written as ``(I - (I + A)^{-1/2}) A^{-1}`` with
``scipy.linalg.sqrtm`` and ``inv``, and Nerger's factor in sqgturb's printed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from turbda_kit.errors import InputError
from turbda_kit.filters.ensemble_space import nerger_weights
from turbda_kit.filters.letkf import LETKFConfig, etkf_analysis, letkf_analysis
from turbda_kit.filters.localization import gaspari_cohn, grid_positions, sqg_positions

F64 = torch.float64


def nerger_factor(rho, obs_error_var, hpht):
    """Nerger et al. (2012) as sqgturb prints it: the factor on R⁻¹."""
    return (rho * obs_error_var / (hpht + obs_error_var)) / (1.0 - rho * hpht
                                                              / (hpht + obs_error_var))


def reference_cv_letkf(forecast, hx, y, std, state_pos, obs_pos, lengths, radius,
                       nerger=True, n_groups=None):
    """Per state point: LETKF mean, cross-validated perturbations, literally.

    forecast (m, n_state), hx (m, n_obs), std (n_obs,), positions (n, 2 or 3) with the
    first ``len(lengths)`` columns horizontal (no vertical localisation).
    """
    m = forecast.shape[0]
    groups = m if n_groups is None else n_groups
    size = m // groups
    x_mean = forecast.mean(0)
    x_anom = forecast - x_mean
    hx_mean = hx.mean(0)
    hx_anom = hx - hx_mean
    n_h = len(lengths)
    out = forecast.copy()
    for i in range(forecast.shape[1]):
        diff = np.abs(obs_pos[:, :n_h] - state_pos[i, :n_h])
        diff = np.minimum(diff, np.asarray(lengths) - diff)
        rho = gaspari_cohn(torch.from_numpy(np.sqrt((diff ** 2).sum(1))), radius).numpy()
        local = rho > 0
        if not local.any():
            continue
        rho, var = rho[local], std[local] ** 2
        h = hx_anom[:, local]                                    # (m, k)

        def weights(ens, rho=rho, var=var):
            if not nerger:
                return rho
            return nerger_factor(rho, var, (ens ** 2).sum(0) / (ens.shape[0] - 1))

        # Mean: Kalman gain in observation space with the localised R / w.
        r_loc = np.diag(var / weights(h))
        gain = (x_anom[:, i] @ h / (m - 1)) @ np.linalg.inv(h.T @ h / (m - 1) + r_loc)
        mean = x_mean[i] + gain @ (y[local] - hx_mean[local])

        anomalies = x_anom[:, i].copy()
        for group in range(groups):
            withheld = list(range(group * size, (group + 1) * size))
            ens = np.delete(h, withheld, axis=0)                 # the others, not re-centred
            x_others = np.delete(x_anom[:, i], withheld)
            kept = ens.shape[0]
            w = weights(ens)
            s = ens * np.sqrt(w / var) / np.sqrt(kept - 1)
            a = s @ s.T
            eye = np.eye(kept)
            factor = (eye - np.linalg.inv(scipy.linalg.sqrtm(eye + a).real)) @ np.linalg.inv(a)
            for j in withheld:
                b = (ens * (w / var)) @ h[j] / (kept - 1)
                anomalies[j] = x_anom[j, i] - x_others @ (factor @ b)
        out[:, i] = mean + anomalies - anomalies.mean()
    return out


def sqg_like(seed=0, n=4, m=6, spread=1.5):
    """2-level periodic 4x4 grid (L = 8), every point observed plus a nonlinear operator."""
    gen = torch.Generator().manual_seed(seed)
    positions = sqg_positions(n, 8.0, 1.0)
    forecast = spread * torch.randn(m, 2, n, n, generator=gen, dtype=F64)
    flat = forecast.reshape(m, -1)
    hx = flat + 0.2 * flat ** 2
    y = torch.randn(flat.shape[1], generator=gen, dtype=F64)
    std = 0.5 + torch.rand(flat.shape[1], generator=gen, dtype=F64)
    return dict(forecast=forecast, hx=hx, y=y, std=std, positions=positions,
                obs_pos=positions.reshape(-1, 3), lengths=(8.0, 8.0))


def run(prob, config):
    return letkf_analysis(prob["forecast"], prob["hx"], prob["y"], prob["std"], config=config,
                          state_positions=prob["positions"], obs_positions=prob["obs_pos"],
                          domain_lengths=prob["lengths"])


def reference(prob, radius, **kwargs):
    m = prob["forecast"].shape[0]
    return reference_cv_letkf(prob["forecast"].reshape(m, -1).numpy(), prob["hx"].numpy(),
                              prob["y"].numpy(), prob["std"].numpy(),
                              prob["positions"].reshape(-1, 3).numpy(), prob["obs_pos"].numpy(),
                              prob["lengths"], radius, **kwargs)


# --------------------------------------------------------------------------------------
# Against the literal per-point reference
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nerger", [True, False])
@pytest.mark.parametrize("n_groups", [None, 3])
def test_cross_validated_letkf_equals_literal_leave_one_out(nerger, n_groups):
    prob = sqg_like()
    radius = 1.7                 # cut-off 3.4 on the 8x8 box: 10-32 local obs per column
    config = LETKFConfig(localization_radius=radius, chunk_size=3,
                         regularization="nerger" if nerger else "none",
                         perturbations="cross_validation", cv_groups=n_groups)
    got = run(prob, config)
    expected = reference(prob, radius, nerger=nerger, n_groups=n_groups)
    np.testing.assert_allclose(got.reshape(expected.shape).numpy(), expected, rtol=0,
                               atol=1e-11)


def test_nerger_with_symmetric_perturbations_equals_reference_mean_and_root():
    # Nerger's weights with the plain symmetric root: the LETKF with w instead of rho.
    prob = sqg_like(seed=1)
    got = run(prob, LETKFConfig(localization_radius=1.7, regularization="nerger"))
    m = prob["forecast"].shape[0]
    hx_anom = (prob["hx"] - prob["hx"].mean(0)).numpy()
    pos = prob["positions"].reshape(-1, 3).numpy()
    x = prob["forecast"].reshape(m, -1).numpy()
    for i in (0, 7, 21):
        diff = np.abs(pos[:, :2] - pos[i, :2])
        diff = np.minimum(diff, 8.0 - diff)
        rho = gaspari_cohn(torch.from_numpy(np.sqrt((diff ** 2).sum(1))), 1.7).numpy()
        local = rho > 0
        var = prob["std"].numpy()[local] ** 2
        h = hx_anom[:, local]
        w = nerger_factor(rho[local], var, (h ** 2).sum(0) / (m - 1))
        s = h * np.sqrt(w / var)
        d = (prob["y"].numpy() - prob["hx"].mean(0).numpy())[local]
        c = s @ s.T + (m - 1) * np.eye(m)
        w_mean = np.linalg.solve(c, (h * (w / var)) @ d)
        root = scipy.linalg.sqrtm((m - 1) * np.linalg.inv(c)).real
        x_anom = x[:, i] - x[:, i].mean()
        expected = x[:, i].mean() + x_anom @ (w_mean[:, None] + root)
        np.testing.assert_allclose(got.reshape(m, -1)[:, i].numpy(), expected, rtol=0,
                                   atol=1e-11)


# --------------------------------------------------------------------------------------
# Closed forms and equivalences
# --------------------------------------------------------------------------------------

def test_nerger_single_observation_gain_is_taper_times_unlocalised_gain():
    # Nerger's defining property: with one observation the localised gain is exactly
    # rho times the unlocalised one (plain R-localisation gives rho / (1 + (rho - 1) ...)).
    gen = torch.Generator().manual_seed(2)
    m = 8
    forecast = 2.0 * torch.randn(m, 40, generator=gen, dtype=F64)
    pos = grid_positions((40,), (40.0,))
    obs_at = torch.tensor([10])
    hx = forecast[:, obs_at]
    y = torch.tensor([1.5], dtype=F64)
    radius = 4.0

    def increment(regularization, radius):
        xa = letkf_analysis(forecast, hx, y, 0.7, config=LETKFConfig(
            localization_radius=radius, regularization=regularization),
            state_positions=pos, obs_positions=pos[obs_at], domain_lengths=(40.0,))
        return xa.mean(0) - forecast.mean(0)

    unlocalised = increment("none", math.inf)
    distance = torch.minimum((torch.arange(40) - 10).abs(), 40 - (torch.arange(40) - 10).abs())
    rho = gaspari_cohn(distance.to(F64), radius)
    torch.testing.assert_close(increment("nerger", radius), rho * unlocalised, rtol=0,
                               atol=1e-13)
    plain = increment("none", radius)
    inside = (rho > 0) & (rho < 1)
    assert torch.all(plain[inside].abs() > (rho * unlocalised)[inside].abs())


def test_nerger_weights_formula():
    rho = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    v = torch.tensor([2.0, 2.0, 2.0], dtype=F64)
    torch.testing.assert_close(nerger_weights(rho, v),
                               torch.tensor([0.0, 0.3 / 2.4, 1.0], dtype=F64))


def test_global_nerger_equals_plain_etkf():
    # rho = 1 everywhere: Nerger's weight is 1, the filter is the ETKF.
    prob = sqg_like(seed=3)
    args = (prob["forecast"], prob["hx"], prob["y"], prob["std"])
    torch.testing.assert_close(etkf_analysis(*args, LETKFConfig(regularization="nerger")),
                               etkf_analysis(*args), rtol=0, atol=1e-12)


def test_cross_validation_changes_only_the_perturbations():
    prob = sqg_like(seed=4)
    for regularization in ("none", "nerger"):
        symmetric = run(prob, LETKFConfig(localization_radius=1.7,
                                          regularization=regularization))
        cv = run(prob, LETKFConfig(localization_radius=1.7, regularization=regularization,
                                   perturbations="cross_validation"))
        torch.testing.assert_close(cv.mean(0), symmetric.mean(0), rtol=0, atol=1e-12)
        assert not torch.allclose(cv, symmetric)


def test_cross_validation_keeps_more_spread_and_leaves_unobserved_points():
    # Each member's update uses a gain it did not help estimate, so the analysis spread
    # is larger than the symmetric root's (the withheld member's sampling error is not
    # taken for signal); points without observations keep their forecast.
    gen = torch.Generator().manual_seed(5)
    m = 10
    forecast = torch.randn(m, 60, generator=gen, dtype=F64)
    obs_idx = torch.arange(0, 30)
    pos = grid_positions((60,), (60.0,))
    y = torch.randn(30, generator=gen, dtype=F64)
    common = dict(state_positions=pos, obs_positions=pos[obs_idx], domain_lengths=(60.0,))
    symmetric = letkf_analysis(forecast, forecast[:, obs_idx], y, 0.5,
                               config=LETKFConfig(localization_radius=3.0), **common)
    cv = letkf_analysis(forecast, forecast[:, obs_idx], y, 0.5,
                        config=LETKFConfig(localization_radius=3.0,
                                           perturbations="cross_validation"), **common)
    observed = slice(6, 24)
    assert float(cv[:, observed].std(0).mean()) > 1.2 * float(symmetric[:, observed]
                                                              .std(0).mean())
    far = slice(37, 53)
    torch.testing.assert_close(cv[:, far], forecast[:, far], rtol=0, atol=1e-13)


def test_cross_validation_in_float32_and_with_rtps():
    prob = sqg_like(seed=6)
    config = LETKFConfig(localization_radius=1.7, regularization="nerger",
                         perturbations="cross_validation", inflation="rtps",
                         inflation_factor=0.5)
    result64 = run(prob, config)
    to32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in prob.items()}
    torch.testing.assert_close(run(to32, config).double(), result64, rtol=0, atol=1e-4)
    plain = run(prob, LETKFConfig(localization_radius=1.7, regularization="nerger",
                                  perturbations="cross_validation"))
    spread = 0.5 * prob["forecast"].std(0) + 0.5 * plain.std(0)
    torch.testing.assert_close(result64.std(0), spread, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(regularization="huber"), "regularization must be one of"),
    (dict(perturbations="stochastic"), "perturbations must be one of"),
    (dict(cv_groups=4), "only used with perturbations"),
    (dict(perturbations="cross_validation", cv_groups=1), "cv_groups must be"),
    (dict(perturbations="cross_validation", cv_groups=2.0), "cv_groups must be"),
])
def test_config_rejects_bad_cv_settings(kwargs, match):
    with pytest.raises(InputError, match=match):
        LETKFConfig(**kwargs)


def test_groups_must_fit_the_ensemble():
    prob = sqg_like()                                  # 6 members
    for groups in (4, 3):                              # 4 does not divide; 3 leaves 4: fine
        config = LETKFConfig(localization_radius=1.7, perturbations="cross_validation",
                             cv_groups=groups)
        if groups == 4:
            with pytest.raises(InputError, match="does not fit 6 members"):
                run(prob, config)
        else:
            assert run(prob, config).shape == prob["forecast"].shape
    two = {**prob, "forecast": prob["forecast"][:2], "hx": prob["hx"][:2]}
    with pytest.raises(InputError, match="at least 2 outside"):
        run(two, LETKFConfig(localization_radius=1.7, perturbations="cross_validation"))
