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
square root. Local observation sets have different sizes; each chunk of locations pads them
to its largest count with zero weight, which leaves ``C`` and ``w̄`` unchanged.

Grid points that share the localisation-relevant coordinates (e.g. the two SQG levels when
there is no vertical localisation) are one analysis location: their weights are computed
once and applied to all of them.

The observation operator is never called: the analysis takes the observation-space ensemble
``HX`` (member, n_obs), so linear and nonlinear operators are treated alike (the ensemble
anomalies of ``HX`` stand in for the linearised operator, as in Hunt et al.).

References
----------
Hunt, Kostelich & Szunyogh (2007), Physica D 230, 112–126.
Whitaker & Hamill (2012), MWR 140, 3078–3089 (RTPS).
Zhang, Snyder & Sun (2004), MWR 132, 1238–1253 (RTPP).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import InputError
from .localization import gaspari_cohn, grid_point_positions

__all__ = [
    "LETKFConfig",
    "LocalizationPlan",
    "plan_localization",
    "letkf_analysis",
    "etkf_analysis",
    "analysis",
    "ensemble_transforms",
]

InflationKind = Literal["none", "multiplicative", "rtps", "rtpp"]
_INFLATION_KINDS = ("none", "multiplicative", "rtps", "rtpp")


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
        larger chunks (1024+) suit GPUs.
    """

    localization_radius: float = math.inf
    vertical_localization_radius: float | None = None
    inflation: InflationKind = "none"
    inflation_factor: float = 1.0
    chunk_size: int = 128

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

    @property
    def is_global(self) -> bool:
        """True when no localisation is applied (every location sees every observation)."""
        vertical = self.vertical_localization_radius
        return math.isinf(self.localization_radius) and (vertical is None
                                                          or math.isinf(vertical))


# --------------------------------------------------------------------------------------
# Localisation plan: which observations each analysis location sees, and with what weight
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalizationPlan:
    """Grouping of state points into analysis locations and their local observation sets.

    Build with :func:`plan_localization`; it depends only on positions and the
    localisation radii, so one plan serves every cycle of a fixed observing network.

    Attributes
    ----------
    n_state, n_obs : int
        Sizes the plan was built for.
    location_of_state : Tensor, shape (n_state,), int64
        Analysis location of each (flattened) state point.
    state_order : Tensor, shape (n_state,), int64
        State points sorted by location (stable), so a run of locations is a slice.
    location_starts : Tensor, shape (n_locations + 1,), int64
        ``state_order[location_starts[i]:location_starts[i+1]]`` are location i's points.
    location_positions : Tensor, shape (n_locations, n_dims) or None
        Localisation-relevant coordinates of each location (None for a global plan).
    obs_positions : Tensor, shape (n_obs, n_dims) or None
    domain_lengths : tuple of float
        Period of each horizontal axis (inf: bounded).
    localization_radius, vertical_localization_radius, chunk_size
        Copied from the config the plan was built with.
    cached_chunks : tuple or None
        Precomputed ``(obs_index, obs_weight)`` per chunk when built with ``precompute``.
    """

    n_state: int
    n_obs: int
    location_of_state: Tensor
    state_order: Tensor
    location_starts: Tensor
    location_positions: Tensor | None
    obs_positions: Tensor | None
    domain_lengths: tuple[float, ...]
    localization_radius: float
    vertical_localization_radius: float | None
    chunk_size: int
    cached_chunks: tuple[tuple[Tensor, Tensor], ...] | None = None

    @property
    def n_locations(self) -> int:
        """Number of distinct analysis locations."""
        return int(self.location_starts.numel() - 1)

    def chunk_bounds(self) -> Iterator[tuple[int, int]]:
        """Yield ``(first, stop)`` location ranges of at most ``chunk_size`` locations."""
        for first in range(0, self.n_locations, self.chunk_size):
            yield first, min(first + self.chunk_size, self.n_locations)

    def local_observations(self, first: int, stop: int) -> tuple[Tensor, Tensor]:
        """Padded local observation sets of locations ``first:stop``.

        Returns
        -------
        obs_index : Tensor, shape (stop - first, k_max), int64
            Observation indices; padding entries point at observation 0.
        obs_weight : Tensor, shape (stop - first, k_max)
            Gaspari–Cohn weights in (0, 1]; 0 on padding.
        """
        if self.cached_chunks is not None and first % self.chunk_size == 0 and (
                stop == min(first + self.chunk_size, self.n_locations)):
            return self.cached_chunks[first // self.chunk_size]
        if self.location_positions is None:  # global: everyone sees everything, weight 1
            index = torch.arange(self.n_obs, device=self.location_of_state.device)
            weight = torch.ones(self.n_obs, device=self.location_of_state.device)
            return (index.expand(stop - first, -1), weight.expand(stop - first, -1))
        return _local_observations(self.location_positions[first:stop], self.obs_positions,
                                   self.domain_lengths, self.localization_radius,
                                   self.vertical_localization_radius)

    def matches(self, config: LETKFConfig) -> bool:
        """Whether the plan was built with ``config``'s localisation radii."""
        if self.location_positions is None:
            return config.is_global
        return (self.localization_radius == config.localization_radius
                and self.vertical_localization_radius == config.vertical_localization_radius)


