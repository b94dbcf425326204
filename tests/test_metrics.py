"""Verification scores against closed forms, brute force and exchangeability."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from turbda_kit import metrics
from turbda_kit.errors import InputError

F64 = torch.float64


def crps_brute_force(ensemble: np.ndarray, truth: float, fair: bool) -> float:
    """The O(m^2) definition, member pair by member pair."""
    m = len(ensemble)
    skill = np.mean(np.abs(ensemble - truth))
    pairs = sum(abs(a - b) for a in ensemble for b in ensemble)
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


def test_rmse_and_spread_small_cases():
    truth = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    ensemble = torch.stack([truth + 1, truth + 3])          # mean error 2 everywhere
    assert metrics.rmse(ensemble, truth).item() == pytest.approx(2.0)
    # variance of {1, 3} with the m - 1 denominator is 2
    assert metrics.spread(ensemble).item() == pytest.approx(math.sqrt(2.0))
    assert metrics.spread_skill_ratio(ensemble, truth).item() == pytest.approx(math.sqrt(2) / 2)


def test_spread_skill_ratio_of_a_reliable_ensemble():
    gen = torch.Generator().manual_seed(0)
    m = 5
    draws = torch.randn(m + 1, 200_000, generator=gen, dtype=F64)
    truth, ensemble = draws[0], draws[1:]
    ratio = metrics.spread_skill_ratio(ensemble, truth).item()
    assert ratio == pytest.approx(math.sqrt(m / (m + 1)), rel=0.01)
    corrected = metrics.spread_skill_ratio(ensemble, truth, finite_ensemble_correction=True)
    assert corrected.item() == pytest.approx(1.0, rel=0.01)


@pytest.mark.parametrize("fair", [True, False])
def test_crps_matches_brute_force_including_ties(fair):
    gen = torch.Generator().manual_seed(1)
    ensemble = torch.randn(9, 4, 3, generator=gen, dtype=F64)
    ensemble[3] = ensemble[5]                                  # ties between members
    truth = torch.randn(4, 3, generator=gen, dtype=F64)
    truth[0, 0] = ensemble[2, 0, 0]                            # truth equal to a member
    got = metrics.crps(ensemble, truth, fair=fair, reduction="none")
    expected = np.array([[crps_brute_force(ensemble[:, i, j].numpy(), truth[i, j].item(), fair)
                          for j in range(3)] for i in range(4)])
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-13)
    assert metrics.crps(ensemble, truth, fair=fair).item() == pytest.approx(expected.mean())


def test_crps_gaussian_closed_form_against_integral_definition():
    mean, std = 0.3, 1.7
    for y in (-2.0, 0.3, 1.1, 4.0):
        def integrand(x, y=y):
            cdf = stats.norm.cdf(x, mean, std)
            return (cdf - (x >= y)) ** 2
        integral = (integrate.quad(integrand, -np.inf, y)[0]
                    + integrate.quad(integrand, y, np.inf)[0])
        closed = metrics.crps_gaussian(torch.tensor(mean, dtype=F64), std,
                                       torch.tensor(y, dtype=F64))
        assert closed.item() == pytest.approx(integral, rel=1e-7)


def test_fair_crps_of_large_gaussian_ensemble_approaches_closed_form():
    gen = torch.Generator().manual_seed(2)
    mean, std, m = 1.0, 2.0, 20_000
    truth = torch.tensor([-3.0, 0.0, 1.0, 2.5, 6.0], dtype=F64)
    ensemble = mean + std * torch.randn(m, truth.numel(), generator=gen, dtype=F64)
    got = metrics.crps(ensemble, truth, reduction="none")
    expected = metrics.crps_gaussian(torch.full_like(truth, mean), std, truth)
    # Monte-Carlo error of the fair estimator is O(std / sqrt(m)) ≈ 0.014 here: 3.5 sigma.
    torch.testing.assert_close(got, expected, rtol=0, atol=0.05)
    # The fair form removes the O(1/m) bias of the empirical one, on average.
    small = mean + std * torch.randn(4, 50_000, generator=gen, dtype=F64)
    y = mean + std * torch.randn(50_000, generator=gen, dtype=F64)
    exact = metrics.crps_gaussian(torch.full_like(y, mean), std, y).mean()
    fair = metrics.crps(small, y, fair=True)
    biased = metrics.crps(small, y, fair=False)
    assert abs(fair - exact) < 0.02 < abs(biased - exact)


def test_rank_histogram_is_flat_for_exchangeable_draws():
    gen = torch.Generator().manual_seed(3)
    m, n = 9, 50_000
    draws = torch.randn(m + 1, n, generator=gen, dtype=F64)
    counts = metrics.rank_histogram(draws[1:], draws[0])
    assert counts.shape == (m + 1,) and int(counts.sum()) == n
    assert stats.chisquare(counts.numpy()).pvalue > 0.01
    # An under-dispersed ensemble puts the truth outside it too often: a U shape.
    narrow = metrics.rank_histogram(0.5 * draws[1:], draws[0])
    assert narrow[0] > 2 * n / (m + 1) and narrow[-1] > 2 * n / (m + 1)


def test_rank_histogram_breaks_ties_at_random_with_a_generator():
    gen = torch.Generator().manual_seed(4)
    m, n = 4, 40_000
    # Exchangeable discrete draws: many exact ties between truth and members.
    draws = torch.randint(0, 3, (m + 1, n), generator=gen).to(F64)
    counts = metrics.rank_histogram(draws[1:], draws[0], generator=torch.Generator()
                                    .manual_seed(5))
    assert stats.chisquare(counts.numpy()).pvalue > 0.01
    deterministic = metrics.rank_histogram(draws[1:], draws[0])
    assert int(deterministic.sum()) == n


def test_innovation_statistics():
    obs = torch.tensor([1.0, 2.0, 4.0], dtype=F64)
    obs_ensemble = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 2.0]], dtype=F64)
    mean, std = metrics.innovation_stats(obs, obs_ensemble)   # d = [0, 1, 2]
    assert mean.item() == pytest.approx(1.0) and std.item() == pytest.approx(1.0)
    check = metrics.innovation_consistency(obs, obs_ensemble, 0.5)
    assert check.rms.item() == pytest.approx(math.sqrt(5 / 3))
    # member variances (m - 1 denominator): [2, 0, 0]
    assert check.expected_rms.item() == pytest.approx(math.sqrt(0.25 + 2 / 3))
    # A consistent synthetic system scores ≈ 1: truth, members ~ N(0, 1), obs error 0.5.
    gen = torch.Generator().manual_seed(6)
    m, n = 50, 100_000
    truth = torch.randn(n, generator=gen, dtype=F64)
    members = torch.randn(m, n, generator=gen, dtype=F64)
    y = truth + 0.5 * torch.randn(n, generator=gen, dtype=F64)
    ratio = metrics.innovation_consistency(y, members, 0.5).ratio.item()
    # E[d^2] also carries the ensemble-mean sampling error 1/m.
    assert ratio == pytest.approx(math.sqrt((1 + 1 / m + 0.25) / 1.25), rel=0.01)


def test_scores_follow_the_input_device_and_dtype(device):
    gen = torch.Generator().manual_seed(7)
    ensemble = torch.randn(6, 2, 4, 4, generator=gen).to(device)
    truth = torch.randn(2, 4, 4, generator=gen).to(device)
    for score in (metrics.rmse(ensemble, truth), metrics.spread(ensemble),
                  metrics.crps(ensemble, truth), metrics.spread_skill_ratio(ensemble, truth)):
        assert score.device.type == device.type and score.dtype == torch.float32
        assert score.dim() == 0
    assert metrics.rank_histogram(ensemble, truth).sum().item() == 32


def test_bad_inputs_raise_input_error():
    ensemble = torch.zeros(3, 4)
    with pytest.raises(InputError, match="truth shape"):
        metrics.rmse(ensemble, torch.zeros(5))
    with pytest.raises(InputError, match="at least 2"):
        metrics.spread(torch.zeros(1, 4))
    with pytest.raises(InputError, match="at least 2"):
        metrics.crps(torch.zeros(1, 4), torch.zeros(4))
    with pytest.raises(InputError, match="reduction"):
        metrics.crps(ensemble, torch.zeros(4), reduction="sum")
    with pytest.raises(InputError, match="member, \\*state_shape"):
        metrics.spread(torch.zeros(4))
    with pytest.raises(InputError, match="obs_ensemble"):
        metrics.innovation_stats(torch.zeros(4), torch.zeros(3, 5))
    with pytest.raises(InputError, match="std"):
        metrics.crps_gaussian(torch.zeros(2), 0.0, torch.zeros(2))


# ---------------------------------------------------------------------------------------
# Cross-checks against the field's libraries, on the members a cycling run saved


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A Lorenz-96 LETKF run (float64, 8 members) with its analysis members on disk."""
    from turbda_kit.experiments import build_experiment, get_preset
    from turbda_kit.experiments.members import MemberOutput
    from turbda_kit.experiments.results import open_members

    out = tmp_path_factory.mktemp("members")
    preset = get_preset("sakov2008").replace(n_cycles=12, spinup_cycles=3, n_members=8)
    output = MemberOutput(out / "cycling_letkf_members.nc")
    ds = build_experiment(preset, "letkf", seed=4).run(show_progress=False, members=output)
    members = open_members(output.path).load()
    return ds, members


