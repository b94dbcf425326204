"""Distance-based localisation: the Gaspari–Cohn taper, periodic distances, grid positions.

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

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import InputError

__all__ = [
    "gaspari_cohn",
    "periodic_difference",
    "pairwise_distances",
    "grid_positions",
    "sqg_positions",
    "half_width_for_taper",
    "grid_point_positions",
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
