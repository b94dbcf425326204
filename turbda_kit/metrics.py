"""Ensemble verification scores: pure torch functions over ``(member, *state)`` tensors.

All scores average over every state element (grid points and levels) unless said
otherwise, return tensors on the input's device and dtype, and are in the state's units
(K for SQG temperature) unless they are ratios or counts.

Conventions
-----------
- Ensemble variance uses the unbiased ``m - 1`` denominator everywhere.
- For a reliable (statistically exchangeable with the truth) ensemble of ``m`` members,
  ``E[rmse^2] = (m + 1) / m * E[spread^2]``, so ``spread / rmse`` tends to
  ``sqrt(m / (m + 1))``, not 1; :func:`spread_skill_ratio` can correct for that.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "rmse",
    "spread",
    "spread_skill_ratio",
    "crps",
    "crps_gaussian",
    "rank_histogram",
    "InnovationStats",
    "innovation_stats",
    "InnovationConsistency",
    "innovation_consistency",
]


def _check(ensemble: Tensor, truth: Tensor | None = None, min_members: int = 1) -> None:
    if ensemble.dim() < 2:
        raise InputError(f"ensemble must be (member, *state_shape), got shape "
                         f"{tuple(ensemble.shape)}")
    if ensemble.shape[0] < min_members:
        raise InputError(f"ensemble has {ensemble.shape[0]} member(s); this score needs at "
                         f"least {min_members}")
    if truth is not None and tuple(truth.shape) != tuple(ensemble.shape[1:]):
        raise InputError(f"truth shape {tuple(truth.shape)} does not match the ensemble's state "
                         f"shape {tuple(ensemble.shape[1:])}")


def rmse(ensemble: Tensor, truth: Tensor) -> Tensor:
    """Root-mean-square error of the ensemble mean.

    Parameters
    ----------
    ensemble : Tensor, shape (member, *state_shape)
    truth : Tensor, shape (*state_shape)

    Returns
    -------
    Tensor, 0-d
        ``sqrt(mean_state((mean_member X - y)^2))``, in the state's units.
    """
    _check(ensemble, truth)
    err = ensemble.mean(dim=0) - truth
    return torch.sqrt((err * err).mean())


def spread(ensemble: Tensor) -> Tensor:
    """Ensemble spread: square root of the state-mean of the member variance.

    The variance uses the unbiased ``m - 1`` denominator, so that for a reliable ensemble
    ``spread ≈ rmse · sqrt(m / (m + 1))``.

    Parameters
    ----------
    ensemble : Tensor, shape (member, *state_shape), member >= 2

    Returns
    -------
    Tensor, 0-d
        ``sqrt(mean_state(var_member X))``, in the state's units.
    """
    _check(ensemble, min_members=2)
    return torch.sqrt(ensemble.var(dim=0, correction=1).mean())


def spread_skill_ratio(ensemble: Tensor, truth: Tensor, *,
                       finite_ensemble_correction: bool = False) -> Tensor:
    """``spread / rmse``: below 1 under-dispersive, above 1 over-dispersive.

    Parameters
    ----------
    ensemble : Tensor, shape (member, *state_shape), member >= 2
    truth : Tensor, shape (*state_shape)
    finite_ensemble_correction : bool
        Multiply the spread by ``sqrt((m + 1) / m)`` (Fortin et al. 2014) so that a
        reliable ensemble of any size scores 1 in expectation.

    Returns
    -------
    Tensor, 0-d
    """
    ratio = spread(ensemble) / rmse(ensemble, truth)
    if finite_ensemble_correction:
        m = ensemble.shape[0]
        ratio = ratio * math.sqrt((m + 1) / m)
    return ratio


def crps(ensemble: Tensor, truth: Tensor, fair: bool = True,
         reduction: Literal["mean", "none"] = "mean") -> Tensor:
    """Continuous ranked probability score of an ensemble.

    ``CRPS = (1/m) Σ_i |X_i - y| - 1/(2 m (m - 1)) Σ_i Σ_j |X_i - X_j|``, the *fair* form
    of Ferro (2014), unbiased for the CRPS of the distribution the members are drawn
    from; ``fair=False`` uses ``1/(2 m²)`` (the CRPS of the empirical distribution).
    The pair sum costs ``O(m log m)`` from the sorted members:
    ``Σ_i Σ_j |X_i - X_j| = 2 Σ_k (2k - m - 1) X_(k)`` with ``k = 1..m``.

    Parameters
    ----------
    ensemble : Tensor, shape (member, *state_shape)
        ``member >= 2`` when ``fair``.
    truth : Tensor, shape (*state_shape)
    fair : bool
        Fair (default) or empirical-distribution estimator.
    reduction : {"mean", "none"}
        Average over the state (0-d result) or return the score per element.

    Returns
    -------
    Tensor, 0-d or shape (*state_shape)
        In the state's units.
    """
    _check(ensemble, truth, min_members=2 if fair else 1)
    if reduction not in ("mean", "none"):
        raise InputError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    m = ensemble.shape[0]
    skill = (ensemble - truth).abs().mean(dim=0)
    ordered, _ = torch.sort(ensemble, dim=0)
    k = torch.arange(1, m + 1, dtype=ensemble.dtype, device=ensemble.device)
    weights = (2 * k - m - 1).reshape(m, *([1] * (ensemble.dim() - 1)))
    pair_sum = 2 * (weights * ordered).sum(dim=0)
    denominator = 2 * m * (m - 1) if fair else 2 * m * m
    score = skill - pair_sum / denominator
    return score.mean() if reduction == "mean" else score


def crps_gaussian(mean: Tensor, std: Tensor | float, truth: Tensor) -> Tensor:
    """Closed-form CRPS of a Gaussian forecast ``N(mean, std²)`` (Gneiting et al. 2005).

    ``CRPS = σ [z (2Φ(z) - 1) + 2 φ(z) - 1/√π]`` with ``z = (y - μ) / σ``.

    Parameters
    ----------
    mean, truth : Tensor, broadcastable
    std : Tensor or float, > 0, broadcastable

    Returns
    -------
    Tensor, the broadcast shape
        Elementwise CRPS in the units of ``mean``.
    """
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if not bool((std > 0).all()):
        raise InputError("std must be > 0 for the Gaussian CRPS")
    z = (truth - mean) / std
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return std * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def rank_histogram(ensemble: Tensor, truth: Tensor,
                   generator: torch.Generator | None = None) -> Tensor:
    """Counts of the truth's rank among the members, over all state elements.

    Parameters
    ----------
    ensemble : Tensor, shape (member, *state_shape)
    truth : Tensor, shape (*state_shape)
    generator : torch.Generator, optional
        Breaks ties (members equal to the truth) uniformly at random. Without it ties are
        split deterministically at their midpoint (rank = below + equal // 2).

    Returns
    -------
    Tensor, shape (member + 1,), int64
        ``counts[r]`` = number of state elements whose truth has rank ``r`` (``r`` members
        below it). Flat in expectation for a reliable ensemble.
    """
    _check(ensemble, truth)
    m = ensemble.shape[0]
    below = (ensemble < truth).sum(dim=0)
    equal = (ensemble == truth).sum(dim=0)
    if generator is None:
        ranks = below + equal // 2
    else:
        uniform = torch.rand(equal.shape, generator=generator, device=generator.device,
                             dtype=torch.float64).to(equal.device)
        ranks = below + torch.floor(uniform * (equal + 1)).to(below.dtype)
    return torch.bincount(ranks.reshape(-1), minlength=m + 1)


class InnovationStats(NamedTuple):
    """Mean and standard deviation (``n_obs - 1`` denominator) of ``y - mean H(X)``."""

    mean: Tensor
    std: Tensor


def _check_obs(obs: Tensor, obs_ensemble: Tensor) -> None:
    if obs.dim() != 1 or obs_ensemble.dim() != 2 or obs_ensemble.shape[1] != obs.shape[0]:
        raise InputError(f"obs must be (n_obs,) and obs_ensemble (member, n_obs); got "
                         f"{tuple(obs.shape)} and {tuple(obs_ensemble.shape)}")


def innovation_stats(obs: Tensor, obs_ensemble: Tensor) -> InnovationStats:
    """Mean and standard deviation of the innovations ``d = y - mean_member H(X)``.

    Parameters
    ----------
    obs : Tensor, shape (n_obs,)
    obs_ensemble : Tensor, shape (member, n_obs)
        The observation operator applied to each (forecast) member.

    Returns
    -------
    InnovationStats
        ``(mean, std)``, 0-d tensors in obs units (a 2-tuple: ``mean, std = ...`` works).
    """
    _check_obs(obs, obs_ensemble)
    innovation = obs - obs_ensemble.mean(dim=0)
    return InnovationStats(innovation.mean(), innovation.std())


class InnovationConsistency(NamedTuple):
    """Observed and expected innovation size (Desroziers et al. 2005 diagnostic)."""

    rms: Tensor            # sqrt(mean d²)
    expected_rms: Tensor   # sqrt(mean(sigma_o² + var_member H(X)))
    ratio: Tensor          # rms / expected_rms: ≈ 1 when prior and obs errors are right


def innovation_consistency(obs: Tensor, obs_ensemble: Tensor,
                           obs_error_std: Tensor | float) -> InnovationConsistency:
    """Compare the innovation size with what the ensemble and ``R`` predict.

    For a consistent system ``E[d²] = sigma_o² + (H P H^T)_jj``; a ``ratio`` above 1 says
    the forecast ensemble (or ``R``) is too confident, below 1 too diffuse.

    Parameters
    ----------
    obs : Tensor, shape (n_obs,)
    obs_ensemble : Tensor, shape (member, n_obs), member >= 2
    obs_error_std : Tensor or float, scalar or shape (n_obs,)

    Returns
    -------
    InnovationConsistency
        0-d tensors ``(rms, expected_rms, ratio)``.
    """
    _check_obs(obs, obs_ensemble)
    _check(obs_ensemble, min_members=2)
    std = torch.as_tensor(obs_error_std, dtype=obs.dtype, device=obs.device)
    innovation = obs - obs_ensemble.mean(dim=0)
    rms = torch.sqrt((innovation * innovation).mean())
    expected = torch.sqrt((std * std + obs_ensemble.var(dim=0, correction=1)).mean())
    return InnovationConsistency(rms, expected, rms / expected)