def _library(name: str):
    return pytest.importorskip(name, reason=f"{name} is not installed: pip install -e '.[test]' "
                                            "(the test extra) to cross-check the kit's scores")


def test_crps_agrees_with_properscoring_on_saved_members(saved_run):
    properscoring = _library("properscoring")
    ds, members = saved_run
    m = members.sizes["member"]
    for kind in ("forecast", "analysis"):
        ensemble = members[f"{kind}_ensemble"].values        # (cycle, member, i), float64
        truth = members.truth.values                         # (cycle, i)
        empirical = properscoring.crps_ensemble(truth, ensemble, axis=1)   # (cycle, i)
        ours = np.stack([metrics.crps(torch.from_numpy(e), torch.from_numpy(t), fair=False,
                                      reduction="none").numpy()
                         for e, t in zip(ensemble, truth)])
        np.testing.assert_allclose(ours, empirical, rtol=1e-12, atol=1e-14)
        # The run stores the fair CRPS: the empirical one plus the pair term's m/(m-1)
        # correction, sum_ij |X_i - X_j| (1 / (2 m^2) - 1 / (2 m (m - 1))).
        pairs = np.abs(ensemble[:, :, None, :] - ensemble[:, None, :, :]).sum(axis=(1, 2))
        fair = empirical + pairs * (1 / (2 * m * m) - 1 / (2 * m * (m - 1)))
        np.testing.assert_allclose(fair.mean(axis=1), ds[f"crps_{kind}"].values, rtol=1e-12)


