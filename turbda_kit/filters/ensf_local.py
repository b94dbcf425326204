"""The local ensemble-space EnSF: the EnSF's reverse SDE in each location's LETKF weight space.

The EnSF (:mod:`turbda_kit.filters.ensf`) works point by point: its paired prior score
carries no covariance between points, so on a dense network each value combines its own
forecast with its own observation and cannot use the neighbours' observations. The LETKF
uses them through its local ensemble space. This filter runs the EnSF's sampler there.

For an analysis location with ``m`` members, forecast anomalies ``X`` and whitened local
observation anomalies ``Y`` (Gaspari–Cohn R-localisation weights ``rho``, innovation
``d``; all exactly as in :mod:`turbda_kit.filters.letkf`), write the analysis as
``x = x̄ + X z / sqrt(m - 1)``. In the coordinates ``z`` (``m`` of them):

* the forecast members are the points ``z_j = sqrt(m - 1) (e_j - 1/m)`` — their sample
  covariance is the identity on the ensemble's span;
* the local log-likelihood is ``-|d - Y z / sqrt(m - 1)|²_rho / 2``, with gradient
  ``b - C z``, ``C = Yᵀ diag(rho) Y / (m - 1)``, ``b = Yᵀ diag(rho) d / sqrt(m - 1)``
  (the LETKF's local Gram matrix, :func:`ensemble_space_ensf_transforms`).

The EnSF's reverse SDE (schedule :func:`~turbda_kit.filters.ensf.schedule`, ``n_steps``
Euler–Maruyama steps from pseudo-time 1 to 0, likelihood weight ``w h(t)`` with
``h(t) = 1 - t``) then runs on ``m`` particles in ``z``, with

* the prior score ``"paired"`` (default; the EnSF's own): particle ``j`` is drawn towards
  ``alpha_t z_j`` with variance ``beta_t²``, i.e. ``-(z - alpha_t z_j) / beta_t²``;
  or ``"gaussian"``: the exact score of the diffused ``N(0, I)``,
  ``-z / (alpha_t² + beta_t²)``;
* the likelihood term ``w h(t) (b - C z)`` (default) or, with ``likelihood="diffused"``,
  the Gaussian likelihood of the noisy particle, one weight per eigen-direction of ``C``
  (:class:`LocalEnSFConfig`);
* the likelihood step linearly implicit in ``C`` (stable for any number of local
  observations; :class:`~turbda_kit.filters.ensf.EnSFConfig` ``likelihood_step``): every
  step is diagonal in ``C``'s eigenvectors, so each location costs one ``eigh`` and one
  small matmul per step.

With ``sampler="ode"`` the same scores drive the SDE's probability-flow ODE instead (each
score term halved, no noise) from each member's own point at pseudo-time 1, so every
analysis member is a deterministic function of its forecast member; with the exact
Gaussian score that flow is the ETKF's symmetric square root (tested).

Particle ``k`` at pseudo-time 0 is analysis member ``k``: the transform's column ``k`` is
``z_k / sqrt(m - 1)``, applied as the LETKF applies its transforms, and RTPS/RTPP or
multiplicative inflation act as in the LETKF (:class:`~turbda_kit.filters.letkf.LETKFConfig`).

**One draw of noise for every location.** The SDE's Gaussian draws (``n_steps + 1`` of
shape ``(m, m)``) are made once per analysis and shared by every location, in the
location's own coordinates before the eigen-rotation. Neighbouring locations have nearly
the same Gram matrix, so they get nearly the same transform, and the analysis is as smooth
in space as the LETKF's; independent draws per location would add white noise to the
members (not measured: reasoning). It also makes a location's transform independent of
how locations are split into blocks (tested), as a split over ranks would need.

Linear and nonlinear operators are treated as the LETKF treats them: the ensemble's
observation anomalies stand in for the operator's linearisation (the EnSF's own nonlinear
likelihood is not evaluated here; for arctan observations the point-wise EnSF keeps that
advantage). Measured on the SQG presets: ``docs/ensf.md``, "The local ensemble-space EnSF".
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from ..errors import InputError
from .base import FilterGeometry, register_filter
from .ensemble_space import batched_eigh
from .ensf import schedule
from .letkf import LETKF, LETKFConfig, letkf_analysis

__all__ = ["LocalEnSF", "LocalEnSFConfig", "ensemble_space_ensf_transforms", "sde_noise"]

PriorScore = Literal["paired", "gaussian"]
_PRIOR_SCORES = ("paired", "gaussian")
NoiseKind = Literal["iid", "centred"]
_NOISE_KINDS = ("iid", "centred")
Damping = Literal["linear", "none"]
_DAMPINGS = ("linear", "none")
Likelihood = Literal["damped", "diffused"]
_LIKELIHOODS = ("damped", "diffused")
Sampler = Literal["sde", "ode"]
_SAMPLERS = ("sde", "ode")


_CHOICES = {"prior_score": _PRIOR_SCORES, "noise": _NOISE_KINDS, "damping": _DAMPINGS,
            "likelihood": _LIKELIHOODS, "sampler": _SAMPLERS}


def _check_choices(**values: str) -> None:
    """Refuse a value outside its option's choices (``_CHOICES``)."""
    for name, value in values.items():
        if value not in _CHOICES[name]:
            raise InputError(f"{name} must be one of {_CHOICES[name]}; got {value!r}")


