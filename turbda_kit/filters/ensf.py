"""The Ensemble Score Filter (EnSF): a training-free diffusion-model analysis.

EnSF (Bao, Zhang & Zhang 2024, *Comput. Methods Appl. Mech. Eng.* 432, 117447;
arXiv:2309.00983) turns a forecast ensemble into an analysis ensemble by integrating a
reverse-time SDE from pure noise at pseudo-time ``t = 1`` to the posterior at ``t = 0``.

Forward (noising) process, ``x_t = alpha_t x_0 + beta_t eps``::

    alpha_t   = 1 - (1 - eps_alpha) t            beta_t^2 = eps_beta + (1 - eps_beta) t
    f(t)      = d log(alpha_t) / dt              g(t)^2   = d beta_t^2/dt - 2 f(t) beta_t^2

Reverse SDE, integrated with Euler-Maruyama in ``K`` steps of ``dt = 1/K``::

    x <- x - dt [f x - g^2 S(x, t)] + sqrt(dt) g xi,     xi ~ N(0, I)
    S(x, t) = prior_score(x, t) + w h(t) grad_x log p(y | x)

The prior score comes from the forecast ensemble ``x0_j`` without training:

* ``"paired"`` (the authors' released code): particle ``j`` is pulled to its own prior
  member, ``S_prior = -(x_j - alpha_t x0_j) / beta_t^2``. One stream of the ensemble.
* ``"mixture"`` (the paper's Monte-Carlo estimator): the score of the mixture
  ``(1/M) sum_j N(alpha_t x0_j, beta_t^2 I)``, i.e. ``-(x_i - alpha_t sum_j w_ij x0_j) /
  beta_t^2`` with self-normalised weights ``w_ij ~ exp(-|x_i - alpha_t x0_j|^2 / 2 beta_t^2)``.
  Distances come from an ``M x M`` Gram matrix accumulated in float64 over chunks of the
  state, so memory stays ``O(M x state)``.

The likelihood score comes from the observation operator (analytic for the operators of
:mod:`turbda_kit.obs.operators`, autograd otherwise), damped by ``h(t) = 1 - t``.

The loop allocates nothing per step. For identity or arctan observations of every value,
the paired score, the explicit step, float32 and counter noise, each step is one
elementwise function (:func:`turbda_kit.filters.ensf_fused.fused_step_`; on CPU its C
transcription in :mod:`turbda_kit.native` runs all steps on a cache-sized chunk of columns
at once, same bits). Otherwise, with an elementwise operator and the paired score it works
through the state in tiles of ``block_size`` columns (all members), so the score, its
scratch and the noise stay in cache and the ensemble is read and written once per step
(with ``noise="blocks"`` the next tile's noise is drawn in a background thread,
``prefetch_noise``). Other operators and the mixture score use whole-array in-place
passes. The tiled and whole-array loops give bit-identical results.

Randomness is addressed by global index (:func:`turbda_kit.random_streams.counter_normal`
by default, or the generator blocks of :func:`turbda_kit.random_streams.indexed_blocks`):
the noise of step ``k`` for member ``j`` at global state index ``i`` depends only on
``(seed, k, j, i)``. A slab ``[a, b)`` of the state analysed alone (``global_offset=a``,
with the slab's local observation operator) therefore reproduces exactly the slab of the
full analysis, for any elementwise operator and the paired estimator; this is the basis of
the distributed EnSF.

Examples
--------
>>> import torch
>>> from turbda_kit.obs.operators import Arctan
>>> forecast = 8 + torch.randn(20, 100, generator=torch.Generator().manual_seed(0))
>>> truth = torch.full((100,), 8.0)
>>> H = Arctan((100,))
>>> obs = H(truth)
>>> analysis = ensf_analysis(forecast, obs, H, 0.05, torch.Generator().manual_seed(1),
...                          EnSFConfig(n_steps=50))
>>> analysis.shape
torch.Size([20, 100])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .. import native
from ..errors import DivergenceError, InputError
from ..obs.operators import (
    Arctan,
    DifferentiableObs,
    Identity,
    ObsOperator,
    check_obs,
    inverse_variance,
)
from ..obs.operators import likelihood_score as _generic_likelihood_score
from ..random_streams import (
    COUNTER_MAX_COLUMNS,
    DEFAULT_BLOCK_SIZE,
    NOISE_METHODS,
    counter_words,
    indexed_blocks,
    indexed_normal_add_,
)
from .base import FilterGeometry, register_filter
from .ensf_fused import fused_step_

__all__ = [
    "EnSF",
    "EnSFConfig",
    "EnSFResult",
    "GlobalReduce",
    "ensf_analysis",
    "ensf_analysis_detailed",
    "inflate_anomalies",
    "mixture_prior_mean",
    "schedule",
]

_PRIOR_SCORES = ("paired", "mixture")
_DAMPINGS = ("linear", "none")
_LIKELIHOOD_STEPS = ("explicit", "implicit")
# Step index used to key the initial N(0, I) draw (Euler steps use 0 .. K-1).
_INITIAL_DRAW = -1


@dataclass(frozen=True)
class EnSFConfig:
    """Hyperparameters of an EnSF analysis (validated on construction).

    Parameters
    ----------
    n_steps : int
        Euler-Maruyama steps ``K`` from ``t = 1`` to ``t = 0`` (>= 1).
    eps_alpha : float
        ``alpha_1 = eps_alpha``, in (0, 1). Default 0.5, as in the authors' released
        ``ScoreFilter`` Lorenz-96 runs.
    eps_beta : float
        ``beta_0^2 = eps_beta``, in [0, 1). Default 0.025 (``ScoreFilter``). It bounds the
        paired prior pull ``1 / beta_t^2`` near ``t = 0``; with ``eps_beta = 0`` (``beta_t^2 =
        t``, the SQG runs and the first Lorenz-96 script) the last Euler step nearly
        resets each particle onto its prior member and the update is a single small
        likelihood step (see ``docs/ensf.md``).
    prior_score : {"paired", "mixture"}
        Prior-score estimator (see the module docstring).
    damping : {"linear", "none"} or callable
        ``h(t)``: ``"linear"`` is ``1 - t``, ``"none"`` is 1, or any ``h(t) -> float``.
    likelihood_weight : float
        Extra factor ``w`` on the likelihood score (the SQG code's "guidance strength"), > 0.
    likelihood_step : {"explicit", "implicit"}
        How the likelihood drift enters each Euler step. ``"explicit"`` (the authors'
        scheme) is unstable once ``dt g^2 h w / sigma^2`` exceeds about 2 — small
        observation errors, large weights or normalised states with a large spread.
        ``"implicit"`` linearises the likelihood score around the current state with its
        Gauss-Newton curvature ``c = h'(x)^2 / sigma^2`` and solves the step for the new
        state: ``x <- (x_explicit + like c x) / (1 + like c)``, with ``like = dt g^2 h w``.
        Unconditionally stable, equal to the explicit step as ``dt -> 0`` and exact for a
        linear operator's Gaussian likelihood term. Needs an operator with
        :meth:`~turbda_kit.obs.operators.ObsOperator.gauss_newton_diagonal` (identity,
        arctan, subset).
    normalize : bool
        Run the SDE on per-variable standardised variables ``z = (x - mean) / std`` of the
        forecast ensemble (the SQG runs); the likelihood is evaluated in physical units
        through the chain rule, so any operator works unchanged.
    prior_inflation : float
        Multiply the forecast anomalies about their mean by this factor (>= 1) before the
        analysis: multiplicative prior inflation (the LETKF's
        ``inflation="multiplicative"``); ``spread_relaxation`` then relaxes towards the
        inflated spread. Meant for forecasts whose spread understates their error; on the
        ViT's sparse-network runs it made the error worse (``docs/tuning.md``). 1
        (default): none, the forecast is used as given (the same bits as before the option
        existed). Per variable, so a slab's analysis is still the same slab of the whole.
    spread_relaxation : float or None
        After the analysis, relax each variable's spread towards the forecast spread:
        ``std <- std_a + r (std_f - std_a)`` (RTPS); 1 restores the forecast spread.
    spread_cap : float or None
        Cap each variable's spread at ``spread_cap * reference_spread`` (the reference is an
        argument of :func:`ensf_analysis`, e.g. the initial ensemble's spread; default the
        forecast spread). Applied after ``spread_relaxation``.
    early_stop_tol : float or None
        Stop the reverse SDE once the ensemble mean (in the SDE's variables) moves less than
        this per step on average over a window, everywhere: ``max |m_k - m_{k-W}| / W <
        tol`` with ``W = early_stop_window * n_steps``.
    early_stop_window : float
        Window as a fraction of ``n_steps``, in (0, 1].
    pre_prediction_passes : int
        With a ``pre_prediction`` callable passed to :func:`ensf_analysis`, the likelihood
        is that of ``y`` given ``H(M^k(x))`` (``k`` passes through the differentiable
        forecast ``M``), by autograd. 0 disables it.
    mixture_chunk : int
        State values per chunk when building the mixture's Gram matrix.
    block_size : int
        Width of the tiles of the update loop; with ``noise="blocks"`` also the columns per
        independently seeded random block (all members drawn at once), and then every rank
        must use the same value.
    prefetch_noise : bool
        With ``noise="blocks"``: draw the next random block in a background thread while
        the current tile is updated (CPU; the draws are sequential within a block, so this
        is how they use a second core). Results are identical either way.
    noise : {"counter", "blocks"}
        How the Gaussian draws are named by global index
        (:func:`turbda_kit.random_streams.indexed_blocks`). ``"counter"`` (default): each
        value hashed from ``(seed, step, member, global column)``
        (:func:`~turbda_kit.random_streams.counter_normal`), vectorised and fused into the
        step. ``"blocks"``: a ``torch.Generator`` per block of ``block_size`` global columns
        (the kit's stream before 2026-12; slower, kept to reproduce earlier results).
    fused : bool
        With ``noise="counter"``, the paired score, the explicit step, no normalisation, a
        float32 ensemble and an :class:`~turbda_kit.obs.operators.Identity` or
        :class:`~turbda_kit.obs.operators.Arctan` operator, run each Euler step as one pass
        (:func:`turbda_kit.filters.ensf_fused.fused_step_`; on CPU its C transcription,
        :mod:`turbda_kit.native`, the same bits). The arctan there is
        :func:`~turbda_kit.filters.ensf_fused.atan_float32` (absolute error <= 2.4e-7).
        Uses ``torch.get_num_threads()`` threads on CPU. Other cases ignore it.
    check_finite : bool
        Raise :class:`~turbda_kit.errors.DivergenceError` if the analysis is not finite.
    """

    n_steps: int = 100
    eps_alpha: float = 0.5
    eps_beta: float = 0.025
    prior_score: str = "paired"
    damping: str | Callable[[float], float] = "linear"
    likelihood_weight: float = 1.0
    likelihood_step: str = "explicit"
    normalize: bool = False
    prior_inflation: float = 1.0
    spread_relaxation: float | None = None
    spread_cap: float | None = None
    early_stop_tol: float | None = None
    early_stop_window: float = 0.2
    pre_prediction_passes: int = 0
    mixture_chunk: int = 2 ** 16
    block_size: int = DEFAULT_BLOCK_SIZE
    prefetch_noise: bool = True
    noise: str = "counter"
    fused: bool = True
    check_finite: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> InputError:
            return InputError(f"EnSFConfig.{name}={getattr(self, name)!r}: {rule}")

        if not isinstance(self.n_steps, int) or isinstance(self.n_steps, bool) or self.n_steps < 1:
            raise bad("n_steps", "must be an integer >= 1")
        if not 0.0 < self.eps_alpha < 1.0:
            raise bad("eps_alpha", "must be in (0, 1)")
        if not 0.0 <= self.eps_beta < 1.0:
            raise bad("eps_beta", "must be in [0, 1)")
        if self.prior_score not in _PRIOR_SCORES:
            raise bad("prior_score", f"choose one of {_PRIOR_SCORES}")
        if not callable(self.damping) and self.damping not in _DAMPINGS:
            raise bad("damping", f"choose one of {_DAMPINGS} or pass a callable h(t)")
        if not self.likelihood_weight > 0 or math.isinf(self.likelihood_weight):
            raise bad("likelihood_weight", "must be a finite number > 0")
        if self.likelihood_step not in _LIKELIHOOD_STEPS:
            raise bad("likelihood_step", f"choose one of {_LIKELIHOOD_STEPS}")
        if self.likelihood_step == "implicit" and self.pre_prediction_passes > 0:
            raise bad("likelihood_step", "the implicit step needs the operator's curvature, "
                      "which pre-prediction passes (autograd) do not provide; use 'explicit'")
        if not (isinstance(self.prior_inflation, (int, float))
                and not isinstance(self.prior_inflation, bool)
                and 1.0 <= self.prior_inflation < math.inf):
            raise bad("prior_inflation", "must be a finite number >= 1 (1: no inflation)")
        if self.spread_relaxation is not None and not 0.0 <= self.spread_relaxation <= 1.0:
            raise bad("spread_relaxation", "must be None or in [0, 1]")
        if self.spread_cap is not None and not self.spread_cap > 0:
            raise bad("spread_cap", "must be None or > 0")
        if self.early_stop_tol is not None and not self.early_stop_tol > 0:
            raise bad("early_stop_tol", "must be None or > 0")
        if not 0.0 < self.early_stop_window <= 1.0:
            raise bad("early_stop_window", "must be in (0, 1]")
        if not isinstance(self.pre_prediction_passes, int) or self.pre_prediction_passes < 0:
            raise bad("pre_prediction_passes", "must be an integer >= 0")
        if not isinstance(self.mixture_chunk, int) or self.mixture_chunk < 1:
            raise bad("mixture_chunk", "must be an integer >= 1")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise bad("block_size", "must be an integer >= 1")
        if self.noise not in NOISE_METHODS:
            raise bad("noise", f"choose one of {NOISE_METHODS}")

    @classmethod
    def bao2024_lorenz96(cls, **changes) -> EnSFConfig:
        """The EnSF paper's Lorenz-96 setting (Bao, Zhang & Zhang 2024; ``ScoreFilter`` code).

        500 Euler steps, ``eps_alpha = 0.5``, ``eps_beta = 0.025``, paired prior score,
        ``h(t) = 1 - t``; with 20 members, arctan observations of every component
        (``sigma = 0.05``) every 10 RK4 steps of ``dt = 0.01`` the paper reports a final
        RMSE of about 0.20 at 1e6 variables over 150 cycles. Measured here: see
        ``docs/ensf.md``.
        """
        return cls(**{"n_steps": 500, "eps_alpha": 0.5, "eps_beta": 0.025, **changes})

    @classmethod
    def sqg_coupled(cls, **changes) -> EnSFConfig:
        """The settings of the SQG (and coupled ViT+EnSF) runs.

        ``beta_t^2 = t`` (``eps_beta = 0``), ``eps_alpha = 0.05``, per-variable
        normalisation, spread restored to the forecast spread after the analysis, early
        stop when the ensemble mean moves less than 0.005 per step over a window of 20% of
        the steps, 1000 Euler steps.
        """
        return cls(**{"n_steps": 1000, "eps_alpha": 0.05, "eps_beta": 0.0, "normalize": True,
                      "spread_relaxation": 1.0, "early_stop_tol": 0.005,
                      "early_stop_window": 0.2, **changes})

    def damping_at(self, t: float) -> float:
        """``h(t)``."""
        if callable(self.damping):
            return float(self.damping(t))
        return 1.0 - t if self.damping == "linear" else 1.0


def schedule(t: float, eps_alpha: float, eps_beta: float) -> tuple[float, float, float, float]:
    """Coefficients of the forward process at pseudo-time ``t``.

    Parameters
    ----------
    t : float
        Pseudo-time in [0, 1].
    eps_alpha, eps_beta : float
        Schedule endpoints (see :class:`EnSFConfig`).

    Returns
    -------
    alpha : float
        ``alpha_t = 1 - (1 - eps_alpha) t``.
    beta_sq : float
        ``beta_t^2 = eps_beta + (1 - eps_beta) t``.
    drift : float
        ``f(t) = d log alpha_t / dt = -(1 - eps_alpha) / alpha_t``.
    diffusion_sq : float
        ``g(t)^2 = d beta_t^2 / dt - 2 f(t) beta_t^2``.
    """
    alpha = 1.0 - (1.0 - eps_alpha) * t
    beta_sq = eps_beta + (1.0 - eps_beta) * t
    drift = -(1.0 - eps_alpha) / alpha
    diffusion_sq = (1.0 - eps_beta) - 2.0 * drift * beta_sq
    return alpha, beta_sq, drift, diffusion_sq


class GlobalReduce(Protocol):
    """Reductions over the whole (possibly distributed) state; local by default.

    A distributed driver passes an object whose methods all-reduce across ranks.
    """

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over all parts of the state, in place; return it."""
        ...

    def max(self, value: float) -> float:
        """Maximum of ``value`` over all parts of the state."""
        ...


class _LocalReduce:
    def sum_(self, tensor: Tensor) -> Tensor:
        return tensor

    def max(self, value: float) -> float:
        return value


@dataclass(frozen=True)
class EnSFResult:
    """Analysis ensemble and what the reverse SDE did.

    Attributes
    ----------
    analysis : Tensor, shape ``(member, *state_shape)``
    steps_taken : int
        Euler-Maruyama steps run (fewer than ``n_steps`` after an early stop).
    seed : int
        Key of the random streams used (reproduce with ``generator=seed``).
    """

    analysis: Tensor
    steps_taken: int
    seed: int


def mixture_prior_mean(x: Tensor, prior: Tensor, alpha: float, beta_sq: float,
                       out: Tensor | None = None, chunk: int = 2 ** 16,
                       reduce: GlobalReduce | None = None) -> Tensor:
    """Posterior-weighted prior member ``sum_j w_ij x0_j`` of the Gaussian-mixture score.

    The mixture score at ``x_i`` is ``-(x_i - alpha * sum_j w_ij x0_j) / beta_sq`` with
    ``w_ij = softmax_j(-|x_i - alpha x0_j|^2 / (2 beta_sq))``.

    Parameters
    ----------
    x : Tensor, shape ``(M, n)``
        Particles.
    prior : Tensor, shape ``(J, n)``
        Prior (forecast) members ``x0_j``.
    alpha, beta_sq : float
        Forward-process coefficients at the current pseudo-time.
    out : Tensor, shape ``(M, n)``, optional
        Output buffer.
    chunk : int
        State values per chunk of the float64 Gram accumulation (bounds the temporary).
    reduce : GlobalReduce, optional
        Sums the ``M x J`` partial distances over a distributed state.

    Returns
    -------
    Tensor, shape ``(M, n)``
    """
    n = x.shape[-1]
    cross = torch.zeros(x.shape[0], prior.shape[0], dtype=torch.float64, device=x.device)
    sq_x = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    sq_p = torch.zeros(prior.shape[0], dtype=torch.float64, device=x.device)
    for a in range(0, n, chunk):
        # float64 accumulation: the weights depend on small differences of large norms.
        xc = x[:, a:a + chunk].to(torch.float64)
        pc = prior[:, a:a + chunk].to(torch.float64)
        cross.addmm_(xc, pc.T)
        sq_x.add_(xc.square().sum(-1))
        sq_p.add_(pc.square().sum(-1))
    partial = torch.cat([cross.reshape(-1), sq_x, sq_p])
    if reduce is not None:
        partial = reduce.sum_(partial)
    m, j = cross.shape
    cross = partial[:m * j].reshape(m, j)
    sq_x, sq_p = partial[m * j:m * j + m], partial[m * j + m:]
    distance_sq = (sq_x[:, None] - 2.0 * alpha * cross + alpha * alpha * sq_p[None, :])
    weights = torch.softmax(-distance_sq / (2.0 * beta_sq), dim=-1).to(x.dtype)
    if out is None:
        return weights @ prior
    return torch.matmul(weights, prior, out=out)


def _as_seed(generator: torch.Generator | int) -> int:
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                 device=generator.device).item())
    if isinstance(generator, int) and not isinstance(generator, bool):
        return generator
    raise InputError(f"generator must be a torch.Generator or an int seed, got "
                     f"{type(generator).__name__}")