def test_crps_rmse_and_rank_histogram_agree_with_xskillscore(saved_run):
    xs = _library("xskillscore")
    _library("properscoring")
    ds, members = saved_run
    analysis, truth = members.analysis_ensemble, members.truth
    crps = xs.crps_ensemble(truth, analysis, member_dim="member", dim=["i"])
    ours = [float(metrics.crps(torch.from_numpy(a), torch.from_numpy(t), fair=False))
            for a, t in zip(analysis.values, truth.values)]
    np.testing.assert_allclose(crps.values, ours, rtol=1e-12)
    rmse = xs.rmse(analysis.mean("member"), truth, dim="i")
    np.testing.assert_allclose(rmse.values, ds.rmse_analysis.values, rtol=1e-12)
    # The run's rank histogram counts the cycles after spin-up.
    scored = members.cycle > int(ds.attrs["config_spinup_cycles"])
    counts = xs.rank_histogram(truth.where(scored, drop=True), analysis.where(scored, drop=True),
                               dim=["cycle", "i"], member_dim="member")
    np.testing.assert_array_equal(counts.values, ds.rank_histogram.values)


def test_spread_agrees_with_xarray_on_saved_members(saved_run):
    ds, members = saved_run
    for kind in ("forecast", "analysis"):
        spread = np.sqrt(members[f"{kind}_ensemble"].var("member", ddof=1).mean("i"))
        np.testing.assert_allclose(spread.values, ds[f"spread_{kind}"].values, rtol=1e-12)
