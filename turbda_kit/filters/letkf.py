"""The local ensemble transform Kalman filter (LETKF, Hunt et al. 2007), batched in torch.

The analysis is done in ensemble space, independently for every *analysis location* (a
state grid point, or a group of grid points that see the same observations with the same
weights). For each location, with ``m`` members, the observation anomalies ``Y`` (whitened by
the observation-error standard deviation) of the local observations and their Gaspari–Cohn
weights ``rho`` (R-localisation: the local ``R^-1`` is ``diag(rho) R^-1``):

    C     = Yᵀ diag(rho) Y + (m - 1) I                      (m, m), = (m - 1) P̃a⁻¹
    w̄     = C⁻¹ Yᵀ diag(rho) d                               mean weights, d = whitened innovation
    Wa    = [(m - 1) C⁻¹]^{1/2}                              symmetric square root
    x_a,k = x̄ + X (w̄ + Wa[:, k])                             member k

One batched ``torch.linalg.eigh`` on ``(n_locations, m, m)`` gives both ``C⁻¹`` and the
square root (:mod:`turbda_kit.filters.ensemble_space`).

The local sums ``[Y|d]ᵀ diag(rho) [Y|d]`` (the *Gram matrices*) are formed in one of two ways
(``LETKFConfig.gram``):

* ``"gather"``: per chunk of locations, gather each location's local observations
  (padded to the chunk's largest count with zero weight, which changes nothing) and do one
  batched matmul. Any observation positions. Cost ``~ n_locations * k * (m + 1)^2``.
* ``"convolution"``: when locations and observations sit on the nodes of one periodic
  lattice (the kit's grids and grid-point operators), the weight depends only on the node
  offset, so every location's Gram matrix is one circular convolution of the per-node
  outer products ``[y|d]ᵀ[y|d]`` with the taper, done by FFT for all locations at once:
  ``~ (m + 1)^2 / 2 * n_nodes log n_nodes``. Rounding differs from the gathered sums.
* ``"auto"`` (default): convolution for float32 (and lower) when the plan has a lattice;
  gather otherwise, so float64 results stay bit-identical to the reference path.

Grid points that share the localisation-relevant coordinates (e.g. the two SQG levels when
there is no vertical localisation) are one analysis location: their weights are computed
once and applied to all of them.

Options beyond the plain filter: Nerger et al.'s regulated localisation weights
(``regularization="nerger"``) and sqgturb's cross-validated perturbation update
(``perturbations="cross_validation"``), see :class:`LETKFConfig`.

The observation operator is never called: the analysis takes the observation-space ensemble
``HX`` (member, n_obs), so linear and nonlinear operators are treated alike (the ensemble
anomalies of ``HX`` stand in for the linearised operator, as in Hunt et al.).

References
----------
Hunt, Kostelich & Szunyogh (2007), Physica D 230, 112–126.
Whitaker & Hamill (2012), MWR 140, 3078–3089 (RTPS).
Zhang, Snyder & Sun (2004), MWR 132, 1238–1253 (RTPP).
Nerger, Janjić, Schröter & Hiller (2012), QJRMS 138, 802–812 (regulated localisation).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import InputError
from .base import FilterGeometry, register_filter
from .ensemble_space import (
    cross_validated_transforms,
    lattice_gram,
    nerger_weights,
    transforms_from_gram,
)
from .localization import (
    LocalizationPlan,
    global_plan,
    grid_point_positions,
    plan_localization,
)

__all__ = [
    "LETKF",
    "GramTransforms",
    "LETKFConfig",
    "ensemble_transforms",
    "etkf_analysis",
    "letkf_analysis",
    "uses_convolution",
]

InflationKind = Literal["none", "multiplicative", "rtps", "rtpp"]
_INFLATION_KINDS = ("none", "multiplicative", "rtps", "rtpp")
RegularizationKind = Literal["none", "nerger"]
_REGULARIZATIONS = ("none", "nerger")
PerturbationUpdate = Literal["symmetric", "cross_validation"]
_PERTURBATION_UPDATES = ("symmetric", "cross_validation")
GramMethod = Literal["auto", "gather", "convolution"]
_GRAM_METHODS = ("auto", "gather", "convolution")
#: The local solve: Gram matrices ``(n_loc, m + 1, m + 1)`` -> transforms ``(n_loc, m, m)``.
GramTransforms = Callable[[Tensor], Tensor]
# Locations solved together: bounds the (n, m + 1, m + 1) Gram and transform arrays.
_BLOCK_ELEMENTS = 2 ** 22


@dataclass(frozen=True)
class LETKFConfig:
    """Hyperparameters of the LETKF (and of the global ETKF, which ignores localisation).

    Parameters
    ----------
    localization_radius : float
        Horizontal Gaspari–Cohn **half-width** ``c`` in the units of the positions (metres
        for SQG, grid points for Lorenz-96). Observations at distance ``d`` get weight
        ``GC(d / c)``: 1 at 0, 5/24 at ``c``, 0 from ``2 c`` on. ``math.inf`` (default)
        means no localisation. sqgturb's ``hcovlocal_scale`` is the cut-off ``2 c``;
        DAPPER's ``loc_rad`` is ``c / 1.82`` (see :mod:`turbda_kit.filters.localization`).
    vertical_localization_radius : float or None
        Gaspari–Cohn half-width in the vertical coordinate (the extra last position
        column, e.g. z in metres). ``None`` (default): no vertical localisation — every
        level sees the observations of every level with the horizontal weight only. For
        the two SQG levels a distance ``H`` apart the cross-level weight is
        ``GC(H / vertical_localization_radius)``.
    inflation : {"none", "multiplicative", "rtps", "rtpp"}
        ``"multiplicative"``: prior anomalies (state and observation space) are multiplied
        by ``inflation_factor`` before the analysis (Hunt et al.'s ``rho`` is its square).
        ``"rtps"``: relaxation to prior spread, ``sigma_a <- alpha sigma_b + (1 - alpha)
        sigma_a`` per state variable (Whitaker & Hamill 2012). ``"rtpp"``: relaxation to
        prior perturbations, ``X_a <- alpha X_b + (1 - alpha) X_a`` (Zhang et al. 2004).
    inflation_factor : float
        The anomaly factor (>= 1) for ``"multiplicative"``; ``alpha`` for ``"rtps"``
        (>= 0; values above 1 over-restore) and ``"rtpp"`` (in [0, 1]). Ignored for
        ``"none"``.
    chunk_size : int
        Analysis locations processed together; bounds the work arrays to about
        ``chunk_size * (n_obs + n_local_obs * (members + 1))`` numbers. 128 was fastest on
        a 2-core CPU for SQG 64x64 (keeps temporaries below glibc's mmap threshold);
        larger chunks (1024+) suit GPUs. Used by the gathered and cross-validated paths.
    regularization : {"none", "nerger"}
        ``"nerger"``: Nerger et al.'s (2012) regulated R-localisation. The weight on
        ``R⁻¹`` becomes ``rho / (1 + (1 - rho) HPHᵀ/R)`` per observation (``HPHᵀ`` its
        ensemble variance), so that a single observation's gain is exactly ``rho`` times
        the unlocalised gain; plain R-localisation damps it less. sqgturb's default.
    perturbations : {"symmetric", "cross_validation"}
        ``"symmetric"``: the symmetric square root ``[(m - 1) C⁻¹]^{1/2}`` (Hunt et al.).
        ``"cross_validation"``: sqgturb's ``lgetkf`` update (Whitaker): each group of
        members is updated with the gain of the ensemble without it, in the gain form of
        the square-root filter, then the members are re-centred on the LETKF mean. The
        withheld members are not used to compute their own gain, which counters the
        spread collapse of small ensembles (no inflation needed in sqgturb's set-up).
        Costs one ``(m - g) x (m - g)`` eigendecomposition per group and location.
    cv_groups : int or None
        Number of member groups for ``"cross_validation"``; ``None`` (default) is
        leave-one-out (one group per member, sqgturb's default). Must divide the number
        of members and leave at least 2 members outside each group.
    gram : {"auto", "gather", "convolution"}
        How the local Gram matrices are formed (module docstring). ``"auto"``:
        ``"convolution"`` for float32/16 when every location and observation is on one
        periodic lattice (``plan.lattice``) and the options allow it, else ``"gather"``;
        float64 always gathers, bit-identical to earlier versions. ``"convolution"``
        requires the lattice and the plain weights (no Nerger, no cross-validation:
        those weights depend on more than the node offset).
    """

    localization_radius: float = math.inf
    vertical_localization_radius: float | None = None
    inflation: InflationKind = "none"
    inflation_factor: float = 1.0
    chunk_size: int = 128
    regularization: RegularizationKind = "none"
    perturbations: PerturbationUpdate = "symmetric"
    cv_groups: int | None = None
    gram: GramMethod = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.localization_radius, numbers.Real)
                and self.localization_radius > 0):
            raise InputError(
                f"localization_radius must be a length > 0 (Gaspari-Cohn half-width; "
                f"math.inf for none); got {self.localization_radius!r}")
        vertical = self.vertical_localization_radius
        if vertical is not None and not (isinstance(vertical, numbers.Real) and vertical > 0):
            raise InputError(
                f"vertical_localization_radius must be None or a length > 0; got {vertical!r}")
        if self.inflation not in _INFLATION_KINDS:
            raise InputError(
                f"inflation must be one of {_INFLATION_KINDS}; got {self.inflation!r}")
        factor = self.inflation_factor
        if not (isinstance(factor, numbers.Real) and math.isfinite(factor)):
            raise InputError(f"inflation_factor must be a finite number; got {factor!r}")
        if self.inflation == "multiplicative" and factor < 1.0:
            raise InputError(
                f"inflation_factor for multiplicative inflation must be >= 1 (an anomaly "
                f"multiplier; 1 = no inflation); got {factor!r}")
        if self.inflation == "rtps" and factor < 0.0:
            raise InputError(f"inflation_factor (alpha) for RTPS must be >= 0; got {factor!r}")
        if self.inflation == "rtpp" and not 0.0 <= factor <= 1.0:
            raise InputError(
                f"inflation_factor (alpha) for RTPP must be in [0, 1]; got {factor!r}")
        if not (isinstance(self.chunk_size, int) and self.chunk_size >= 1):
            raise InputError(f"chunk_size must be an integer >= 1; got {self.chunk_size!r}")
        if self.regularization not in _REGULARIZATIONS:
            raise InputError(f"regularization must be one of {_REGULARIZATIONS}; got "
                             f"{self.regularization!r}")
        if self.perturbations not in _PERTURBATION_UPDATES:
            raise InputError(f"perturbations must be one of {_PERTURBATION_UPDATES}; got "
                             f"{self.perturbations!r}")
        groups = self.cv_groups
        if groups is not None:
            if self.perturbations != "cross_validation":
                raise InputError("cv_groups is only used with perturbations="
                                 "'cross_validation'; leave it None otherwise")
            if not (isinstance(groups, int) and not isinstance(groups, bool) and groups >= 2):
                raise InputError(f"cv_groups must be None (leave-one-out) or an integer >= 2 "
                                 f"dividing the number of members; got {groups!r}")
        if self.gram not in _GRAM_METHODS:
            raise InputError(f"gram must be one of {_GRAM_METHODS}; got {self.gram!r}")
        if self.gram == "convolution" and (self.regularization != "none"
                                           or self.perturbations != "symmetric"):
            raise InputError(
                "gram='convolution' needs the plain taper weights: Nerger regularisation and "
                "cross-validated perturbations weigh each observation by more than its "
                "distance; use gram='auto' or 'gather' with them")

    @property
    def is_global(self) -> bool:
        """True when no localisation is applied (every location sees every observation)."""
        vertical = self.vertical_localization_radius
        return math.isinf(self.localization_radius) and (vertical is None
                                                          or math.isinf(vertical))


# --------------------------------------------------------------------------------------
# Ensemble-space maths
# --------------------------------------------------------------------------------------

def ensemble_transforms(obs_anomalies: Tensor, innovations: Tensor, obs_weights: Tensor
                        ) -> Tensor:
    """Batched ETKF transforms ``T = w̄ 1ᵀ + Wa`` for a batch of analysis locations.

    Parameters
    ----------
    obs_anomalies : Tensor, shape (n_loc, k, m)
        Whitened observation-space anomalies ``R^{-1/2} (HX_j - mean HX)`` of each
        location's ``k`` local observations (dimensionless).
    innovations : Tensor, shape (n_loc, k)
        Whitened innovations ``R^{-1/2} (y - mean HX)`` (dimensionless).
    obs_weights : Tensor, shape (n_loc, k)
        Localisation weights in [0, 1] (0 for padding).

    Returns
    -------
    Tensor, shape (n_loc, m, m)
        Member ``k`` of the analysis at a state point with forecast anomalies ``a`` (m,)
        is ``mean + a @ T[:, k]``.
    """
    root_weights = obs_weights.sqrt()
    augmented = torch.cat([obs_anomalies, innovations[..., None]], dim=-1)
    tapered = augmented * root_weights[..., None]
    return transforms_from_gram(tapered.transpose(1, 2) @ tapered)


def _apply_transforms(anomalies_t: Tensor, mean: Tensor, transforms: Tensor,
                      plan: LocalizationPlan, first: int, out: Tensor) -> None:
    """Write ``mean + a @ T`` for the points of locations ``first:first + len(T)`` into
    ``out`` (n_state, m)."""
    n_loc = transforms.shape[0]
    per = plan.points_per_location
    if per:
        state_index = plan.state_order[first * per:(first + n_loc) * per]
        uniform = True
    else:
        points = slice(int(plan.location_starts[first]),
                       int(plan.location_starts[first + n_loc]))
        state_index = plan.state_order[points]
        location_index = plan.location_of_state[state_index] - first
        per, rest = divmod(state_index.numel(), n_loc)
        uniform = rest == 0 and torch.equal(
            location_index, torch.arange(n_loc, device=location_index.device)
            .repeat_interleave(per))
    anomalies = anomalies_t[state_index]                         # (n_points, m)
    if uniform:
        # Every location has the same number of points (1 per location, the SQG levels
        # sharing a column, or one global location): a batched matmul, no gather of T.
        updated = anomalies.reshape(n_loc, per, -1) @ transforms
        updated = updated.reshape(state_index.numel(), -1)
    else:
        updated = torch.einsum("pj,pjk->pk", anomalies, transforms[location_index])
    out[state_index] = updated + mean[state_index, None]


def _validate_inputs(forecast_ensemble: Tensor, obs_ensemble: Tensor, obs: Tensor,
                     obs_error_std: float | Tensor
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes/values; return obs_ensemble, obs, std on the forecast's dtype/device."""
    if not isinstance(forecast_ensemble, Tensor) or not forecast_ensemble.is_floating_point():
        raise InputError("forecast_ensemble must be a floating-point torch.Tensor "
                         "shaped (member, *state_shape)")
    if forecast_ensemble.ndim < 2:
        raise InputError(f"forecast_ensemble must be shaped (member, *state_shape); got "
                         f"shape {tuple(forecast_ensemble.shape)}")
    n_members = forecast_ensemble.shape[0]
    if n_members < 2:
        raise InputError(f"forecast_ensemble has {n_members} member(s) along dim 0; the "
                         f"ensemble filters need at least 2")
    like = {"dtype": forecast_ensemble.dtype, "device": forecast_ensemble.device}
    # Converted straight to the forecast's dtype: a Python float or list must not pass
    # through torch's default float32 on its way to float64.
    obs_ensemble = torch.as_tensor(obs_ensemble, **like)
    obs = torch.as_tensor(obs, **like)
    if obs.ndim != 1:
        raise InputError(f"obs must be shaped (n_obs,); got shape {tuple(obs.shape)}")
    n_obs = obs.shape[0]
    if tuple(obs_ensemble.shape) != (n_members, n_obs):
        raise InputError(
            f"obs_ensemble has shape {tuple(obs_ensemble.shape)}; expected (member, n_obs) = "
            f"({n_members}, {n_obs}) to match forecast_ensemble and obs")
    std = torch.as_tensor(obs_error_std, **like)
    if std.ndim > 1 or (std.ndim == 1 and std.shape[0] != n_obs):
        raise InputError(f"obs_error_std must be a scalar or shaped (n_obs,) = ({n_obs},); "
                         f"got shape {tuple(std.shape)}")
    # One synchronising check for the common case (NaN or inf anywhere makes the sum
    # non-finite; a finite overflow only sends us to the detailed checks below, which pass).
    total = forecast_ensemble.sum() + obs_ensemble.sum() + obs.sum()
    if isinstance(obs_error_std, numbers.Real):
        std_ok = math.isfinite(obs_error_std) and obs_error_std > 0
    else:
        total = total + std.log().sum()
        std_ok = True
    if std_ok and math.isfinite(float(total)):
        return obs_ensemble, obs, std
    if torch.isnan(obs).any():
        raise InputError(f"obs contains {int(torch.isnan(obs).sum())} NaN value(s); drop "
                         f"missing observations (and their operator rows) before the analysis")
    if not torch.isfinite(obs).all():
        raise InputError("obs contains inf")
    if not torch.isfinite(obs_ensemble).all():
        raise InputError("obs_ensemble (HX) contains NaN or inf")
    if not torch.isfinite(forecast_ensemble).all():
        raise InputError("forecast_ensemble contains NaN or inf")
    if not (torch.isfinite(std).all() and (std > 0).all()):
        raise InputError(f"obs_error_std must be finite and > 0; got min "
                         f"{float(std.min()) if std.numel() else std!r}")
    return obs_ensemble, obs, std


def _relax(analysis_anomalies: Tensor, forecast_anomalies: Tensor,
           config: LETKFConfig) -> Tensor:
    """Apply RTPS/RTPP to analysis anomalies (n_state, m); others are returned as is."""
    alpha = config.inflation_factor
    if config.inflation == "rtpp":
        return (1.0 - alpha) * analysis_anomalies + alpha * forecast_anomalies
    if config.inflation == "rtps":
        n_members = analysis_anomalies.shape[1]
        spread_a = torch.sqrt((analysis_anomalies ** 2).sum(1) / (n_members - 1))
        spread_b = torch.sqrt((forecast_anomalies ** 2).sum(1) / (n_members - 1))
        # A zero analysis spread cannot be rescaled; leave such points alone.
        safe = torch.where(spread_a > 0, spread_a, torch.ones_like(spread_a))
        factor = torch.where(spread_a > 0, (alpha * spread_b + (1.0 - alpha) * spread_a) / safe,
                             torch.ones_like(spread_a))
        return analysis_anomalies * factor[:, None]
    return analysis_anomalies


def uses_convolution(config: LETKFConfig, plan: LocalizationPlan, dtype: torch.dtype) -> bool:
    """Whether an analysis with ``config`` and ``plan`` in ``dtype`` takes the lattice path.

    Raises
    ------
    InputError
        ``gram="convolution"`` on a plan without a lattice.
    """
    if config.gram == "gather":
        return False
    if config.gram == "convolution":
        if plan.lattice is None:
            raise InputError(
                "gram='convolution' needs every analysis location and observation on the "
                "nodes of one periodic lattice (periodic domain_lengths, grid-point "
                "observations, a finite radius); this plan has none: use gram='auto'")
        return True
    return (plan.lattice is not None and dtype != torch.float64
            and config.regularization == "none" and config.perturbations == "symmetric")


def _solve_block(n_locations: int, n_members: int, multiple: int = 1) -> int:
    """Locations per solve block: a multiple of ``multiple`` within ``_BLOCK_ELEMENTS``."""
    per = max(1, _BLOCK_ELEMENTS // ((n_members + 1) ** 2 * multiple)) * multiple
    return min(per, max(n_locations, 1))


def _analyse(forecast_ensemble: Tensor, obs_ensemble: Tensor, obs: Tensor,
             obs_error_std: float | Tensor, plan: LocalizationPlan,
             config: LETKFConfig, transforms: GramTransforms = transforms_from_gram) -> Tensor:
    """Shared driver of the local and global analyses (inputs already validated)."""
    n_members = forecast_ensemble.shape[0]
    state_shape = forecast_ensemble.shape[1:]
    states_t = forecast_ensemble.reshape(n_members, -1).T            # (n_state, m)
    mean = states_t.mean(dim=1)
    anomalies_t = states_t - mean[:, None]
    obs_mean = obs_ensemble.mean(dim=0)
    obs_anomalies_t = ((obs_ensemble - obs_mean) / obs_error_std).T.contiguous()  # (n_obs, m)
    innovations = (obs - obs_mean) / obs_error_std
    prior_anomalies_t = anomalies_t
    if config.inflation == "multiplicative":
        prior_anomalies_t = anomalies_t * config.inflation_factor
        obs_anomalies_t = obs_anomalies_t * config.inflation_factor

    analysis_t = torch.empty_like(states_t)
    if config.perturbations == "cross_validation":
        _analyse_cross_validated(obs_anomalies_t, innovations, prior_anomalies_t, mean, plan,
                                 config, analysis_t)
    else:
        # Innovations ride along as an extra column: one gather and one matmul per chunk.
        augmented_t = torch.cat([obs_anomalies_t, innovations[:, None]], dim=1)  # (n_obs, m+1)
        if uses_convolution(config, plan, states_t.dtype):
            gram = lattice_gram(augmented_t, plan.lattice)
            block = _solve_block(plan.n_locations, n_members)
            for first in range(0, plan.n_locations, block):
                _apply_transforms(prior_anomalies_t, mean,
                                  transforms(gram[first:first + block]), plan, first,
                                  analysis_t)
        else:
            obs_variance = None
            if config.regularization == "nerger":
                obs_variance = obs_anomalies_t.square().sum(1) / (n_members - 1)
            _analyse_gathered(augmented_t, obs_variance, prior_anomalies_t, mean, plan,
                              analysis_t, transforms)

    if config.inflation in ("rtps", "rtpp"):
        analysis_mean = analysis_t.mean(dim=1, keepdim=True)
        relaxed = _relax(analysis_t - analysis_mean, anomalies_t, config)
        analysis_t = analysis_mean + relaxed
    return analysis_t.T.reshape(n_members, *state_shape)


def _analyse_gathered(augmented_t: Tensor, obs_variance: Tensor | None,
                      prior_anomalies_t: Tensor, mean: Tensor, plan: LocalizationPlan,
                      analysis_t: Tensor, transforms: GramTransforms = transforms_from_gram
                      ) -> None:
    """Symmetric-root LETKF with Gram matrices gathered chunk by chunk; fills analysis_t.

    Gram matrices of several chunks are solved together (one eigendecomposition call,
    split over threads); each matrix is computed and decomposed exactly as chunk by chunk.
    """
    width = augmented_t.shape[1]
    block = _solve_block(plan.n_locations, width - 1, multiple=plan.chunk_size)
    gather_buffer = None
    for block_first in range(0, plan.n_locations, block):
        block_stop = min(block_first + block, plan.n_locations)
        gram = None
        if block_stop - block_first > plan.chunk_size:
            gram = augmented_t.new_empty(block_stop - block_first, width, width)
        for first in range(block_first, block_stop, plan.chunk_size):
            stop = min(first + plan.chunk_size, block_stop)
            obs_index, obs_weight = plan.local_observations(first, stop)
            weight = obs_weight.to(augmented_t.dtype)
            if obs_variance is not None:
                weight = nerger_weights(weight, obs_variance[obs_index])
            root_weights = weight.sqrt()
            needed = obs_index.numel() * width
            if plan.n_locations <= plan.chunk_size:    # one chunk: nothing to reuse
                tapered = torch.index_select(augmented_t, 0, obs_index.reshape(-1))
            else:
                # Gather into a reused buffer: a fresh tens-of-MB allocation per chunk costs
                # more in page faults than the gather itself.
                if gather_buffer is None or gather_buffer.numel() < needed:
                    gather_buffer = augmented_t.new_empty(needed)
                tapered = torch.index_select(
                    augmented_t, 0, obs_index.reshape(-1),
                    out=gather_buffer[:needed].view(obs_index.numel(), width))
            # The copy is ours, so taper it in place.
            tapered = tapered.view(*obs_index.shape, width).mul_(root_weights[..., None])
            if gram is None:
                gram = tapered.transpose(1, 2) @ tapered
            else:
                gram[first - block_first:stop - block_first] = tapered.transpose(1, 2) @ tapered
        _apply_transforms(prior_anomalies_t, mean, transforms(gram), plan,
                          block_first, analysis_t)


def _analyse_cross_validated(obs_anomalies_t: Tensor, innovations: Tensor,
                             prior_anomalies_t: Tensor, mean: Tensor, plan: LocalizationPlan,
                             config: LETKFConfig, analysis_t: Tensor) -> None:
    """LETKF with cross-validated perturbations, chunk by chunk; fills analysis_t."""
    n_members = obs_anomalies_t.shape[1]
    n_groups = n_members if config.cv_groups is None else config.cv_groups
    if n_members % n_groups or n_members - n_members // n_groups < 2:
        raise InputError(
            f"cv_groups={config.cv_groups!r} does not fit {n_members} members: the number "
            f"of groups must divide the members and leave at least 2 outside each group "
            f"(None = leave-one-out)")
    for first, stop in plan.chunk_bounds():
        obs_index, obs_weight = plan.local_observations(first, stop)
        transforms = cross_validated_transforms(
            obs_anomalies_t[obs_index], innovations[obs_index],
            obs_weight.to(obs_anomalies_t.dtype), n_groups, config.regularization)
        _apply_transforms(prior_anomalies_t, mean, transforms, plan, first, analysis_t)


def letkf_analysis(forecast_ensemble: Tensor, obs_ensemble: Tensor, obs: Tensor,
                   obs_error_std: float | Tensor, *, config: LETKFConfig,
                   state_positions: Tensor | None = None,
                   obs_positions: Tensor | None = None,
                   domain_lengths: Sequence[float] | None = None,
                   plan: LocalizationPlan | None = None,
                   transforms: GramTransforms | None = None) -> Tensor:
    """LETKF analysis with Gaspari–Cohn observation (R-) localisation.

    Parameters
    ----------
    forecast_ensemble : Tensor, shape (member, *state_shape)
        Prior ensemble (state units, e.g. PV for SQG). ``member >= 2``.
    obs_ensemble : Tensor, shape (member, n_obs)
        The observation operator applied to each forecast member, ``H(x_k)`` (obs units).
    obs : Tensor, shape (n_obs,)
        Observed values (obs units). NaN is refused: drop missing observations first.
    obs_error_std : float or Tensor, scalar or shape (n_obs,)
        Observation-error standard deviation (obs units, > 0); errors are uncorrelated.
    config : LETKFConfig
        Radii, inflation and chunking.
    state_positions, obs_positions, domain_lengths
        Geometry (see :func:`plan_localization`); needed unless ``plan`` is given or the
        config has no localisation.
    plan : LocalizationPlan, optional
        Reusable geometry from :func:`plan_localization` (saves the distance computations
        over many cycles).
    transforms : callable, optional
        The local solve: local Gram matrices ``(n_loc, m + 1, m + 1)`` to transforms
        ``(n_loc, m, m)``, as :func:`~turbda_kit.filters.ensemble_space.transforms_from_gram`
        (the default, the ETKF's). Another solve in the same ensemble space, e.g. the local
        EnSF's (:mod:`turbda_kit.filters.ensf_local`), reuses the localisation. Not used
        with ``perturbations="cross_validation"`` (refused).

    Returns
    -------
    Tensor, shape (member, *state_shape)
        Analysis ensemble, same dtype and device as ``forecast_ensemble``.

    Examples
    --------
    >>> from turbda_kit.filters.localization import grid_positions
    >>> g = torch.Generator().manual_seed(0)
    >>> ens = torch.randn(10, 40, generator=g, dtype=torch.float64)
    >>> cfg = LETKFConfig(localization_radius=7.28, inflation="multiplicative",
    ...                   inflation_factor=1.04)
    >>> pos = grid_positions((40,), (40.0,))
    >>> xa = letkf_analysis(ens, ens, torch.zeros(40), 1.0, config=cfg,
    ...                     state_positions=pos, obs_positions=pos, domain_lengths=(40.0,))
    >>> xa.shape
    torch.Size([10, 40])
    """
    obs_ensemble, obs, std = _validate_inputs(forecast_ensemble, obs_ensemble, obs,
                                              obs_error_std)
    n_state = math.prod(forecast_ensemble.shape[1:])
    if plan is None:
        if config.is_global:
            plan = global_plan(n_state, obs.shape[0], forecast_ensemble.device,
                                config.chunk_size)
        else:
            missing = [name for name, value in (("state_positions", state_positions),
                                                ("obs_positions", obs_positions),
                                                ("domain_lengths", domain_lengths))
                       if value is None]
            if missing:
                raise InputError(f"localisation needs {', '.join(missing)} (or a plan from "
                                 f"plan_localization); got None")
            obs_positions = torch.as_tensor(obs_positions)
            n_rows = obs_positions.shape[0] if obs_positions.ndim else 0
            if n_rows != obs.shape[0]:
                raise InputError(f"obs_positions has {n_rows} rows but there are "
                                 f"{obs.shape[0]} observations; give one position per obs")
            plan = plan_localization(
                torch.as_tensor(state_positions).to(device=forecast_ensemble.device),
                torch.as_tensor(obs_positions).to(device=forecast_ensemble.device),
                domain_lengths, config, state_shape=tuple(forecast_ensemble.shape[1:]))
    if plan.location_of_state.device != forecast_ensemble.device:
        raise InputError(f"plan lives on {plan.location_of_state.device} but forecast_ensemble "
                         f"on {forecast_ensemble.device}; build the plan from positions on "
                         f"the forecast's device")
    if plan.n_state != n_state or plan.n_obs != obs.shape[0]:
        raise InputError(f"plan was built for {plan.n_state} state points and {plan.n_obs} "
                         f"observations; got {n_state} and {obs.shape[0]}")
    if not plan.matches(config):
        raise InputError("plan was built with other localisation radii than config; rebuild "
                         "it with plan_localization(..., config)")
    if transforms is None:
        transforms = transforms_from_gram
    elif config.perturbations == "cross_validation":
        raise InputError("transforms= replaces the symmetric-root solve; cross-validated "
                         "perturbations have their own: use perturbations='symmetric'")
    return _analyse(forecast_ensemble, obs_ensemble, obs, std, plan, config, transforms)


def etkf_analysis(forecast_ensemble: Tensor, obs_ensemble: Tensor, obs: Tensor,
                  obs_error_std: float | Tensor,
                  config: LETKFConfig | None = None) -> Tensor:
    """Global ETKF analysis (symmetric square root, no localisation).

    Parameters
    ----------
    forecast_ensemble : Tensor, shape (member, *state_shape)
    obs_ensemble : Tensor, shape (member, n_obs)
    obs : Tensor, shape (n_obs,)
    obs_error_std : float or Tensor, scalar or shape (n_obs,)
    config : LETKFConfig, optional
        Its inflation, regularisation and perturbation settings are used; radii and
        ``gram`` are ignored.

    Returns
    -------
    Tensor, shape (member, *state_shape)
    """
    config = config or LETKFConfig()
    global_config = dataclasses.replace(config, localization_radius=math.inf,
                                        vertical_localization_radius=None, gram="gather")
    return letkf_analysis(forecast_ensemble, obs_ensemble, obs, obs_error_std,
                          config=global_config)


class LETKF:
    """The LETKF as a :class:`~turbda_kit.filters.base.Filter`: settings and grid bound.

    Applies the observation operator to the forecast ensemble and calls
    :func:`letkf_analysis`. Observation positions are the rows of ``state_positions`` at
    the operator's ``locations`` (grid indices in array-axis order, as the kit's operators
    give them; see :func:`~turbda_kit.filters.localization.grid_point_positions`). The
    localisation plan is computed once per observation operator (and device) and reused
    while the same operator object comes back, i.e. for the whole run of a fixed network.
    For observations off the grid call :func:`letkf_analysis` with ``obs_positions``.

    Parameters
    ----------
    config : LETKFConfig
        Radii, inflation and chunking.
    state_positions : Tensor, shape (*state_shape, n_dims) or (n_state, n_dims), optional
        Physical position of every state point (e.g.
        :func:`~turbda_kit.filters.localization.sqg_positions`); needed when localising.
    domain_lengths : sequence of float, optional
        Periods of the horizontal axes (same units as the positions).

    Attributes
    ----------
    name : str
        ``"letkf"``.

    Examples
    --------
    >>> from turbda_kit.filters.localization import grid_positions
    >>> from turbda_kit.obs.operators import Identity
    >>> letkf = LETKF(LETKFConfig(localization_radius=7.28), grid_positions((40,), (40.0,)),
    ...               (40.0,))
    >>> ens = torch.randn(10, 40, generator=torch.Generator().manual_seed(0))
    >>> letkf(ens, torch.zeros(40), Identity((40,)), 1.0, torch.Generator()).shape
    torch.Size([10, 40])
    """

    name = "letkf"

    def __init__(self, config: LETKFConfig, state_positions: Tensor | None = None,
                 domain_lengths: Sequence[float] | None = None):
        if not isinstance(config, LETKFConfig):
            raise InputError(f"config must be a LETKFConfig, got {type(config).__name__}")
        self.config = config
        self.state_positions = (None if state_positions is None
                                else torch.as_tensor(state_positions))
        self.domain_lengths = None if domain_lengths is None else tuple(domain_lengths)
        self._planned_for: tuple[object, torch.device] | None = None
        self._plan: LocalizationPlan | None = None

    def __repr__(self) -> str:
        return f"LETKF({self.config!r})"

    def __call__(self, forecast_ensemble: Tensor, obs: Tensor, obs_operator: Callable,
                 obs_error_std: float | Tensor, generator: torch.Generator | None = None
                 ) -> Tensor:
        """Analysis ensemble ``(member, *state_shape)``; ``generator`` is unused (deterministic).

        Raises
        ------
        InputError
            Localising without ``state_positions``/``domain_lengths`` or with an operator
            that has no ``locations``; and everything :func:`letkf_analysis` refuses.
        """
        del generator
        obs_ensemble = obs_operator(forecast_ensemble)
        if self.config.is_global:
            return letkf_analysis(forecast_ensemble, obs_ensemble, obs, obs_error_std,
                                  config=self.config)
        return letkf_analysis(forecast_ensemble, obs_ensemble, obs, obs_error_std,
                              config=self.config,
                              plan=self.plan_for(obs_operator, forecast_ensemble))

    def plan_for(self, obs_operator, forecast_ensemble: Tensor) -> LocalizationPlan:
        """The localisation plan of ``obs_operator`` on the forecast's grid and device.

        Local observation sets are precomputed only when the analysis gathers them (not
        on the lattice path, which needs none).
        """
        key = (obs_operator, forecast_ensemble.device)
        if self._planned_for is not None and self._planned_for[0] is key[0] \
                and self._planned_for[1] == key[1]:
            return self._with_chunks_if_gathering(forecast_ensemble.dtype)
        if self.state_positions is None or self.domain_lengths is None:
            raise InputError("LETKF localisation needs state_positions (*state_shape, n_dims) "
                             "and domain_lengths; pass them to LETKF(...), or use a config "
                             "without localisation")
        locations = getattr(obs_operator, "locations", None)
        if locations is None:
            raise InputError(f"{obs_operator!r} has no 'locations': LETKF localisation needs "
                             "observation positions (use letkf_analysis with obs_positions)")
        n_dims = self.state_positions.shape[-1]
        grid = self.state_positions.reshape(*forecast_ensemble.shape[1:], n_dims)
        device = forecast_ensemble.device
        self._plan = plan_localization(grid.reshape(-1, n_dims).to(device),
                                       grid_point_positions(grid, locations).to(device),
                                       self.domain_lengths, self.config)
        self._planned_for = key
        return self._with_chunks_if_gathering(forecast_ensemble.dtype)

    def _with_chunks_if_gathering(self, dtype: torch.dtype) -> LocalizationPlan:
        if self._plan.cached_chunks is None and not uses_convolution(self.config, self._plan,
                                                                     dtype):
            self._plan = self._plan.with_cached_chunks()
        return self._plan


def _make_letkf(settings: LETKFConfig | None, geometry: FilterGeometry) -> LETKF:
    return LETKF(settings if settings is not None else LETKFConfig(),
                 geometry.state_positions, geometry.domain_lengths)


register_filter("letkf", _make_letkf, LETKFConfig)
