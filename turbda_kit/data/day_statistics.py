"""Per-day statistics of a nature run, combinable exactly across days and ranks.

The normalisation statistics and climatologies of the preprocessing stage are built from
one :class:`DayStatistics` per day, combined over a fixed tree of days
(:func:`turbda_kit.parallel.mpi.tree_reduce`), so they equal a single pass over all the
data and do not depend on the number of ranks or threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..parallel.mpi import Moments

__all__ = ["DayStatistics", "field_moments"]


def field_moments(data: np.ndarray, mean_out: np.ndarray, m2_out: np.ndarray | None,
                  scratch: np.ndarray | None = None) -> None:
    """Per-point mean and sum of squared deviations over the first axis, in float64.

    Parameters
    ----------
    data : numpy.ndarray, shape (time, ...)
        Any float dtype, any strides.
    mean_out : numpy.ndarray, float64, shape data.shape[1:]
        Receives the mean over time.
    m2_out : numpy.ndarray, float64, shape data.shape[1:], or None
        Receives the sum over time of squared deviations from the mean (two passes, so no
        cancellation); skipped when None.
    scratch : numpy.ndarray, float64, 1-d, or None
        Reusable work space of at least ``data.size`` values; allocated when None.

    Notes
    -----
    Every point is summed over time in order (a reduction over the outer axis adds one
    output time after another), so the result of a point does not depend on which block
    of points it was computed with: blocks computed by different threads give the same
    bits as one call over everything.

    The work is six whole-block numpy calls on a float64 copy of the block. A loop over
    output times does the same arithmetic in ~100 calls per block, and each call has to
    take the GIL back from the threads that write shards at the same time: in the
    preprocessing pipeline that made the statistics twice as slow.
    """
    if scratch is None:
        scratch = np.empty(data.size)
    elif scratch.dtype != np.float64 or scratch.ndim != 1 or scratch.size < data.size:
        raise InputError(f"scratch must be a 1-d float64 array of at least {data.size} "
                         f"values, got {scratch.dtype} of shape {scratch.shape}")
    values = scratch[:data.size].reshape(data.shape)
    np.copyto(values, data)
    np.add.reduce(values, axis=0, out=mean_out)
    np.divide(mean_out, data.shape[0], out=mean_out)
    if m2_out is None:
        return
    np.subtract(values, mean_out, out=values)
    np.multiply(values, values, out=values)
    np.add.reduce(values, axis=0, out=m2_out)


@dataclass(frozen=True)
class DayStatistics:
    """Partial statistics of some days: per-variable scalar moments and time-mean fields.

    ``scalar.mean`` has shape ``(vars,)`` (moments over time, y, x); ``field.mean`` has
    shape ``(vars, ny, nx)`` (moments over time: the climatology). Statistics made
    without spread (the validation and test days, whose spread nothing uses) carry NaN
    in both ``m2``.
    """

    scalar: Moments
    field: Moments

    @classmethod
    def of(cls, data: np.ndarray, with_spread: bool = True) -> DayStatistics:
        """Statistics of ``data (time, vars, ny, nx)``, in float64."""
        field_mean = np.empty(data.shape[1:])
        field_m2 = np.empty(data.shape[1:]) if with_spread else None
        field_moments(data, field_mean, field_m2)
        return cls.from_fields(data.shape[0], field_mean, field_m2)

    @classmethod
    def from_fields(cls, n_time: int, field_mean: np.ndarray,
                    field_m2: np.ndarray | None) -> DayStatistics:
        """Statistics from the per-point moments of ``n_time`` output times.

        Parameters
        ----------
        n_time : int
            Output times reduced into each point.
        field_mean, field_m2 : numpy.ndarray, float64, shape (vars, ny, nx)
            As :func:`field_moments` gives them; ``field_m2`` None without spread.
        """
        n_points = field_mean.shape[1] * field_mean.shape[2]
        scalar_mean = field_mean.mean(axis=(1, 2))
        if field_m2 is None:
            field_m2 = np.full_like(field_mean, np.nan)
            scalar_m2 = np.full_like(scalar_mean, np.nan)
        else:
            # The scalar moments follow from the per-point ones (law of total variance),
            # which saves another pass over the day's data.
            spread = field_mean - scalar_mean[:, None, None]
            scalar_m2 = (field_m2.sum(axis=(1, 2))
                         + n_time * np.einsum("vyx,vyx->v", spread, spread))
        return cls(Moments(n_time * n_points, scalar_mean, scalar_m2),
                   Moments(n_time, field_mean, field_m2))

    def combine(self, other: DayStatistics) -> DayStatistics:
        """Statistics of the union of both sets of days."""
        return DayStatistics(self.scalar.combine(other.scalar), self.field.combine(other.field))