def _candidate_observations(location_positions: Tensor, obs_positions: Tensor,
                            domain_lengths: tuple[float, ...], reach: float) -> Tensor | None:
    """Indices of the observations inside the chunk's bounding box grown by ``reach``.

    A superset of every location's local set (triangle inequality about the box centre,
    axis by axis); ``None`` when the box covers everything. Locations come sorted by
    their first coordinate, so a chunk is a narrow strip and this prunes most of the
    (locations, obs) distance table on large domains.
    """
    keep = None
    for axis, length in enumerate(domain_lengths):
        low, high = location_positions[:, axis].aminmax()
        centre, half_extent = 0.5 * (low + high), 0.5 * (high - low)
        if not math.isinf(length) and half_extent + reach >= 0.5 * length:
            continue  # the box wraps all the way round this axis
        offset = (obs_positions[:, axis] - centre).abs()
        if not math.isinf(length):
            offset = torch.minimum(offset, length - offset)
        inside = offset <= half_extent + reach
        keep = inside if keep is None else keep & inside
    if keep is None or bool(keep.all()):
        return None
    return keep.nonzero().squeeze(1)


def _local_observations(location_positions: Tensor, obs_positions: Tensor,
                        domain_lengths: tuple[float, ...], half_width: float,
                        vertical_half_width: float | None) -> tuple[Tensor, Tensor]:
    """Padded indices and weights of the observations within reach of each location."""
    n_horizontal = len(domain_lengths)
    candidates = _candidate_observations(location_positions, obs_positions, domain_lengths,
                                         2.0 * half_width)
    if candidates is not None:
        obs_positions = obs_positions[candidates]
    squared = torch.zeros(location_positions.shape[0], obs_positions.shape[0],
                          dtype=location_positions.dtype, device=location_positions.device)
    for axis, length in enumerate(domain_lengths):
        diff = (location_positions[:, axis, None] - obs_positions[None, :, axis]).abs_()
        if not math.isinf(length):
            # Positions were wrapped into [0, length) by the planner, so the minimum image
            # is min(d, L - d) = L/2 - |d - L/2|; in place, as this table is the big one.
            diff.sub_(0.5 * length).abs_().sub_(0.5 * length)
        squared.addcmul_(diff, diff)
    within = squared < (2.0 * half_width) ** 2
    if vertical_half_width is not None:
        vertical = (location_positions[:, n_horizontal, None]
                    - obs_positions[None, :, n_horizontal]).abs_()
        within &= vertical < 2.0 * vertical_half_width
    counts = within.sum(dim=1)
    k_max = int(counts.max()) if counts.numel() else 0
    # Boolean-mask selection and nonzero() both walk the table row by row, so the pairs
    # come grouped by location, in the order masked_scatter_ fills the padded rows.
    cols = within.nonzero()[:, 1]
    if candidates is not None:
        cols = candidates[cols]
    # The taper is only evaluated on the (few) pairs within the cut-off.
    weight = gaspari_cohn(squared[within].sqrt_(), half_width)
    if vertical_half_width is not None:
        weight = weight * gaspari_cohn(vertical[within], vertical_half_width)
    filled = torch.arange(k_max, device=counts.device) < counts[:, None]
    obs_index = torch.zeros(filled.shape, dtype=torch.long,
                            device=counts.device).masked_scatter_(filled, cols)
    obs_weight = torch.zeros(filled.shape, dtype=weight.dtype,
                             device=counts.device).masked_scatter_(filled, weight)
    return obs_index, obs_weight