def _check_ensemble(forecast: Tensor) -> None:
    if not isinstance(forecast, Tensor):
        raise InputError(f"forecast_ensemble must be a torch.Tensor (member, *state_shape), got "
                         f"{type(forecast).__name__}")
    if forecast.dim() < 2 or forecast.shape[0] < 1 or forecast[0].numel() == 0:
        raise InputError(f"forecast_ensemble has shape {tuple(forecast.shape)}; expected "
                         f"(member, *state_shape) with at least one member and one value")
    if forecast.dtype not in (torch.float32, torch.float64):
        raise InputError(f"forecast_ensemble has dtype {forecast.dtype}; use float32 or float64")
    if not bool(torch.isfinite(forecast).all()):
        raise InputError("forecast_ensemble contains NaN/inf: a diverged forecast? Every value "
                         "must be finite")


@dataclass
class _Likelihood:
    """The likelihood score, as a whole-array function and, when possible, a pointwise one."""

    full: Callable[[Tensor, Tensor, Tensor], Tensor]       # (state, out, work) -> out
    pointwise: Callable | None = None                      # op.pointwise_score_
    obs: Tensor | None = None                              # (n,) for the pointwise kernel
    inv_var: float | Tensor | None = None                  # float or (n,)
    curvature: Callable | None = None                      # (state, out) -> out
    pointwise_curvature: Callable | None = None            # op.pointwise_curvature_


