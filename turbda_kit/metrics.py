"""Ensemble verification scores: pure torch functions over ``(member, *state)`` tensors.

All scores average over every state element (grid points and levels) unless said
otherwise, and return 0-d tensors on the input's device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import InputError


def _check(ensemble: Tensor, truth: Tensor | None = None) -> None:
    if ensemble.dim() < 2:
        raise InputError(f"ensemble must be (member, *state_shape), got shape {tuple(ensemble.shape)}")
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
        ``sqrt(mean((mean_m X - y)^2))``, in the state's units.
    """
    _check(ensemble, truth)
    err = ensemble.mean(dim=0) - truth
    return torch.sqrt((err * err).mean())


def spread(ensemble: Tensor) -> Tensor:
    """Ensemble spread: square root of the mean (over the state) of the member variance.

    The variance uses the unbiased ``n - 1`` denominator, so that for a reliable ensemble
    ``spread ≈ rmse · sqrt(n / (n + 1))``.

    Parameters
    ----------
    ensemble : Tensor, shape (member, *state_shape), member >= 2
    """
    _check(ensemble)
    if ensemble.shape[0] < 2:
        raise InputError("spread needs at least 2 members")
    return torch.sqrt(ensemble.var(dim=0, unbiased=True).mean())


def spread_skill_ratio(ensemble: Tensor, truth: Tensor) -> Tensor:
    """``spread / rmse`` (1 for a well-calibrated large ensemble)."""
    return spread(ensemble) / rmse(ensemble, truth)


def crps(ensemble: Tensor, truth: Tensor, fair: bool = True) -> Tensor:
    """Continuous ranked probability score of an ensemble, averaged over the state.

    ``CRPS = mean_i |X_i - y| - 1/(2 m (m - 1)) sum_ij |X_i - X_j|`` (the *fair* form of
    Ferro 2014; ``fair=False`` uses ``1/(2 m^2)``). The pair sum is computed in
    ``O(m log m)`` from the sorted members: ``sum_ij |X_i - X_j| = 2 sum_k (2k - m - 1) X_(k)``.

    Parameters
    ----------
    ensemble : Tensor, shape (member, *state_shape)
    truth : Tensor, shape (*state_shape)
    fair : bool
        Fair (unbiased for the ensemble's distribution) or standard estimator.

    Returns
    -------
    Tensor, 0-d
        Mean CRPS, in the state's units.
    """
    _check(ensemble, truth)
    m = ensemble.shape[0]
    if fair and m < 2:
        raise InputError("the fair CRPS needs at least 2 members")
    skill = (ensemble - truth).abs().mean(dim=0)
    ordered, _ = torch.sort(ensemble, dim=0)
    k = torch.arange(1, m + 1, dtype=ensemble.dtype, device=ensemble.device)
    weights = (2 * k - m - 1).reshape(m, *([1] * (ensemble.dim() - 1)))
    pair_sum = 2 * (weights * ordered).sum(dim=0)
    denominator = 2 * m * (m - 1) if fair else 2 * m * m
    return (skill - pair_sum / denominator).mean()


def rank_histogram(ensemble: Tensor, truth: Tensor) -> Tensor:
    """Counts of the truth's rank among the members, over all state elements.

    Parameters
    ----------
    ensemble : Tensor, shape (member, *state_shape)
    truth : Tensor, shape (*state_shape)

    Returns
    -------
    Tensor, shape (member + 1,), int64
        ``counts[r]`` = number of elements where exactly ``r`` members lie below the truth
        (ties are broken at random by counting half of the equal members, rounded down).
    """
    _check(ensemble, truth)
    m = ensemble.shape[0]
    below = (ensemble < truth).sum(dim=0)
    equal = (ensemble == truth).sum(dim=0)
    ranks = below + equal // 2
    return torch.bincount(ranks.reshape(-1), minlength=m + 1)


def innovation_stats(obs: Tensor, obs_ensemble: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the innovations ``y - mean_m H(X_m)``.

    Parameters
    ----------
    obs : Tensor, shape (n_obs,)
    obs_ensemble : Tensor, shape (member, n_obs)
    """
    innovation = obs - obs_ensemble.mean(dim=0)
    return innovation.mean(), innovation.std()
