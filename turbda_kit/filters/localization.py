"""Distance-based localisation: the Gaspari–Cohn taper, periodic distances, grid positions,
and the localisation plan (which observations each analysis location sees, with what weight).

Conventions
-----------
*Half-width.* Every localisation length in this module is the Gaspari–Cohn **half-width**
``c`` of Gaspari & Cohn (1999, eq. 4.10): the taper is 1 at distance 0, 5/24 ≈ 0.208 at
``c`` and exactly 0 from ``2 c`` on (compact support ``2 c``). Other codes use other
lengths for the same function:

- sqgturb (J. Whitaker) passes the *cut-off* ``2 c`` (its ``hcovlocal_scale``), so
  sqgturb's ``hcovlocal_scale = L`` is ``half_width = L / 2`` here;
- DAPPER scales its ``loc_rad`` so that the taper equals ``exp(-1/2)`` at ``loc_rad``:
  ``c = 1.82 * loc_rad`` (``dapper/tools/localization.py``, tag ``"GC"``), so DAPPER's
  ``loc_rad = 4`` is ``half_width = 7.28`` here (and DAPPER also drops observations whose
  taper is below 1e-3, which we do not).

*Positions.* A position is a row ``(x, y[, z])``: first the horizontal coordinates, one
per entry of ``domain_lengths`` (a periodic axis has its period there, a bounded axis
``math.inf``), then optionally one vertical coordinate, which is never periodic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import InputError

if TYPE_CHECKING:  # the config module imports this one
    from .letkf import LETKFConfig

__all__ = [
    "LatticeGeometry",
    "LocalizationPlan",
    "gaspari_cohn",
    "global_plan",
    "grid_point_positions",
    "grid_positions",
    "half_width_for_taper",
    "lattice_geometry",
    "pairwise_distances",
    "periodic_difference",
    "plan_localization",
    "sqg_positions",
]


def gaspari_cohn(distance: Tensor, half_width: float) -> Tensor:
    """Gaspari–Cohn (1999, eq. 4.10) fifth-order piecewise-rational taper.

    Parameters
    ----------
    distance : Tensor, any shape
        Non-negative distances, in the units of ``half_width``.
    half_width : float
        The half-width ``c`` (> 0, may be ``math.inf`` for "no localisation"): the taper
        is 1 at 0, 5/24 at ``c`` and 0 from ``2 c`` on.

    Returns
    -------
    Tensor, same shape, dtype and device as ``distance``
        Taper values in [0, 1].
    """
    if not half_width > 0:
        raise InputError(f"half_width must be > 0 (a length, or math.inf); got {half_width!r}")
    z = distance.abs() / half_width
    # Horner forms of the two polynomial pieces; the 1/z term of the outer piece is only
    # evaluated where z > 1, so clamping keeps it finite elsewhere without changing values.
    inner = 1.0 + z * z * (-5.0 / 3.0 + z * (5.0 / 8.0 + z * (0.5 - 0.25 * z)))
    z_outer = z.clamp(min=1.0)
    outer = (4.0 - 2.0 / (3.0 * z_outer)
             + z * (-5.0 + z * (5.0 / 3.0 + z * (5.0 / 8.0 + z * (-0.5 + z / 12.0)))))
    taper = torch.where(z <= 1.0, inner, outer)
    # Rounding can leave tiny negative values just inside 2c; weights must stay >= 0.
    return torch.where(z < 2.0, taper, torch.zeros_like(taper)).clamp_(min=0.0)


def periodic_difference(a: Tensor, b: Tensor, length: float) -> Tensor:
    """Minimum-image absolute difference ``|a - b|`` on a circle of circumference ``length``.

    Parameters
    ----------
    a, b : Tensor, broadcastable
        Coordinates (any real values; they need not lie in ``[0, length)``).
    length : float
        Period (> 0). ``math.inf`` gives the plain absolute difference.

    Returns
    -------
    Tensor
        Values in ``[0, length / 2]``.
    """
    diff = (a - b).abs()
    if math.isinf(length):
        return diff
    diff = torch.remainder(diff, length)
    return torch.minimum(diff, length - diff)


def pairwise_distances(points_a: Tensor, points_b: Tensor,
                       domain_lengths: Sequence[float]) -> Tensor:
    """Euclidean distances between two point sets on a (partly) periodic box.

    Parameters
    ----------
    points_a : Tensor, shape (n_a, n_dims)
    points_b : Tensor, shape (n_b, n_dims)
    domain_lengths : sequence of float, length n_dims
        Period of each axis (``math.inf`` for a bounded axis).

    Returns
    -------
    Tensor, shape (n_a, n_b)
    """
    if points_a.shape[-1] != len(domain_lengths) or points_b.shape[-1] != len(domain_lengths):
        raise InputError(
            f"points have {points_a.shape[-1]} and {points_b.shape[-1]} coordinates but "
            f"domain_lengths has {len(domain_lengths)} entries; they must all agree")
    squared = torch.zeros(points_a.shape[0], points_b.shape[0], dtype=points_a.dtype,
                          device=points_a.device)
    for axis, length in enumerate(domain_lengths):
        diff = periodic_difference(points_a[:, axis, None], points_b[None, :, axis], length)
        squared += diff * diff
    return squared.sqrt()


def grid_positions(shape: Sequence[int], lengths: Sequence[float], *,
                   dtype: torch.dtype = torch.float64,
                   device: torch.device | str | None = None) -> Tensor:
    """Positions of a regular grid with ``x_i = i * length / n`` on every axis.

    Parameters
    ----------
    shape : sequence of int
        Grid points per axis, in array order (e.g. ``(n,)`` for Lorenz-96, ``(ny, nx)``).
    lengths : sequence of float
        Domain length of each axis, same order as ``shape``.
    dtype, device
        Of the returned tensor.

    Returns
    -------
    Tensor, shape (*shape, len(shape))
        The coordinate of each point along each axis, **in array-axis order** (for a
        ``(ny, nx)`` grid the last dimension holds ``(y, x)``).

    Examples
    --------
    >>> grid_positions((40,), (40.0,)).shape   # Lorenz-96 in grid-point units
    torch.Size([40, 1])
    """
    if len(shape) != len(lengths):
        raise InputError(f"shape {tuple(shape)} and lengths {tuple(lengths)} differ in length")
    axes = [torch.arange(n, dtype=dtype, device=device) * (length / n)
            for n, length in zip(shape, lengths)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def sqg_positions(n: int, domain_length: float, lid_height: float, *,
                  dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> Tensor:
    """Positions ``(x, y, z)`` of the SQG state points, in metres.

    Parameters
    ----------
    n : int
        Grid points per horizontal axis.
    domain_length : float
        Periodic domain length L (m); ``x_i = i L / n``.
    lid_height : float
        Height H of the lid (m); level 0 is at z = 0, level 1 at z = H.
    dtype, device
        Of the returned tensor.

    Returns
    -------
    Tensor, shape (2, n, n, 3)
        Matches the SQG state layout ``(z, y, x)``; the last axis is ``(x, y, z)``, ready
        for ``domain_lengths = (L, L)`` with z as the vertical coordinate.
    """
    yx = grid_positions((n, n), (domain_length, domain_length), dtype=dtype, device=device)
    xy = yx.flip(-1)
    levels = torch.tensor([0.0, lid_height], dtype=dtype, device=device)
    z = levels[:, None, None, None].expand(2, n, n, 1)
    return torch.cat([xy.expand(2, n, n, 2), z], dim=-1)


def half_width_for_taper(taper: float, distance: float) -> float:
    """The Gaspari–Cohn half-width ``c`` with ``GC(distance / c) = taper``.

    Useful to express a fixed cross-level factor (sqgturb's ``vcovlocal_fact`` between
    the two SQG levels a distance H apart) as a vertical localisation half-width:
    ``vertical_localization_radius = half_width_for_taper(fact, H)``.

    Parameters
    ----------
    taper : float
        Wanted taper value, in (0, 1).
    distance : float
        Distance (> 0) at which the taper must take that value.

    Returns
    -------
    float
        The half-width, in the units of ``distance``.
    """
    if not 0.0 < taper < 1.0:
        raise InputError(f"taper must be in (0, 1); got {taper!r}")
    if not distance > 0:
        raise InputError(f"distance must be > 0; got {distance!r}")
    low, high = 0.0, 2.0   # GC decreases strictly from 1 to 0 on z in [0, 2]
    for _ in range(80):
        mid = 0.5 * (low + high)
        value = float(gaspari_cohn(torch.tensor([mid], dtype=torch.float64), 1.0))
        low, high = (mid, high) if value > taper else (low, mid)
    return distance / (0.5 * (low + high))


def grid_point_positions(state_positions: Tensor, grid_coordinates: Tensor) -> Tensor:
    """Positions of observations that sit on state grid points.

    The kit's observation operators give ``locations`` as grid coordinates in array-axis
    order and index units (``(z, y, x)`` for SQG, ``(i,)`` for Lorenz-96); this looks up
    the matching rows of ``state_positions`` (e.g. ``(x, y, z)`` in metres from
    :func:`sqg_positions`).

    Parameters
    ----------
    state_positions : Tensor, shape (*state_shape, n_dims)
    grid_coordinates : Tensor, shape (n_obs, len(state_shape))
        Integer-valued grid indices (floats are accepted if they are whole numbers).

    Returns
    -------
    Tensor, shape (n_obs, n_dims)
    """
    grid_coordinates = torch.as_tensor(grid_coordinates)
    if grid_coordinates.ndim == 1:
        grid_coordinates = grid_coordinates[:, None]
    state_shape = tuple(state_positions.shape[:-1])
    if grid_coordinates.ndim != 2 or grid_coordinates.shape[1] != len(state_shape):
        raise InputError(f"grid_coordinates has shape {tuple(grid_coordinates.shape)}; expected "
                         f"(n_obs, {len(state_shape)}) grid indices for state_positions of "
                         f"shape {tuple(state_positions.shape)}")
    index = torch.round(grid_coordinates.to(torch.float64)).to(torch.long)
    bounds = torch.tensor(state_shape, dtype=torch.long)
    off_grid = not torch.equal(index.to(torch.float64), grid_coordinates.to(torch.float64))
    if off_grid or bool(((index < 0) | (index >= bounds)).any()):
        raise InputError("grid_coordinates must be whole grid indices inside the state shape "
                         f"{state_shape}; for observations between grid points pass their "
                         "positions directly (letkf_analysis(obs_positions=...))")
    return state_positions[tuple(index.to(state_positions.device).T)]


# --------------------------------------------------------------------------------------
# Lattice geometry: locations and observations on the nodes of one periodic grid
# --------------------------------------------------------------------------------------

# Vertical levels beyond which the lattice path is not worth it (one field per level pair).
_MAX_LATTICE_LEVELS = 16


@dataclass(frozen=True)
class LatticeGeometry:
    """Analysis locations and observations on the nodes of one periodic lattice.

    On such a lattice the taper between a location and an observation depends only on
    their node offset, so the weighted sum over observations that every location needs
    (its local Gram matrix) is a circular convolution of per-node sums with one kernel,
    done for all locations at once by FFT. :func:`lattice_geometry` builds it.

    Attributes
    ----------
    shape : tuple of int
        Nodes per horizontal axis, in the order of the position columns.
    spacing : tuple of float
        Node spacing per axis (position units); ``shape[a] * spacing[a]`` is the period.
    location_node, obs_node : Tensor, shape (n_locations,) / (n_obs,), int64
        Flat (row-major over ``shape``) node index of each location / observation.
    location_level, obs_level : Tensor, shape (n_locations,) / (n_obs,), int64
        Row / column of ``level_weights`` (vertical level; all 0 without vertical
        localisation).
    level_weights : Tensor, shape (n_location_levels, n_obs_levels), float64
        Vertical taper between levels (ones without vertical localisation).
    kernel : Tensor, shape shape, float64
        Horizontal Gaspari-Cohn taper of each node offset (minimum image).
    observed : Tensor, shape (n_locations,), bool
        Whether any observation lies within the cut-off of the location (the others keep
        their forecast exactly).
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    location_node: Tensor
    location_level: Tensor
    obs_node: Tensor
    obs_level: Tensor
    level_weights: Tensor
    kernel: Tensor
    observed: Tensor

    @property
    def n_nodes(self) -> int:
        """Number of lattice nodes per level."""
        return math.prod(self.shape)

    @property
    def all_observed(self) -> bool:
        """Whether every location has an observation within reach."""
        return bool(self.observed.all())


