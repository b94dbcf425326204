"""Two filters on one truth: the mean difference of a per-cycle score and its uncertainty.

Two cycling runs on the same truth and observations (e.g. two filters of one
``tools/da_table.py`` preset, or two stages run on the same preset and seed) differ
cycle by cycle. Their mean scores' difference is what a table states; whether it is more
than the runs' cycle-to-cycle variability says is what a reader needs. Successive cycles
are correlated (errors persist over days), so the interval is a moving-block bootstrap of
the per-cycle differences (Künsch 1989): blocks of ``block`` consecutive cycles drawn with
replacement, from an explicit ``numpy`` generator.

:func:`paired_difference` is the maths on two arrays; :func:`compare_runs` reads two
cycling datasets (``cycling_<filter>.nc``), checks that they scored the same truth (their
truth-only scores must be equal) and calls it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

__all__ = ["PairedDifference", "compare_runs", "paired_difference"]

#: Scores of a cycling dataset that depend on the truth (and observations) only.
TRUTH_ONLY_SCORES = ("rmse_climatology", "rmse_persistence_lead", "rmse_obs_only")


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over the cycles, with a block-bootstrap interval.

    Attributes
    ----------
    mean_a, mean_b, mean_difference : float
        Means over the compared cycles (the score's units, e.g. K).
    low, high : float
        The central ``level`` bootstrap interval of the mean difference.
    level : float
        E.g. 0.95.
    fraction_a_lower : float
        Share of cycles where ``a < b``.
    n_cycles, block, n_boot, seed : int
        What was compared and how.
    """

    mean_a: float
    mean_b: float
    mean_difference: float
    low: float
    high: float
    level: float
    fraction_a_lower: float
    n_cycles: int
    block: int
    n_boot: int
    seed: int

    def as_dict(self) -> dict:
        """Plain dict (for JSON)."""
        return asdict(self)


def paired_difference(a: np.ndarray, b: np.ndarray, *, block: int = 20, n_boot: int = 4000,
                      level: float = 0.95, seed: int = 0) -> PairedDifference:
    """Mean of ``a - b`` with a moving-block bootstrap interval.

    Parameters
    ----------
    a, b : array, shape (n_cycles,)
        Per-cycle scores of two runs on the same truth, cycle by cycle.
    block : int
        Block length in cycles (longer than the errors' correlation time; 20 cycles is 10
        days of 12-h cycles). ``1 <= block <= n_cycles``.
    n_boot : int
        Bootstrap resamples (>= 100).
    level : float
        Interval coverage, in (0, 1).
    seed : int
        Seed of the ``numpy`` generator that draws the blocks.

    Returns
    -------
    PairedDifference

    Raises
    ------
    InputError
        Different lengths, non-finite values, or settings out of range.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise InputError(f"a and b must be 1-D per-cycle scores of one length >= 2; got "
                         f"shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("a and b must be finite (a run that diverged has no mean score)")
    n = a.size
    if not (isinstance(block, int) and 1 <= block <= n):
        raise InputError(f"block must be an integer in [1, {n}]; got {block!r}")
    if not (isinstance(n_boot, int) and n_boot >= 100):
        raise InputError(f"n_boot must be an integer >= 100; got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be in (0, 1); got {level!r}")
    difference = a - b
    n_blocks = -(-n // block)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(n_boot, n_blocks))
    # every resample: n_blocks blocks of consecutive cycles, cut to n cycles
    index = (starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n]
    means = difference[index].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return PairedDifference(
        mean_a=float(a.mean()), mean_b=float(b.mean()), mean_difference=float(difference.mean()),
        low=float(low), high=float(high), level=level,
        fraction_a_lower=float((difference < 0).mean()), n_cycles=n, block=block,
        n_boot=n_boot, seed=seed)


def compare_runs(path_a: str | os.PathLike, path_b: str | os.PathLike, *,
                 score: str = "rmse_analysis", first_cycle: int = 0, block: int = 20,
                 n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> PairedDifference:
    """:func:`paired_difference` of two cycling datasets' per-cycle ``score``.

    Parameters
    ----------
    path_a, path_b : path
        Cycling outputs (``cycling_<filter>.nc``) of two runs.
    score : str
        A per-cycle variable of both (``rmse_analysis``, ``spread_analysis``, ...).
    first_cycle : int
        First cycle compared (leave the spin-up out: ``spinup_cycles``).
    block, n_boot, level, seed
        As for :func:`paired_difference`.

    Raises
    ------
    InputError
        A missing score, different lengths, or different truth-only scores (the runs did
        not score the same truth).
    """
    from ..io import open_dataset

    a, b = open_dataset(path_a), open_dataset(path_b)
    for name, ds, path in (("a", a, path_a), ("b", b, path_b)):
        if score not in ds:
            raise InputError(f"{path} ({name}) has no {score!r}; it has "
                             f"{', '.join(sorted(map(str, ds.data_vars)))}")
    for name in TRUTH_ONLY_SCORES:
        if name in a and name in b:
            x, y = a[name].values, b[name].values
            if x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
                raise InputError(f"{path_a} and {path_b} differ in {name}: they did not score "
                                 "the same truth, so a paired comparison means nothing")
    x, y = a[score].values, b[score].values
    if x.shape != y.shape:
        raise InputError(f"{score} has {x.shape} values in {path_a} and {y.shape} in {path_b}")
    if not 0 <= first_cycle < x.shape[0] - 1:
        raise InputError(f"first_cycle={first_cycle!r}: must leave at least 2 of the "
                         f"{x.shape[0]} cycles")
    return paired_difference(x[first_cycle:], y[first_cycle:], block=block, n_boot=n_boot,
                             level=level, seed=seed)
