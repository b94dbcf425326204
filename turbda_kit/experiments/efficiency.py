"""Parallel-efficiency maths of a scaling study: pure numpy functions, no I/O.

* **Strong scaling** (fixed total size): ``E(p) = p0 T(p0) / (p T(p))``.
* **Weak scaling** (fixed size per rank): ``E(p) = T(p0) / T(p)``.

``T(p)`` is a time per cycle on ``p`` ranks and ``p0`` the smallest rank count measured,
so with ``p0 = 1`` these are ``T(1) / (p T(p))`` and ``T(1) / T(p)``.

A rank may keep more than one core busy: its torch threads, plus the EnSF's noise-prefetch
thread when that is on (:func:`cores_per_rank`). CPU utilisation divides the CPU time used
by the cores those ranks were given (:func:`cpu_utilisation`), so a baseline that quietly
used 1.5 cores shows as such instead of inflating the efficiency of the larger runs.

Example
-------
>>> import numpy as np
>>> efficiency(np.array([10.0, 6.0]), [1, 2], "strong").round(3).tolist()
[1.0, 0.833]
>>> cores_per_rank(threads_per_rank=1, prefetch_noise=True)
2
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError

__all__ = ["MODES", "cores_per_rank", "cpu_utilisation", "efficiency"]

MODES = ("strong", "weak")


def efficiency(times: np.ndarray, ranks: Sequence[int], mode: str) -> np.ndarray:
    """Parallel efficiency from times per cycle.

    Parameters
    ----------
    times : array, shape (n_ranks, ...)
        Time per cycle (s) for each rank count along axis 0 (any trailing dims, e.g. size).
        NaN marks a point that was not run.
    ranks : sequence of int, length n_ranks
        The rank counts, strictly increasing.
    mode : {"strong", "weak"}

    Returns
    -------
    ndarray, shape of ``times``
        Strong: ``p0 T(p0) / (p T(p))``; weak: ``T(p0) / T(p)``, where ``p0`` is the
        smallest rank count with a finite time (per trailing index). 1 is perfect scaling;
        NaN where ``times`` is not finite and positive.
    """
    if mode not in MODES:
        raise InputError(f"mode={mode!r}: choose one of {MODES}")
    t = np.asarray(times, dtype=np.float64)
    p = np.asarray(ranks, dtype=np.float64)
    if t.ndim < 1 or p.shape != (t.shape[0],):
        raise InputError(f"times of shape {t.shape} and {len(p)} rank counts: axis 0 of times "
                         f"must have one entry per rank count")
    if np.any(np.diff(p) <= 0):
        raise InputError(f"ranks={list(np.asarray(ranks))} must be strictly increasing")
    finite = np.isfinite(t) & (t > 0)
    first = np.argmax(finite, axis=0)                  # index of p0 per trailing entry
    base_t = np.take_along_axis(t, first[None], axis=0)[0]
    base_p = p[first]
    p_full = p.reshape((-1,) + (1,) * (t.ndim - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        eff = base_t / t if mode == "weak" else (base_p * base_t) / (p_full * t)
    return np.where(finite, eff, np.nan)


def cores_per_rank(threads_per_rank: int, prefetch_noise: bool, device_type: str = "cpu") -> int:
    """Cores one rank can keep busy: its torch threads, plus one for the noise prefetch.

    Parameters
    ----------
    threads_per_rank : int
        torch intra-op threads of each rank (>= 1).
    prefetch_noise : bool
        Whether the EnSF draws its next random block in a background thread
        (:class:`turbda_kit.filters.ensf.EnSFConfig` ``prefetch_noise``). The thread runs on
        CPU devices only.
    device_type : str
        ``"cpu"`` or ``"cuda"`` (the prefetch thread is not used on a GPU).

    Returns
    -------
    int
    """
    if int(threads_per_rank) < 1:
        raise InputError(f"threads_per_rank={threads_per_rank} must be >= 1")
    return int(threads_per_rank) + (1 if prefetch_noise and device_type == "cpu" else 0)


def cpu_utilisation(cpu_seconds: np.ndarray, wall_seconds: np.ndarray, ranks: np.ndarray,
                    cores_per_rank: int) -> np.ndarray:
    """Share of the cores given to a run that it used: ``CPU time / (wall x ranks x cores)``.

    Parameters
    ----------
    cpu_seconds : array
        Process CPU time (all threads), summed over the ranks of each run (s).
    wall_seconds : array
        Wall time of each run (s), broadcastable with ``cpu_seconds``.
    ranks : array
        Ranks of each run, broadcastable with ``cpu_seconds``.
    cores_per_rank : int
        Cores each rank was given (see :func:`cores_per_rank`).

    Returns
    -------
    ndarray
        1 when every given core was busy the whole time; below 1 when ranks waited or
        other jobs took the cores; above 1 when the ranks used more cores than counted.
        NaN where the wall time is not positive.
    """
    if int(cores_per_rank) < 1:
        raise InputError(f"cores_per_rank={cores_per_rank} must be >= 1")
    cpu = np.asarray(cpu_seconds, dtype=np.float64)
    given = (np.asarray(wall_seconds, dtype=np.float64) * np.asarray(ranks, dtype=np.float64)
             * float(cores_per_rank))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(given > 0, cpu / given, np.nan)