def _likelihood(obs_operator, state_shape: tuple[int, ...], obs: Tensor,
                obs_error_std: float | Tensor, pre_prediction, passes: int, like: Tensor
                ) -> _Likelihood:
    n_obs = getattr(obs_operator, "n_obs", obs.shape[-1])
    check_obs(obs, n_obs)
    if obs.dim() != 1:
        raise InputError(f"obs has shape {tuple(obs.shape)}; the EnSF takes one observation "
                         f"vector of shape ({n_obs},) shared by all members")
    op_shape = getattr(obs_operator, "state_shape", None)
    if op_shape is not None and tuple(op_shape) != tuple(state_shape):
        raise InputError(f"obs_operator acts on states of shape {tuple(op_shape)} but the "
                         f"ensemble's state shape is {tuple(state_shape)} (for a slab, pass "
                         f"the slab's local operator)")
    inv_var = inverse_variance(obs_error_std, n_obs, like=like)
    obs = obs.to(dtype=like.dtype, device=like.device)
    if pre_prediction is not None and passes > 0:
        base = obs_operator

        def predicted_obs(x: Tensor) -> Tensor:
            for _ in range(passes):
                x = pre_prediction(x)
            return base(x)

        obs_operator = DifferentiableObs(predicted_obs, state_shape, n_obs)
    if isinstance(obs_operator, ObsOperator):
        op = obs_operator

        def score(state: Tensor, out: Tensor, work: Tensor) -> Tensor:
            return op._likelihood_score(state, obs, inv_var, out, work)

        def curvature(state: Tensor, out: Tensor) -> Tensor:
            return op._gauss_newton_diagonal(state, inv_var, out)

        pointwise = op.pointwise_score_ if op.elementwise else None
        pointwise_curvature = op.pointwise_curvature_ if op.elementwise else None
        return _Likelihood(score, pointwise, obs, inv_var,
                           curvature if op.has_gauss_newton_diagonal else None,
                           pointwise_curvature)
    if not callable(obs_operator) and not hasattr(obs_operator, "likelihood_score"):
        raise InputError(f"obs_operator must be callable, got {type(obs_operator).__name__}")

    def generic(state: Tensor, out: Tensor, work: Tensor) -> Tensor:
        return out.copy_(_generic_likelihood_score(obs_operator, state, obs, obs_error_std))
    return _Likelihood(generic)