@dataclass(frozen=True)
class LocalEnSFConfig:
    """Settings of the local ensemble-space EnSF.

    Parameters
    ----------
    letkf : LETKFConfig
        Localisation (radii, Gram method, chunking, Nerger weights) and inflation
        (``"rtps"``, ``"rtpp"``, ``"multiplicative"``), used exactly as by the LETKF.
        ``perturbations`` must be ``"symmetric"`` (the transforms are the EnSF's).
    likelihood_weight : float
        ``w`` > 0: the likelihood enters the reverse SDE as ``w h(t) (b - C z)``.
    n_steps : int
        Euler–Maruyama steps of the reverse SDE, >= 1.
    eps_alpha, eps_beta : float
        Schedule endpoints, as :class:`~turbda_kit.filters.ensf.EnSFConfig`'s: ``alpha_1 =
        eps_alpha`` in (0, 1), ``beta_0² = eps_beta`` in [0, 1).
    prior_score : {"paired", "gaussian"}
        The prior's score in ``z`` (module docstring).
    noise : {"iid", "centred"}
        ``"iid"`` (default): independent standard normal draws. ``"centred"``: each draw's
        mean over the particles is removed and the rest scaled by ``sqrt(m / (m - 1))``
        (:func:`sde_noise`), so the noise moves no particle mean: with a linear
        likelihood the particles' mean follows a deterministic path, as the LETKF's
        analysis mean does, and only the spread is sampled.
    damping : {"linear", "none"}
        The likelihood's pseudo-time factor ``h(t)``: ``1 - t`` (default, the EnSF's) or 1
        (:class:`~turbda_kit.filters.ensf.EnSFConfig` ``damping``); read only with
        ``likelihood="damped"``.
    likelihood : {"damped", "diffused"}
        The likelihood's term in the reverse SDE. ``"damped"`` (default, the EnSF's):
        ``w h(t) (b - C z)``. ``"diffused"``: ``w`` times the gradient of the likelihood of
        the noisy particle, ``log p(y | z_t)``, with ``z_0 | z_t`` Gaussian as under the
        prior ``N(0, I)`` (mean ``s z``, variance ``c``; ``s = alpha_t / (alpha_t² +
        beta_t²)``, ``c = beta_t² / (alpha_t² + beta_t²)``): ``s (b_i - lam_i s z_i) / (1 +
        c lam_i)`` in ``C``'s eigen-direction ``i`` (eigenvalue ``lam_i``). Each direction
        is weighted by its own precision, where ``h(t)`` gives all one weight; with
        ``prior_score="gaussian"`` and ``w = 1`` the reverse SDE samples the Kalman
        posterior (tested), with the paired prior score it is this kit's variant, not the
        published EnSF's.
    sampler : {"sde", "ode"}
        ``"sde"`` (default, the EnSF's): the reverse SDE from Gaussian draws. ``"ode"``:
        its probability-flow ODE (the same scores, each term of the drift halved, no
        noise), started from each forecast member's own point at pseudo-time 1 —
        ``alpha_1 z_k``, the centre of particle ``k``'s paired prior, or ``sqrt(alpha_1² +
        beta_1²) z_k``, where the Gaussian prior's flow carries ``z_k`` — so particle
        ``k`` is a deterministic function of member ``k`` and the noise is not read.
    """

    letkf: LETKFConfig = field(default_factory=LETKFConfig)
    likelihood_weight: float = 10.0
    n_steps: int = 100
    eps_alpha: float = 0.5
    eps_beta: float = 0.025
    prior_score: PriorScore = "paired"
    noise: NoiseKind = "iid"
    damping: Damping = "linear"
    likelihood: Likelihood = "damped"
    sampler: Sampler = "sde"

    def __post_init__(self) -> None:
        if not isinstance(self.letkf, LETKFConfig):
            raise InputError(f"letkf must be a LETKFConfig (localisation and inflation); got "
                             f"{type(self.letkf).__name__}")
        if self.letkf.perturbations != "symmetric":
            raise InputError("letkf.perturbations must be 'symmetric': the local EnSF "
                             "replaces the LETKF's transforms, cross-validated ones included")
        weight = self.likelihood_weight
        if not (isinstance(weight, numbers.Real) and math.isfinite(weight) and weight > 0):
            raise InputError(f"likelihood_weight must be a finite number > 0; got {weight!r}")
        if not (isinstance(self.n_steps, int) and not isinstance(self.n_steps, bool)
                and self.n_steps >= 1):
            raise InputError(f"n_steps must be an integer >= 1; got {self.n_steps!r}")
        if not (isinstance(self.eps_alpha, numbers.Real) and 0.0 < self.eps_alpha < 1.0):
            raise InputError(f"eps_alpha must be in (0, 1); got {self.eps_alpha!r}")
        if not (isinstance(self.eps_beta, numbers.Real) and 0.0 <= self.eps_beta < 1.0):
            raise InputError(f"eps_beta must be in [0, 1); got {self.eps_beta!r}")
        _check_choices(prior_score=self.prior_score, noise=self.noise, damping=self.damping,
                       likelihood=self.likelihood, sampler=self.sampler)

    def replace(self, **changes) -> LocalEnSFConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def sde_noise(n_members: int, n_steps: int, generator: torch.Generator | int,
              device: torch.device | str | None = None, *, centred: bool = False) -> Tensor:
    """The Gaussian draws of one analysis: ``(n_steps + 1, m, m)``, float64.

    Entry 0 is the particles' start at pseudo-time 1, entry ``k + 1`` the noise of step
    ``k``; rows are coordinates, columns particles.

    Parameters
    ----------
    n_members : int
        ``m`` >= 2.
    n_steps : int
        Reverse-SDE steps.
    generator : torch.Generator or int
        The draws' stream (a Generator is advanced; an int seeds a fresh CPU one).
    device : torch.device or str, optional
        Where the result goes (default: the generator's device).
    centred : bool
        Remove each row's mean over the particles (the last axis) and scale by
        ``sqrt(m / (m - 1))``, which keeps each entry's variance 1 while the particles'
        mean gets no noise (:class:`LocalEnSFConfig` ``noise="centred"``).
    """
    if isinstance(generator, bool) or not isinstance(generator, (torch.Generator, int)):
        raise InputError(f"generator must be a torch.Generator or an int seed, got "
                         f"{type(generator).__name__}")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    noise = torch.randn((n_steps + 1, n_members, n_members), generator=generator,
                        device=generator.device, dtype=torch.float64)
    if centred:
        noise = (noise - noise.mean(dim=-1, keepdim=True)) * math.sqrt(
            n_members / (n_members - 1.0))
    return noise if device is None else noise.to(device)