def _lattice_axis(coordinates: Tensor, length: float, max_nodes: int
                  ) -> tuple[int, float, Tensor] | None:
    """Nodes, spacing and node index of coordinates in [0, length) on one periodic axis.

    The spacing is the smallest gap between distinct coordinates (the wrap-around gap
    included), rounded so that a whole number of nodes fills the period; None when some
    coordinate is off that lattice or it would have more than ``max_nodes`` nodes.
    """
    values = torch.unique(coordinates.to(torch.float64))
    # Positions given in float32 are rounded to eps * length; allow that, nothing more.
    # Gaps below that are one node seen twice (e.g. 0 and a wrapped L - tiny).
    rounding = 16 * torch.finfo(coordinates.dtype).eps * length
    gaps = torch.cat([torch.diff(values), values[:1] + length - values[-1:]])
    gaps = gaps[gaps > 4 * rounding]
    if gaps.numel() == 0:
        return 1, length, torch.zeros(coordinates.shape[0], dtype=torch.long,
                                      device=coordinates.device)
    n_nodes = round(length / float(gaps.min()))
    if n_nodes < 1 or n_nodes > max_nodes:
        return None
    spacing = length / n_nodes
    offsets = (coordinates.to(torch.float64) - float(values[0])) / spacing
    nearest = torch.round(offsets)
    if float((offsets - nearest).abs().max()) * spacing > rounding + 1e-12 * length:
        return None
    return n_nodes, spacing, torch.remainder(nearest.long(), n_nodes)