def ensf_analysis(forecast_ensemble: Tensor, obs: Tensor, obs_operator, obs_error_std,
                  generator: torch.Generator | int, config: EnSFConfig = EnSFConfig(), *,
                  global_offset: int = 0, global_size: int | None = None,
                  reference_spread: float | Tensor | None = None,
                  pre_prediction: Callable[[Tensor], Tensor] | None = None,
                  reduce: GlobalReduce | None = None) -> Tensor:
    """EnSF analysis of a forecast ensemble; returns the analysis ensemble.

    Parameters
    ----------
    forecast_ensemble : Tensor, shape ``(member, *state_shape)``
        Prior ensemble (float32 or float64); left untouched. Dtype and device of the
        computation are taken from it.
    obs : Tensor, shape ``(n_obs,)``
        Observations (no NaN: see :func:`turbda_kit.obs.operators.without_missing`).
    obs_operator : ObsOperator or callable
        ``H``; analytic likelihood scores for :mod:`turbda_kit.obs.operators`, autograd for
        a plain differentiable callable.
    obs_error_std : float or Tensor of shape ``(n_obs,)``
        Observation error standard deviation(s), > 0.
    generator : torch.Generator or int
        Randomness: a generator (one 62-bit key is drawn from it, so successive calls get
        fresh noise), or the key itself. All ranks of a distributed run must pass equal
        generators/keys.
    config : EnSFConfig
        Hyperparameters.
    global_offset : int, keyword-only
        Index, in the flattened global state, of this state's first value (a slab of a
        distributed state). Noise is drawn by global index, so a slab's analysis equals
        the same slab of the full analysis (paired estimator, elementwise operators).
    global_size : int, optional, keyword-only
        Size of the flattened global state (default: this state's).
    reference_spread : float or Tensor broadcastable to ``state_shape``, optional
        Reference for ``config.spread_cap`` (e.g. the initial ensemble's spread).
    pre_prediction : callable, optional
        Differentiable forecast ``M`` for ``config.pre_prediction_passes``.
    reduce : GlobalReduce, optional
        Cross-rank reductions (mixture Gram matrix, early-stop test).

    Returns
    -------
    Tensor, shape ``(member, *state_shape)``
        Analysis ensemble (a new tensor).

    Raises
    ------
    InputError
        Bad shapes, NaN inputs, non-positive ``obs_error_std``, inconsistent slab.
    DivergenceError
        The analysis is not finite (too few ``n_steps`` for a stiff likelihood?).
    """
    return ensf_analysis_detailed(forecast_ensemble, obs, obs_operator, obs_error_std,
                                  generator, config, global_offset=global_offset,
                                  global_size=global_size, reference_spread=reference_spread,
                                  pre_prediction=pre_prediction, reduce=reduce).analysis