def ensemble_space_ensf_transforms(gram: Tensor, noise: Tensor, *, likelihood_weight: float,
                                   eps_alpha: float = 0.5, eps_beta: float = 0.025,
                                   prior_score: PriorScore = "paired",
                                   damping: Damping = "linear",
                                   likelihood: Likelihood = "damped",
                                   sampler: Sampler = "sde") -> Tensor:
    """Transforms of the local EnSF from local Gram matrices (the LETKF's local solve's
    contract: :func:`~turbda_kit.filters.ensemble_space.transforms_from_gram`).

    Parameters
    ----------
    gram : Tensor, shape (n_loc, m + 1, m + 1)
        ``[Y|d]ᵀ diag(rho) [Y|d]`` per location (whitened; the ``(m, m)`` entry unread).
    noise : Tensor, shape (n_steps + 1, m, m)
        The draws of :func:`sde_noise` (shared by every location); float64 recommended:
        the reverse SDE runs in ``noise``'s dtype. With ``sampler="ode"`` only its shape
        and dtype are read.
    likelihood_weight, eps_alpha, eps_beta, prior_score, damping, likelihood, sampler
        As in :class:`LocalEnSFConfig`.

    Returns
    -------
    Tensor, shape (n_loc, m, m), ``gram``'s dtype
        Analysis member ``k`` at a point with forecast anomalies ``a`` (m,) is
        ``mean + a @ T[:, k]``.
    """
    _check_choices(prior_score=prior_score, damping=damping, likelihood=likelihood,
                   sampler=sampler)
    n_members = gram.shape[-1] - 1
    if noise.ndim != 3 or noise.shape[1:] != (n_members, n_members):
        raise InputError(f"noise must have shape (n_steps + 1, {n_members}, {n_members}) for "
                         f"{n_members} members; got {tuple(noise.shape)}")
    dtype = noise.dtype
    n_steps = noise.shape[0] - 1
    dof = n_members - 1.0
    precision = gram[:, :n_members, :n_members].to(dtype) / dof       # C   (n, m, m)
    gradient = gram[:, :n_members, n_members:].to(dtype) / math.sqrt(dof)  # b (n, m, 1)
    eigenvalues, eigenvectors = batched_eigh(precision)
    eigenvalues = eigenvalues.clamp_min(0.0)[..., None]                 # (n, m, 1)
    n_loc = gram.shape[0]
    # C's eigenvectors as rows, stacked: one (n m, m) @ (m, m) product rotates a draw
    # shared by every location into each location's eigen-coordinates
    to_eigen = eigenvectors.transpose(1, 2).contiguous()
    rows = to_eigen.view(n_loc * n_members, n_members)
    gradient = to_eigen @ gradient                                      # (n, m, 1)
    # forecast member j's coordinates, the columns of sqrt(m - 1) (I - 1/m)
    members = math.sqrt(dof) * (torch.eye(n_members, dtype=dtype, device=noise.device)
                                - 1.0 / n_members)
    ode = sampler == "ode"
    if ode:
        # member k's own point at pseudo-time 1: its paired prior's centre, or where the
        # Gaussian prior's flow carries it
        alpha_1, beta_sq_1, _, _ = schedule(1.0, eps_alpha, eps_beta)
        scale = alpha_1 if prior_score == "paired" else math.sqrt(alpha_1**2 + beta_sq_1)
        particles = (rows @ (scale * members)).view(n_loc, n_members, n_members)
    else:
        particles = (rows @ noise[0]).view(n_loc, n_members, n_members)
    if prior_score != "paired":
        members = None
    # the probability-flow ODE's drift takes half of each score term, and no noise
    half = 0.5 if ode else 1.0
    dt = 1.0 / n_steps
    for k in range(n_steps):
        t = 1.0 - k * dt
        alpha, beta_sq, drift, diffusion_sq = schedule(t, eps_alpha, eps_beta)
        if likelihood == "damped":
            like = half * dt * diffusion_sq * ((1.0 - t) if damping == "linear" else 1.0) \
                * likelihood_weight
            stiffness = like * eigenvalues
        else:
            # the Gaussian likelihood of z_t: per direction, weight s / (1 + c lam) on
            # (b - lam s z), its lam s z part implicit as below
            total = alpha * alpha + beta_sq
            shrink = alpha / total
            like = (half * dt * diffusion_sq * likelihood_weight * shrink) / (
                1.0 + (beta_sq / total) * eigenvalues)                   # (n, m, 1)
            stiffness = like * (shrink * eigenvalues)
        shared = 0.0 if ode else math.sqrt(dt * diffusion_sq) * noise[k + 1]
        if members is not None:
            keep = 1.0 - dt * drift - half * dt * diffusion_sq / beta_sq
            shared = shared + (half * dt * diffusion_sq * alpha / beta_sq) * members
        else:
            keep = 1.0 - dt * drift - half * dt * diffusion_sq / (alpha * alpha + beta_sq)
        # keep z + U^T (noise + paired prior pull), then the likelihood: its constant part
        # explicit, its C z part implicit (stiff: C's largest eigenvalue grows with the
        # number of local observations), diagonal in C's eigenvectors
        if isinstance(shared, Tensor):
            particles.view(n_loc * n_members, n_members).addmm_(rows, shared, beta=keep)
        else:  # the ODE with the Gaussian prior score: nothing to rotate in
            particles.mul_(keep)
        if likelihood == "damped":
            particles.add_(gradient, alpha=like)
        else:
            particles.addcmul_(gradient, like)
        particles.div_(1.0 + stiffness)
    return ((eigenvectors @ particles) / math.sqrt(dof)).to(gram.dtype)