def _check_positions(name: str, positions: Tensor, leading: tuple[int, ...] | None,
                     n_points: int, n_horizontal: int) -> Tensor:
    """Validate a positions tensor and flatten it to ``(n_points, n_dims)``."""
    if not isinstance(positions, Tensor):
        positions = torch.as_tensor(positions)
    if not positions.is_floating_point():
        positions = positions.to(torch.float64)
    if positions.ndim < 1:
        raise InputError(f"{name} must have a trailing coordinate axis; got a scalar")
    flat = positions.reshape(-1, positions.shape[-1]) if positions.ndim > 1 else positions[:, None]
    shape_ok = flat.shape[0] == n_points and (
        positions.ndim <= 2 or leading is None or tuple(positions.shape[:-1]) == leading)
    if not shape_ok:
        expected = f"({n_points}, n_dims)" + (f" or {(*leading, 'n_dims')}" if leading else "")
        raise InputError(f"{name} has shape {tuple(positions.shape)}; expected {expected}")
    if flat.shape[1] not in (n_horizontal, n_horizontal + 1):
        raise InputError(
            f"{name} has {flat.shape[1]} coordinates per point but domain_lengths has "
            f"{n_horizontal} entries: give (horizontal...) or (horizontal..., vertical)")
    if not torch.isfinite(flat).all():
        raise InputError(f"{name} contains NaN or inf")
    return flat


def plan_localization(state_positions: Tensor, obs_positions: Tensor,
                      domain_lengths: Sequence[float], config: LETKFConfig, *,
                      state_shape: Sequence[int] | None = None,
                      precompute: bool = False) -> LocalizationPlan:
    """Group state points into analysis locations and describe their local observations.

    Parameters
    ----------
    state_positions : Tensor, shape (*state_shape, n_dims) or (n_state, n_dims)
        Position of every state element: horizontal coordinates (one per entry of
        ``domain_lengths``) and optionally a vertical one last (e.g. ``sqg_positions``).
    obs_positions : Tensor, shape (n_obs, n_dims)
        Observation positions in the same units (an operator's ``locations``). A 1-D
        tensor is taken as one horizontal coordinate per observation.
    domain_lengths : sequence of float
        Period of each horizontal axis (``math.inf`` for a bounded axis), e.g. ``(L, L)``
        for SQG in metres, ``(40,)`` for Lorenz-96 in grid points.
    config : LETKFConfig
        Supplies the radii and the chunk size.
    state_shape : sequence of int, optional
        When given, ``state_positions`` may be shaped ``(*state_shape, n_dims)`` and is
        checked against it.
    precompute : bool
        Compute and keep every chunk's local observation set now (memory about
        ``n_locations * k_max`` indices and weights) so repeated analyses skip the
        distance computations.

    Returns
    -------
    LocalizationPlan
    """
    lengths = tuple(float(length) for length in domain_lengths)
    if not lengths or any(not length > 0 for length in lengths):
        raise InputError(f"domain_lengths must be a non-empty sequence of lengths > 0 "
                         f"(math.inf for a non-periodic axis); got {tuple(domain_lengths)}")
    leading = tuple(state_shape) if state_shape is not None else None
    n_state = math.prod(leading) if leading is not None else (
        math.prod(state_positions.shape[:-1]) if state_positions.ndim > 1
        else state_positions.shape[0])
    state_flat = _check_positions("state_positions", state_positions, leading, n_state,
                                  len(lengths))
    obs_positions = torch.as_tensor(obs_positions)
    n_obs = obs_positions.shape[0] if obs_positions.ndim >= 1 else 0
    obs_flat = _check_positions("obs_positions", obs_positions, None, n_obs, len(lengths))
    obs_flat = obs_flat.to(device=state_flat.device, dtype=state_flat.dtype)

    n_used = len(lengths)
    if config.vertical_localization_radius is not None:
        n_used += 1
        for name, flat in (("state_positions", state_flat), ("obs_positions", obs_flat)):
            if flat.shape[1] != n_used:
                raise InputError(
                    f"vertical_localization_radius is set but {name} has no vertical "
                    f"coordinate ({flat.shape[1]} columns for {len(lengths)} horizontal "
                    f"axes); append z as the last column")

    if config.is_global:
        return _global_plan(n_state, n_obs, state_flat.device, config.chunk_size)

    def wrap(flat: Tensor) -> Tensor:
        flat = flat[:, :n_used].clone()
        for axis, length in enumerate(lengths):
            if not math.isinf(length):
                flat[:, axis] = torch.remainder(flat[:, axis], length)
        return flat

    state_used, obs_used = wrap(state_flat), wrap(obs_flat)
    location_positions, location_of_state = _unique_rows(state_used)
    state_order = torch.argsort(location_of_state, stable=True)
    counts = torch.bincount(location_of_state, minlength=location_positions.shape[0])
    location_starts = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    plan = LocalizationPlan(
        n_state=n_state, n_obs=n_obs, location_of_state=location_of_state,
        state_order=state_order, location_starts=location_starts,
        location_positions=location_positions, obs_positions=obs_used,
        domain_lengths=lengths, localization_radius=config.localization_radius,
        vertical_localization_radius=config.vertical_localization_radius,
        chunk_size=config.chunk_size)
    if precompute:
        chunks = tuple(plan.local_observations(first, stop)
                       for first, stop in plan.chunk_bounds())
        plan = dataclasses.replace(plan, cached_chunks=chunks)
    return plan