def ensf_analysis_detailed(forecast_ensemble: Tensor, obs: Tensor, obs_operator, obs_error_std,
                           generator: torch.Generator | int, config: EnSFConfig = EnSFConfig(),
                           *, global_offset: int = 0, global_size: int | None = None,
                           reference_spread: float | Tensor | None = None,
                           pre_prediction: Callable[[Tensor], Tensor] | None = None,
                           reduce: GlobalReduce | None = None) -> EnSFResult:
    """As :func:`ensf_analysis`, returning an :class:`EnSFResult` with diagnostics."""
    if not isinstance(config, EnSFConfig):
        raise InputError(f"config must be an EnSFConfig, got {type(config).__name__}")
    _check_ensemble(forecast_ensemble)
    members = forecast_ensemble.shape[0]
    state_shape = tuple(forecast_ensemble.shape[1:])
    n = math.prod(state_shape)
    if global_size is None:
        global_size = global_offset + n
    if global_offset < 0 or global_offset + n > global_size:
        raise InputError(f"global_offset={global_offset} with a local state of {n} values does "
                         f"not fit in global_size={global_size}")
    needs_spread = config.normalize or config.spread_relaxation is not None or \
        config.spread_cap is not None
    if (needs_spread or config.prior_inflation != 1.0) and members < 2:
        raise InputError(f"forecast_ensemble has {members} member(s); normalisation, inflation "
                         f"and spread control need at least 2")
    if config.pre_prediction_passes > 0 and pre_prediction is None:
        raise InputError("config.pre_prediction_passes > 0 but no pre_prediction callable "
                         "was passed")
    reduce = reduce if reduce is not None else _LocalReduce()
    seed = _as_seed(generator)

    prior_flat = inflate_anomalies(forecast_ensemble.detach().reshape(members, n),
                                   config.prior_inflation)
    likelihood = _likelihood(obs_operator, state_shape, obs, obs_error_std, pre_prediction,
                             config.pre_prediction_passes, prior_flat)

    implicit = config.likelihood_step == "implicit"
    if implicit and likelihood.curvature is None:
        raise InputError(f"EnSFConfig.likelihood_step='implicit' needs an operator with a "
                         f"Gauss-Newton diagonal (identity, arctan, subset); "
                         f"{type(obs_operator).__name__} has none: use 'explicit'")
    prior_mean = prior_std = None
    if needs_spread:
        prior_std, prior_mean = torch.std_mean(prior_flat, dim=0)
    if config.normalize:
        # Zero-spread variables stay at their value: 0/tiny = 0 in the scaled variables.
        scale = prior_std.clamp_min(torch.finfo(prior_flat.dtype).tiny)
        prior = (prior_flat - prior_mean).div_(scale)
    else:
        scale = None
        prior = prior_flat

    if config.noise == "counter" and global_size > COUNTER_MAX_COLUMNS:
        raise InputError(f"global_size={global_size}: EnSFConfig(noise='counter') addresses "
                         f"at most 2**31 state values; use noise='blocks'")
    slab = {"offset": global_offset, "global_size": global_size,
            "block_size": config.block_size, "prefetch": config.prefetch_noise,
            "method": config.noise,
            "scratch": prior.new_empty(2 * members * min(config.block_size, global_size))}
    x = indexed_normal_add_(prior.new_zeros(prior.shape), 1.0, (seed, _INITIAL_DRAW), **slab)

    window = max(1, int(config.early_stop_window * config.n_steps))
    history = mean_now = None
    if config.early_stop_tol is not None:
        history = x.new_zeros((window, n))
        mean_now = x.new_empty(n)

    # Elementwise operator + paired score: every value's update needs only its own column,
    # so the loop works through the state in tiles (the global noise blocks) that stay in
    # cache: x and x0 are streamed once per step whatever the operator costs. Otherwise
    # whole-array passes with preallocated buffers.
    tiled = config.prior_score == "paired" and likelihood.pointwise is not None and \
        (not implicit or likelihood.pointwise_curvature is not None)
    fused = _fused_operator(obs_operator, config, prior, implicit, pre_prediction)
    if fused is not None:
        inv_var = likelihood.inv_var
        inv_var = (inv_var.reshape(-1).contiguous() if isinstance(inv_var, Tensor) else
                   prior.new_tensor([inv_var]))
        buffers = {"fused": fused, "inv_var": inv_var,
                   "scale": obs_operator.scale if fused == "arctan" else 1.0}
        step = _fused_step
    elif tiled:
        tile = members * min(config.block_size, n)
        buffers = {"score": prior.new_empty(tile), "work": prior.new_empty(tile),
                   "physical": prior.new_empty(tile) if config.normalize else None,
                   "curvature": prior.new_empty(tile) if implicit else None}
        step = _tiled_step
    else:
        buffers = {"score": prior.new_empty(prior.shape), "work": prior.new_empty(prior.shape),
                   "physical": prior.new_empty(prior.shape) if config.normalize else None,
                   "curvature": prior.new_empty(prior.shape) if implicit else None,
                   "target": (prior.new_empty(prior.shape) if config.prior_score == "mixture"
                              else None)}
        step = _whole_array_step
    # d^2/dz^2 = std^2 d^2/dx^2 for the curvature in the standardised variables.
    scale_sq = scale.square() if implicit and scale is not None else None
    context = _StepContext(x=x, prior=prior, likelihood=likelihood, config=config,
                           state_shape=state_shape, mean=prior_mean, scale=scale, seed=seed,
                           slab=slab, buffers=buffers, reduce=reduce, mean_now=mean_now,
                           scale_sq=scale_sq)

    dt = 1.0 / config.n_steps
    steps_taken = config.n_steps

    def coefficients_at(k: int) -> _Coefficients:
        t = 1.0 - k * dt
        alpha, beta_sq, drift, diffusion_sq = schedule(t, config.eps_alpha, config.eps_beta)
        # x <- keep x + pull x0 + like L(x) + noise xi, from
        # x <- x - dt [f x + g^2 (x - alpha x0) / beta^2 - g^2 h w L] + sqrt(dt) g xi
        return _Coefficients(
            keep=1.0 - dt * drift - dt * diffusion_sq / beta_sq,
            pull=dt * diffusion_sq * alpha / beta_sq,
            like=dt * diffusion_sq * config.damping_at(t) * config.likelihood_weight,
            noise=math.sqrt(dt * diffusion_sq), alpha=alpha, beta_sq=beta_sq)

    if fused is not None and history is None:
        # No per-step reduction: all steps at once, chunk of columns by chunk of columns.
        _fused_steps(context, 0, [coefficients_at(k) for k in range(config.n_steps)])
    else:
        for k in range(config.n_steps):
            step(context, k, coefficients_at(k))
            if history is not None:
                if not tiled or fused is not None:
                    torch.mean(x, 0, out=mean_now)
                if k >= window:
                    change = float((mean_now - history[k % window]).abs_().max()) / window
                    if reduce.max(change) < config.early_stop_tol:
                        steps_taken = k + 1
                        break
                history[k % window].copy_(mean_now)

    del context, buffers, history
    if config.normalize:
        x.mul_(scale).add_(prior_mean)
    if config.spread_relaxation is not None or config.spread_cap is not None:
        _control_spread_(x, prior_std, config, reference_spread, state_shape)
    if config.check_finite and not bool(torch.isfinite(x).all()):
        smallest = float(obs_error_std.min()) if isinstance(obs_error_std, Tensor) \
            else float(obs_error_std)
        raise DivergenceError(
            f"EnSF analysis is not finite after {steps_taken} steps: the explicit Euler scheme "
            f"is unstable when dt * |likelihood Hessian| > 2 (e.g. identity obs with "
            f"obs_error_std={smallest:g}, n_steps={config.n_steps}); raise EnSFConfig.n_steps, "
            f"use normalize=True or a smaller likelihood_weight")
    return EnSFResult(x.view(members, *state_shape), steps_taken, seed)