class LocalEnSF:
    """The local ensemble-space EnSF as a :class:`~turbda_kit.filters.base.Filter`
    (``"ensf_local"``).

    Applies the observation operator to the forecast ensemble, draws the analysis's SDE
    noise from ``generator`` and runs :func:`~turbda_kit.filters.letkf.letkf_analysis`
    with :func:`ensemble_space_ensf_transforms` as the local solve.

    Parameters
    ----------
    config : LocalEnSFConfig
    state_positions : Tensor, shape (*state_shape, n_dims) or (n_state, n_dims), optional
        As for :class:`~turbda_kit.filters.letkf.LETKF`; needed when localising.
    domain_lengths : sequence of float, optional
        Periods of the horizontal axes.

    Examples
    --------
    >>> from turbda_kit.filters.localization import grid_positions
    >>> from turbda_kit.obs.operators import Identity
    >>> f = LocalEnSF(LocalEnSFConfig(LETKFConfig(localization_radius=4.0)),
    ...               grid_positions((40,), (40.0,)), (40.0,))
    >>> ens = torch.randn(10, 40, generator=torch.Generator().manual_seed(0))
    >>> f(ens, torch.zeros(40), Identity((40,)), 1.0, torch.Generator().manual_seed(1)).shape
    torch.Size([10, 40])
    """

    name = "ensf_local"

    def __init__(self, config: LocalEnSFConfig, state_positions: Tensor | None = None,
                 domain_lengths: Sequence[float] | None = None):
        if not isinstance(config, LocalEnSFConfig):
            raise InputError(f"config must be a LocalEnSFConfig, got {type(config).__name__}")
        self.config = config
        # the LETKF's plan cache (one plan per observation operator and device)
        self._letkf = LETKF(config.letkf, state_positions, domain_lengths)

    def __repr__(self) -> str:
        return f"LocalEnSF({self.config!r})"

    def transforms(self, noise: Tensor) -> Callable[[Tensor], Tensor]:
        """The local solve with this analysis's ``noise`` bound."""
        c = self.config
        return partial(ensemble_space_ensf_transforms, noise=noise,
                       likelihood_weight=c.likelihood_weight, eps_alpha=c.eps_alpha,
                       eps_beta=c.eps_beta, prior_score=c.prior_score, damping=c.damping,
                       likelihood=c.likelihood, sampler=c.sampler)

    def __call__(self, forecast_ensemble: Tensor, obs: Tensor, obs_operator: Callable,
                 obs_error_std: float | Tensor,
                 generator: torch.Generator | int | None = None) -> Tensor:
        """Analysis ensemble ``(member, *state_shape)``.

        Raises
        ------
        InputError
            No ``generator`` (the SDE needs one), and everything the LETKF refuses.
        """
        if generator is None:
            raise InputError("the local EnSF draws SDE noise: pass a torch.Generator or an "
                             "int seed")
        if forecast_ensemble.ndim < 2 or forecast_ensemble.shape[0] < 2:
            raise InputError(f"forecast_ensemble must be (member >= 2, *state_shape); got "
                             f"shape {tuple(forecast_ensemble.shape)}")
        noise = sde_noise(forecast_ensemble.shape[0], self.config.n_steps, generator,
                          forecast_ensemble.device, centred=self.config.noise == "centred")
        obs_ensemble = obs_operator(forecast_ensemble)
        plan = None if self.config.letkf.is_global else self._letkf.plan_for(
            obs_operator, forecast_ensemble)
        return letkf_analysis(forecast_ensemble, obs_ensemble, obs, obs_error_std,
                              config=self.config.letkf, plan=plan,
                              transforms=self.transforms(noise))


def _make(settings: LocalEnSFConfig | None, geometry: FilterGeometry) -> LocalEnSF:
    return LocalEnSF(settings if settings is not None else LocalEnSFConfig(),
                     geometry.state_positions, geometry.domain_lengths)


register_filter("ensf_local", _make, LocalEnSFConfig)