def _unique_rows(points: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct rows, sorted lexicographically, and the row index of every point.

    Same result as ``torch.unique(points, dim=0, return_inverse=True)``, which is slow on
    CPU for many rows; here each column is coded with a fast 1-D unique and the codes are
    combined into one integer key per row.
    """
    key = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    for column in points.unbind(dim=1):
        values, codes = torch.unique(column, return_inverse=True)
        if key.numel() and int(key.max()) >= (2 ** 62) // max(values.numel(), 1):
            return torch.unique(points, dim=0, return_inverse=True)  # key would overflow
        key = key * values.numel() + codes
    _, inverse = torch.unique(key, return_inverse=True)
    unique_points = points.new_empty(int(inverse.max()) + 1 if inverse.numel() else 0,
                                     points.shape[1])
    unique_points[inverse] = points
    return unique_points, inverse


def _global_plan(n_state: int, n_obs: int, device: torch.device,
                 chunk_size: int) -> LocalizationPlan:
    """One location holding every state point, seeing every observation with weight 1."""
    return LocalizationPlan(
        n_state=n_state, n_obs=n_obs,
        location_of_state=torch.zeros(n_state, dtype=torch.long, device=device),
        state_order=torch.arange(n_state, device=device),
        location_starts=torch.tensor([0, n_state], device=device),
        location_positions=None, obs_positions=None, domain_lengths=(),
        localization_radius=math.inf, vertical_localization_radius=None,
        chunk_size=chunk_size)


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
    return _transforms_from_gram(tapered.transpose(1, 2) @ tapered)


def _transforms_from_gram(gram: Tensor) -> Tensor:
    """ETKF transforms from the Gram matrix of the tapered ``[Y | d]`` columns.

    ``gram = [Y|d]ᵀ diag(rho) [Y|d]``, shape (n_loc, m + 1, m + 1): its leading block is
    ``Yᵀ diag(rho) Y`` and its last column ``Yᵀ diag(rho) d``, so one batched matmul over
    the local observations yields both.
    """
    n_members = gram.shape[-1] - 1
    precision = gram[:, :n_members, :n_members].clone()             # (n_loc, m, m)
    precision.diagonal(dim1=-2, dim2=-1).add_(n_members - 1)
    projected = gram[:, :n_members, n_members:]                     # (n_loc, m, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(precision)      # eigenvalues >= m - 1 > 0
    coefficients = eigenvectors.transpose(1, 2) @ projected
    mean_weights = eigenvectors @ (coefficients / eigenvalues[..., None])   # (n_loc, m, 1)
    root = torch.sqrt((n_members - 1) / eigenvalues)
    transforms = (eigenvectors * root[:, None, :]) @ eigenvectors.transpose(1, 2)
    return transforms + mean_weights


def _apply_transforms(anomalies_t: Tensor, mean: Tensor, transforms: Tensor,
                      state_index: Tensor, location_index: Tensor,
                      out: Tensor) -> None:
    """Write ``mean + a @ T`` for the given state points into ``out`` (n_state, m)."""
    n_points, n_loc = state_index.numel(), transforms.shape[0]
    anomalies = anomalies_t[state_index]                         # (n_points, m)
    if n_points % n_loc == 0 and torch.equal(
            location_index, torch.arange(n_loc, device=location_index.device)
            .repeat_interleave(n_points // n_loc)):
        # Every location has the same number of points (1 per location, the SQG levels
        # sharing a column, or one global location): a batched matmul, no gather of T.
        per = n_points // n_loc
        updated = anomalies.reshape(n_loc, per, -1) @ transforms
        updated = updated.reshape(n_points, -1)
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
    obs_ensemble = torch.as_tensor(obs_ensemble).to(**like)
    obs = torch.as_tensor(obs).to(**like)
    if obs.ndim != 1:
        raise InputError(f"obs must be shaped (n_obs,); got shape {tuple(obs.shape)}")
    n_obs = obs.shape[0]
    if tuple(obs_ensemble.shape) != (n_members, n_obs):
        raise InputError(
            f"obs_ensemble has shape {tuple(obs_ensemble.shape)}; expected (member, n_obs) = "
            f"({n_members}, {n_obs}) to match forecast_ensemble and obs")
    if torch.isnan(obs).any():
        raise InputError(f"obs contains {int(torch.isnan(obs).sum())} NaN value(s); drop "
                         f"missing observations (and their operator rows) before the analysis")
    if not torch.isfinite(obs).all():
        raise InputError("obs contains inf")
    if not torch.isfinite(obs_ensemble).all():
        raise InputError("obs_ensemble (HX) contains NaN or inf")
    if not torch.isfinite(forecast_ensemble).all():
        raise InputError("forecast_ensemble contains NaN or inf")
    std = torch.as_tensor(obs_error_std).to(**like)
    if std.ndim > 1 or (std.ndim == 1 and std.shape[0] != n_obs):
        raise InputError(f"obs_error_std must be a scalar or shaped (n_obs,) = ({n_obs},); "
                         f"got shape {tuple(std.shape)}")
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


def _analyse(forecast_ensemble: Tensor, obs_ensemble: Tensor, obs: Tensor,
             obs_error_std: float | Tensor, plan: LocalizationPlan,
             config: LETKFConfig) -> Tensor:
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

    # Innovations ride along as an extra column: one gather and one matmul per chunk.
    augmented_t = torch.cat([obs_anomalies_t, innovations[:, None]], dim=1)  # (n_obs, m+1)
    analysis_t = torch.empty_like(states_t)
    gather_buffer = augmented_t.new_empty(0)
    for first, stop in plan.chunk_bounds():
        obs_index, obs_weight = plan.local_observations(first, stop)
        root_weights = obs_weight.to(states_t.dtype).sqrt()
        needed = obs_index.numel() * (n_members + 1)
        if gather_buffer.numel() < needed:
            gather_buffer = augmented_t.new_empty(needed)
        # Gather into a reused buffer: a fresh tens-of-MB allocation per chunk costs more in
        # page faults than the gather itself. The copy is ours, so taper it in place.
        tapered = torch.index_select(
            augmented_t, 0, obs_index.reshape(-1),
            out=gather_buffer[:needed].view(obs_index.numel(), n_members + 1))
        tapered = tapered.view(*obs_index.shape, n_members + 1).mul_(root_weights[..., None])
        transforms = _transforms_from_gram(tapered.transpose(1, 2) @ tapered)
        points = slice(int(plan.location_starts[first]), int(plan.location_starts[stop]))
        state_index = plan.state_order[points]
        _apply_transforms(prior_anomalies_t, mean, transforms, state_index,
                          plan.location_of_state[state_index] - first, analysis_t)

    if config.inflation in ("rtps", "rtpp"):
        analysis_mean = analysis_t.mean(dim=1, keepdim=True)
        relaxed = _relax(analysis_t - analysis_mean, anomalies_t, config)
        analysis_t = analysis_mean + relaxed
    return analysis_t.T.reshape(n_members, *state_shape)


def letkf_analysis(forecast_ensemble: Tensor, obs_ensemble: Tensor, obs: Tensor,
                   obs_error_std: float | Tensor, *, config: LETKFConfig,
                   state_positions: Tensor | None = None,
                   obs_positions: Tensor | None = None,
                   domain_lengths: Sequence[float] | None = None,
                   plan: LocalizationPlan | None = None) -> Tensor:
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
            plan = _global_plan(n_state, obs.shape[0], forecast_ensemble.device,
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
    return _analyse(forecast_ensemble, obs_ensemble, obs, std, plan, config)


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
        Only its inflation settings are used (radii are ignored).

    Returns
    -------
    Tensor, shape (member, *state_shape)
    """
    config = config or LETKFConfig()
    global_config = LETKFConfig(inflation=config.inflation,
                                inflation_factor=config.inflation_factor,
                                chunk_size=config.chunk_size)
    return letkf_analysis(forecast_ensemble, obs_ensemble, obs, obs_error_std,
                          config=global_config)


def analysis(forecast_ensemble: Tensor, obs: Tensor, obs_operator: Callable[[Tensor], Tensor],
             obs_error_std: float | Tensor, generator: torch.Generator | None = None, *,
             config: LETKFConfig, state_positions: Tensor | None = None,
             domain_lengths: Sequence[float] | None = None,
             plan: LocalizationPlan | None = None) -> Tensor:
    """The filter contract of ``docs/design.md``: LETKF given an observation operator.

    Applies ``obs_operator`` to the forecast ensemble. Observation positions are the rows
    of ``state_positions`` at the operator's ``locations`` (grid indices in array-axis
    order, as the kit's operators give them; see
    :func:`~turbda_kit.filters.localization.grid_point_positions`). For observations off
    the grid call :func:`letkf_analysis` with ``obs_positions``. ``generator`` is accepted
    for interface symmetry with stochastic filters; the LETKF is deterministic.

    Parameters
    ----------
    forecast_ensemble : Tensor, shape (member, *state_shape)
    obs : Tensor, shape (n_obs,)
    obs_operator : callable
        ``(member, *state_shape) -> (member, n_obs)``, with a ``locations`` attribute of
        shape ``(n_obs, len(state_shape))`` (grid indices) when localising.
    obs_error_std : float or Tensor, scalar or shape (n_obs,)
    generator : torch.Generator, optional
        Unused.
    config, state_positions, domain_lengths, plan
        As in :func:`letkf_analysis`.

    Returns
    -------
    Tensor, shape (member, *state_shape)
    """
    del generator
    obs_positions = None
    if plan is None and not config.is_global:
        locations = getattr(obs_operator, "locations", None)
        if locations is None:
            raise InputError("obs_operator has no 'locations' attribute; localisation needs "
                             "observation positions (use letkf_analysis with obs_positions)")
        if state_positions is None:
            raise InputError("localisation needs state_positions shaped (*state_shape, n_dims)")
        state_positions = torch.as_tensor(state_positions)
        grid = state_positions.reshape(*forecast_ensemble.shape[1:], state_positions.shape[-1])
        obs_positions = grid_point_positions(grid, locations)
    return letkf_analysis(forecast_ensemble, obs_operator(forecast_ensemble), obs,
                          obs_error_std, config=config, state_positions=state_positions,
                          obs_positions=obs_positions, domain_lengths=domain_lengths,
                          plan=plan)