@dataclass(frozen=True)
class _Coefficients:
    keep: float
    pull: float
    like: float
    noise: float
    alpha: float
    beta_sq: float


@dataclass
class _StepContext:
    x: Tensor
    prior: Tensor
    likelihood: _Likelihood
    config: EnSFConfig
    state_shape: tuple[int, ...]
    mean: Tensor | None
    scale: Tensor | None
    seed: int
    slab: dict
    buffers: dict
    reduce: GlobalReduce
    mean_now: Tensor | None
    scale_sq: Tensor | None = None


def _fused_operator(obs_operator, config: EnSFConfig, prior: Tensor, implicit: bool,
                    pre_prediction) -> str | None:
    """``"identity"`` / ``"arctan"`` when the fused step applies, else None."""
    if not (config.fused and config.noise == "counter" and config.prior_score == "paired"
            and not implicit and not config.normalize and prior.dtype == torch.float32
            and (pre_prediction is None or config.pre_prediction_passes == 0)):
        return None
    if type(obs_operator) is Identity and obs_operator.elementwise:
        return "identity"
    if type(obs_operator) is Arctan and obs_operator.elementwise:
        return "arctan"
    return None


def _fused_steps(c: _StepContext, first: int, coefs: list[_Coefficients]) -> None:
    """Euler-Maruyama steps ``first, first + 1, ...`` in one pass each (or one pass in all).

    The C kernel on CPU runs all steps on a cache-sized chunk of columns before the next
    chunk; elsewhere the torch step runs step by step. Same bits either way.
    """
    words = [counter_words((c.seed, first + i)) for i in range(len(coefs))]
    scale = c.buffers["scale"]
    rows = [(co.keep, co.pull, co.like, co.noise, scale) for co in coefs]
    operator, inv_var, obs = c.buffers["fused"], c.buffers["inv_var"], c.likelihood.obs
    offset = c.slab["offset"]
    if c.x.device.type == "cpu" and native.ensf_steps_f32(
            c.x, c.prior, obs, inv_var, words, offset, rows, operator,
            threads=torch.get_num_threads()):
        return
    for pair, row in zip(words, rows):
        word_tensor = torch.tensor([*pair, offset], dtype=torch.int32, device=c.x.device)
        fused_step_(c.x, c.prior, obs, inv_var, word_tensor,
                    torch.tensor(row, dtype=c.x.dtype, device=c.x.device), operator)


