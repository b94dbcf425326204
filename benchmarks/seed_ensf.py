"""The seed's EnSF update, reimplemented for speed comparisons (same maths, same op structure).

The reference is the Lorenz-96 EnSF script of the seed repository (``ensf/run_ensf.py`` of
jqyin/sqg_vit, after Bao, Zhang & Zhang's released code): a reverse-time SDE integrated by
Euler-Maruyama over ``time_steps`` steps from ``x_T ~ N(0, I)``, with whole-array torch
operations that allocate fresh tensors at every step, the schedule
``alpha_t = 1 - (1 - eps_alpha) t``, ``sigma_t^2 = eps_sigma_sq + (1 - eps_sigma_sq) t``,
``f = d log alpha / dt``, ``g^2 = d sigma^2/dt - 2 f sigma^2``, the paired prior score
``-(x - alpha_t x0) / sigma_t^2``, the analytic arctan likelihood score
``-(atan(x) - y) / sigma_obs^2 / (1 + x^2)`` with unobserved components zeroed by a boolean
mask, the damping ``tau(t) = 1 - t`` and fresh ``randn`` noise at every step.

Written from a reading of that script for ``benchmarks/bench_ensf.py``; it is not part of
the package. The only change is an explicit ``torch.Generator`` for the draws (the script
uses the global generator; the cost is the same).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def seed_ensf_update(x0: Tensor, obs: Tensor, obs_sigma: float, time_steps: int,
                     eps_alpha: float, eps_sigma_sq: float, generator: torch.Generator,
                     observed: Tensor | None = None) -> Tensor:
    """Analysis ensemble by the seed's reverse SDE (paired score, arctan observations).

    Parameters
    ----------
    x0 : Tensor, shape ``(members, n)``
        Forecast ensemble (the prior members of the paired score).
    obs : Tensor, shape ``(n,)``
        Observations ``atan(x_true) + noise``.
    obs_sigma : float
        Observation error standard deviation.
    time_steps : int
        Euler-Maruyama steps.
    eps_alpha, eps_sigma_sq : float
        Schedule endpoints (the kit's ``eps_alpha``, ``eps_beta``).
    generator : torch.Generator
        Source of the ``randn`` draws.
    observed : Tensor of bool, shape ``(n,)``, optional
        Observed components (default all, as with ``obs_ratio = 1``).

    Returns
    -------
    Tensor, shape ``(members, n)``
    """
    if observed is None:
        observed = torch.ones(x0.shape[1], dtype=torch.bool, device=x0.device)

    def cond_alpha(t):
        return 1 - (1 - eps_alpha) * t

    def cond_sigma_sq(t):
        return eps_sigma_sq + (1 - eps_sigma_sq) * t

    def drift(t):
        return -(1 - eps_alpha) / cond_alpha(t)

    def diffusion(t):
        return math.sqrt((1 - eps_sigma_sq) - 2 * drift(t) * cond_sigma_sq(t))

    def likelihood_score(xt, t):
        score = -(torch.atan(xt) - obs) / obs_sigma ** 2 * (1.0 / (1.0 + xt ** 2))
        score[:, ~observed] = 0
        return (1 - t) * score

    dt = 1.0 / time_steps
    xt = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    t = 1.0
    for _ in range(time_steps):
        alpha_t = cond_alpha(t)
        sigma2_t = cond_sigma_sq(t)
        g = diffusion(t)
        xt += -dt * (drift(t) * xt - g ** 2 * (-(xt - alpha_t * x0) / sigma2_t
                                               + likelihood_score(xt, t))) \
            + math.sqrt(dt) * g * torch.randn(xt.shape, generator=generator, dtype=xt.dtype,
                                              device=xt.device)
        t = t - dt
    return xt