def _circular_convolution(fields: Tensor, kernel: Tensor) -> Tensor:
    """``fields (..., *shape)`` circularly convolved with ``kernel (*shape)`` (real FFT)."""
    dims = tuple(range(-kernel.ndim, 0))
    spectrum = torch.fft.rfftn(fields, dim=dims) * torch.fft.rfftn(kernel, dim=dims)
    return torch.fft.irfftn(spectrum, s=kernel.shape, dim=dims)


def lattice_geometry(location_positions: Tensor, obs_positions: Tensor,
                     domain_lengths: Sequence[float], half_width: float,
                     vertical_half_width: float | None) -> LatticeGeometry | None:
    """The lattice description of a localisation problem, or None if it has none.

    It exists when every horizontal axis is periodic and all location and observation
    coordinates lie on the nodes ``offset + i * L / n`` of one lattice per axis (the
    kit's grids with grid-point observations: any subset of the nodes, on any level).

    Parameters
    ----------
    location_positions : Tensor, shape (n_locations, n_dims)
        Localisation-relevant coordinates, wrapped into ``[0, L)`` (as in a plan).
    obs_positions : Tensor, shape (n_obs, n_dims)
        Same columns and units.
    domain_lengths : sequence of float
        Period of each horizontal axis.
    half_width : float
        Horizontal Gaspari-Cohn half-width.
    vertical_half_width : float or None
        Vertical half-width; the last position column is then the vertical coordinate.

    Returns
    -------
    LatticeGeometry or None
    """
    lengths = tuple(float(length) for length in domain_lengths)
    if any(math.isinf(length) for length in lengths) or math.isinf(half_width):
        return None
    device = location_positions.device
    n_locations, n_obs = location_positions.shape[0], obs_positions.shape[0]
    if n_obs == 0 or n_locations == 0:
        return None
    # A lattice much finer than the points it holds would cost more than it saves.
    max_nodes = 8 * (n_locations + n_obs)
    shape, spacing = [], []
    location_node = torch.zeros(n_locations, dtype=torch.long, device=device)
    obs_node = torch.zeros(n_obs, dtype=torch.long, device=device)
    for axis, length in enumerate(lengths):
        both = torch.cat([location_positions[:, axis], obs_positions[:, axis]])
        found = _lattice_axis(both, length, max_nodes)
        if found is None or math.prod(shape) * found[0] > max_nodes:
            return None
        n_nodes, step, index = found
        shape.append(n_nodes)
        spacing.append(step)
        location_node = location_node * n_nodes + index[:n_locations]
        obs_node = obs_node * n_nodes + index[n_locations:]

    if vertical_half_width is None:
        location_level = torch.zeros(n_locations, dtype=torch.long, device=device)
        obs_level = torch.zeros(n_obs, dtype=torch.long, device=device)
        level_weights = torch.ones(1, 1, dtype=torch.float64, device=device)
    else:
        vertical = len(lengths)
        location_z, location_level = torch.unique(
            location_positions[:, vertical].to(torch.float64), return_inverse=True)
        obs_z, obs_level = torch.unique(obs_positions[:, vertical].to(torch.float64),
                                        return_inverse=True)
        if location_z.numel() * obs_z.numel() > _MAX_LATTICE_LEVELS ** 2:
            return None
        level_weights = gaspari_cohn((location_z[:, None] - obs_z[None, :]).abs(),
                                     vertical_half_width)

    squared = torch.zeros(shape, dtype=torch.float64, device=device)
    for axis, (n_nodes, step) in enumerate(zip(shape, spacing)):
        offset = torch.arange(n_nodes, dtype=torch.float64, device=device)
        offset = torch.minimum(offset, n_nodes - offset) * step
        view = [1] * len(shape)
        view[axis] = n_nodes
        squared = squared + (offset ** 2).reshape(view)
    cut_off = (2.0 * half_width) ** 2
    kernel = torch.where(squared < cut_off, gaspari_cohn(squared.sqrt(), half_width),
                         torch.zeros_like(squared))

    # Observations within reach of each node, per observation level: an integer-valued
    # convolution, exact after rounding.
    n_nodes = math.prod(shape)
    counts = torch.bincount(obs_level * n_nodes + obs_node,
                            minlength=level_weights.shape[1] * n_nodes)
    counts = counts.to(torch.float64).reshape(level_weights.shape[1], *shape)
    reach = _circular_convolution(counts, (squared < cut_off).to(torch.float64))
    reach = torch.round(reach).reshape(level_weights.shape[1], n_nodes)
    seen = (level_weights > 0).to(torch.float64) @ reach             # (levels, nodes)
    observed = seen[location_level, location_node] > 0
    return LatticeGeometry(shape=tuple(shape), spacing=tuple(spacing),
                           location_node=location_node, location_level=location_level,
                           obs_node=obs_node, obs_level=obs_level,
                           level_weights=level_weights, kernel=kernel, observed=observed)


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
    lattice : LatticeGeometry or None
        Set when every location and observation sits on the nodes of one periodic lattice
        (the kit's grids and grid-point operators): then the local Gram matrices of all
        locations are one convolution (:func:`lattice_geometry`).
    points_per_location : int
        The number of state points of every location when all have the same (e.g. 2 for
        SQG columns, 1 with vertical localisation); 0 when they differ.
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
    lattice: LatticeGeometry | None = None
    points_per_location: int = 0

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

    def with_cached_chunks(self) -> LocalizationPlan:
        """This plan with every chunk's local observation set computed and kept."""
        if self.cached_chunks is not None:
            return self
        chunks = tuple(self.local_observations(first, stop)
                       for first, stop in self.chunk_bounds())
        return dataclasses.replace(self, cached_chunks=chunks)

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
        distance computations. Only the ``gram="gather"`` path reads them; the lattice
        description (``plan.lattice``) is always computed, it is cheap.

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
        return global_plan(n_state, n_obs, state_flat.device, config.chunk_size)

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
    uniform = counts.numel() > 0 and bool((counts == counts[0]).all())
    plan = LocalizationPlan(
        n_state=n_state, n_obs=n_obs, location_of_state=location_of_state,
        state_order=state_order, location_starts=location_starts,
        location_positions=location_positions, obs_positions=obs_used,
        domain_lengths=lengths, localization_radius=config.localization_radius,
        vertical_localization_radius=config.vertical_localization_radius,
        chunk_size=config.chunk_size, points_per_location=int(counts[0]) if uniform else 0,
        lattice=lattice_geometry(location_positions, obs_used, lengths,
                                 config.localization_radius,
                                 config.vertical_localization_radius))
    return plan.with_cached_chunks() if precompute else plan


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


def global_plan(n_state: int, n_obs: int, device: torch.device,
                 chunk_size: int) -> LocalizationPlan:
    """The plan of an unlocalised (global) analysis.

    One analysis location holds every state point and sees every observation with weight
    1; :func:`plan_localization` returns it for a config without localisation.
    """
    return LocalizationPlan(
        n_state=n_state, n_obs=n_obs,
        location_of_state=torch.zeros(n_state, dtype=torch.long, device=device),
        state_order=torch.arange(n_state, device=device),
        location_starts=torch.tensor([0, n_state], device=device),
        location_positions=None, obs_positions=None, domain_lengths=(),
        localization_radius=math.inf, vertical_localization_radius=None,
        chunk_size=chunk_size, points_per_location=n_state)