def _fused_step(c: _StepContext, k: int, coef: _Coefficients) -> None:
    """One fused Euler-Maruyama step (with early stopping, which tests every step)."""
    _fused_steps(c, k, [coef])


def _whole_array_step(c: _StepContext, k: int, coef: _Coefficients) -> None:
    """One Euler-Maruyama step as whole-array in-place passes (any operator/estimator)."""
    x, members, shape = c.x, c.x.shape[0], c.state_shape
    score, work, curvature = c.buffers["score"], c.buffers["work"], c.buffers["curvature"]
    if coef.like != 0.0:
        where = x
        if c.config.normalize:
            where = c.buffers["physical"]
            torch.addcmul(c.mean, c.scale, x, out=where)
        c.likelihood.full(where.view(members, *shape), score.view(members, *shape),
                          work.view(members, *shape))
        if c.config.normalize:
            score.mul_(c.scale)                       # chain rule: d/dz = std * d/dx
        if curvature is not None:
            c.likelihood.curvature(where.view(members, *shape), curvature.view(members, *shape))
            if c.scale_sq is not None:
                curvature.mul_(c.scale_sq)
            # Linearised score at the new state: s(x) + c x - c x_new; the -c x_new goes
            # to the left-hand side (the division below).
            score.addcmul_(curvature, x)
    pull_to = c.prior
    if c.buffers.get("target") is not None:
        pull_to = mixture_prior_mean(x, c.prior, coef.alpha, coef.beta_sq,
                                     out=c.buffers["target"], chunk=c.config.mixture_chunk,
                                     reduce=c.reduce)
    x.mul_(coef.keep)
    x.add_(pull_to, alpha=coef.pull)
    if coef.like != 0.0:
        x.add_(score, alpha=coef.like)
    # The noise goes straight from a cache-sized scratch block into x.
    indexed_normal_add_(x, coef.noise, (c.seed, k), **c.slab)
    if curvature is not None and coef.like != 0.0:
        x.div_(curvature.mul_(coef.like).add_(1.0))


def _tiled_step(c: _StepContext, k: int, coef: _Coefficients) -> None:
    """One Euler-Maruyama step tile by tile (paired score, elementwise operator)."""
    x, prior, members = c.x, c.prior, c.x.shape[0]
    kernel, obs, inv_var = c.likelihood.pointwise, c.likelihood.obs, c.likelihood.inv_var
    per_value = isinstance(inv_var, Tensor)
    normalize = c.config.normalize
    implicit = c.buffers["curvature"] is not None and coef.like != 0.0
    for start, stop, noise in indexed_blocks(members, x.shape[1], (c.seed, k), **c.slab,
                                             dtype=x.dtype, device=x.device):
        width = stop - start
        tile = x[:, start:stop]
        if coef.like != 0.0:
            score = c.buffers["score"][:members * width].view(members, width)
            work = c.buffers["work"][:members * width].view(members, width)
            iv = inv_var[start:stop] if per_value else inv_var
            where = tile
            if normalize:
                where = c.buffers["physical"][:members * width].view(members, width)
                torch.addcmul(c.mean[start:stop], c.scale[start:stop], tile, out=where)
            kernel(where, obs[start:stop], iv, score, work)
            if normalize:
                score.mul_(c.scale[start:stop])
            if implicit:
                curvature = c.buffers["curvature"][:members * width].view(members, width)
                c.likelihood.pointwise_curvature(where, iv, curvature)
                if c.scale_sq is not None:
                    curvature.mul_(c.scale_sq[start:stop])
                score.addcmul_(curvature, tile)      # see _whole_array_step
        tile.mul_(coef.keep)
        tile.add_(prior[:, start:stop], alpha=coef.pull)
        if coef.like != 0.0:
            tile.add_(score, alpha=coef.like)
        tile.add_(noise, alpha=coef.noise)
        if implicit:
            tile.div_(curvature.mul_(coef.like).add_(1.0))
        if c.mean_now is not None:
            torch.mean(tile, 0, out=c.mean_now[start:stop])


def inflate_anomalies(ensemble: Tensor, factor: float) -> Tensor:
    """Ensemble with its anomalies about the member mean multiplied by ``factor``.

    Parameters
    ----------
    ensemble : Tensor, shape ``(member, ...)``
    factor : float
        Anomaly factor; 1 returns ``ensemble`` itself (no copy, the same bits).

    Returns
    -------
    Tensor, same shape: ``mean + factor * (ensemble - mean)`` (a new tensor unless
    ``factor == 1``), mean over members per variable.
    """
    if factor == 1.0:
        return ensemble
    # The mean as a running sum over members: elementwise, so every variable's rounding
    # is independent of the others' (torch's reduction over the member axis is not, for
    # different widths) and a slab inflates to the same bits as the whole state.
    mean = ensemble[0].clone()
    for member in ensemble[1:]:
        mean.add_(member)
    mean.div_(ensemble.shape[0])
    return (ensemble - mean).mul_(factor).add_(mean)


def _control_spread_(x: Tensor, prior_std: Tensor, config: EnSFConfig,
                     reference_spread: float | Tensor | None, state_shape: tuple[int, ...]
                     ) -> None:
    """Rescale analysis anomalies per variable: RTPS, then cap (in place)."""
    post_std, post_mean = torch.std_mean(x, dim=0)
    target = post_std.clone()
    if config.spread_relaxation is not None:
        target.add_(prior_std - post_std, alpha=config.spread_relaxation)
    if config.spread_cap is not None:
        if reference_spread is None:
            reference = prior_std
        else:
            reference = torch.as_tensor(reference_spread, dtype=x.dtype, device=x.device)
            reference = reference.expand(state_shape).reshape(-1)
        target = torch.minimum(target, config.spread_cap * reference)
    factor = torch.where(post_std > 0, target / post_std.clamp_min(torch.finfo(x.dtype).tiny),
                         torch.ones_like(post_std))
    x.sub_(post_mean).mul_(factor).add_(post_mean)


class EnSF:
    """The EnSF as a :class:`~turbda_kit.filters.base.Filter`: its settings bound.

    ``EnSF(config)(forecast, obs, H, obs_error_std, generator)`` is
    :func:`ensf_analysis` with ``config`` (and ``reference_spread``).

    Parameters
    ----------
    config : EnSFConfig
    reference_spread : float or Tensor broadcastable to ``state_shape``, optional
        Reference for ``config.spread_cap`` (e.g. the initial ensemble spread).

    Attributes
    ----------
    name : str
        ``"ensf"``.
    """

    name = "ensf"

    def __init__(self, config: EnSFConfig = EnSFConfig(),
                 reference_spread: float | Tensor | None = None):
        if not isinstance(config, EnSFConfig):
            raise InputError(f"config must be an EnSFConfig, got {type(config).__name__}")
        self.config = config
        self.reference_spread = reference_spread

    def __repr__(self) -> str:
        return f"EnSF({self.config!r})"

    def __call__(self, forecast_ensemble: Tensor, obs: Tensor, obs_operator, obs_error_std,
                 generator: torch.Generator | int) -> Tensor:
        """Analysis ensemble ``(member, *state_shape)`` (see :func:`ensf_analysis`)."""
        return ensf_analysis(forecast_ensemble, obs, obs_operator, obs_error_std, generator,
                             self.config, reference_spread=self.reference_spread)


def _make_ensf(settings: EnSFConfig | None, geometry: FilterGeometry) -> EnSF:
    del geometry  # EnSF's prior score is local: it needs no grid
    return EnSF(settings if settings is not None else EnSFConfig())


register_filter("ensf", _make_ensf, EnSFConfig)
