"""Small, seeded inputs with the kit's real layouts, for tests, demos and benchmarks.

None of them is physics: :func:`synthetic_nature_run` is a random walk with the layout of
an SQG nature run, so that preprocessing, datasets and plots can be exercised in
milliseconds. Every random number comes from a generator seeded by the ``seed`` argument.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.preprocess import preprocess
from ..data.splits import SECONDS_PER_DAY, SPLITS, SplitDays, variable_names
from ..data.time_axis import time_attrs
from ..data.validation import check_positive_int
from ..errors import InputError
from ..io import write_dataset

__all__ = ["small_ensemble", "synthetic_nature_run", "synthetic_shard_root"]

LAYOUTS = ("kit", "climax")


def synthetic_nature_run(n_days: int = 4, steps_per_day: int = 2, grid: int = 8,
                         levels_m: Sequence[float] = (0.0, 10000.0), seed: int = 0,
                         dtype: str = "float32", start_day: int = 0):
    """A small random nature run with the SQG layout, for tests, demos and benchmarks.

    Parameters
    ----------
    n_days, steps_per_day : int
        Length and output frequency (``86400 / steps_per_day`` s between outputs).
    grid : int
        Grid points per side (``ny = nx = grid``), 20 km spacing.
    levels_m : sequence of float
        ``z`` levels (m).
    seed : int
        Seed of the :class:`numpy.random.Generator`.
    dtype : str
        Data type of ``theta``.
    start_day : int
        Day of the first output (time starts at ``start_day * 86400`` s after time zero).

    Returns
    -------
    xarray.Dataset
        ``theta (time, z, y, x)`` in K: a random walk around 290 K (not a solution of the
        SQG equations — only the layout is realistic), with the CF time encoding of
        :mod:`turbda_kit.data.time_axis`.
    """
    import xarray as xr

    for label, value in (("n_days", n_days), ("steps_per_day", steps_per_day), ("grid", grid)):
        check_positive_int(label, value)
    rng = np.random.default_rng(seed)
    n_time, n_lev = n_days * steps_per_day, len(levels_m)
    steps = rng.standard_normal((n_time, n_lev, grid, grid), dtype=np.float32)
    theta = (290.0 + np.cumsum(steps, axis=0, dtype=np.float32) * 0.5).astype(dtype)
    dt = SECONDS_PER_DAY / steps_per_day
    spacing = 20000.0
    return xr.Dataset(
        {"theta": (("time", "z", "y", "x"), theta,
                   {"units": "K", "long_name": "potential temperature"})},
        coords={"time": ("time", start_day * SECONDS_PER_DAY + dt * np.arange(n_time),
                         time_attrs("time since the run's time zero", axis=False)),
                "z": ("z", np.asarray(levels_m, dtype=np.float64),
                      {"units": "m", "long_name": "height"}),
                "y": ("y", spacing * np.arange(grid),
                      {"units": "m", "long_name": "northward distance"}),
                "x": ("x", spacing * np.arange(grid),
                      {"units": "m", "long_name": "eastward distance"})},
        attrs={"title": "synthetic nature run (random walk; layout only)", "seed": seed,
               "Conventions": "CF-1.8"})


def synthetic_shard_root(root: str | os.PathLike, *, layout: str = "kit",
                         split_days: Sequence[int] = (0, 4, 5, 7), steps_per_day: int = 4,
                         grid: int = 8, num_shards: int = 2, seed: int = 0,
                         fmt: str = "npz", splits: Sequence[str] = SPLITS,
                         dtype: str = "float32") -> Path:
    """A shard root from a :func:`synthetic_nature_run`, in the kit's or the seed's layout.

    Parameters
    ----------
    root : path-like
        Directory to create (must not hold other files).
    layout : {"kit", "climax"}
        ``"kit"``: made by :func:`turbda_kit.data.preprocess.preprocess` (manifest, exact
        statistics; the nature run is written beside the root as ``{root}_nature.nc``).
        ``"climax"``: laid out as the seed's published ``sqg_N64_12hrly_npy`` — written
        with :func:`numpy.savez`, no manifest, ``lat.npy`` / ``lon.npy`` holding the grid in
        metres, only the folders of ``splits``, and the statistics of the last day written
        only (what the seed's ``nc2np`` script leaves, see ``docs/preprocess.md``).
    split_days : (int, int, int, int)
        ``start_train_day, start_val_day, start_test_day, end_day``; the days of the
        nature run are ``0 .. end_day - 1``.
    steps_per_day, grid, num_shards, seed, dtype
        Output times per day, grid points per side, shards per day, seed and data type of
        the random walk.
    fmt : {"npz", "zarr"}
        Output format of the kit layout.
    splits : sequence of str
        The split folders the ClimaX layout holds (the published set has only
        ``("test",)``); the kit layout always writes all three.

    Returns
    -------
    Path
        ``root``.
    """
    if layout not in LAYOUTS:
        raise InputError(f"layout={layout!r} must be one of {', '.join(LAYOUTS)}")
    days = SplitDays(*(int(d) for d in split_days))
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise InputError(f"splits={list(splits)!r} must name some of {', '.join(SPLITS)}")
    root = Path(root)
    nature = synthetic_nature_run(days.end_day, steps_per_day, grid, seed=seed, dtype=dtype)
    if layout == "kit":
        if tuple(splits) != SPLITS:
            raise InputError("the kit layout always holds train, val and test: leave splits")
        source = root.with_name(f"{root.name}_nature.nc")
        write_dataset(nature, source)
        preprocess(source, root, days.start_train_day, days.start_val_day,
                   days.start_test_day, days.end_day, steps_per_file=steps_per_day,
                   num_shards=num_shards, fmt=fmt, workers=1)
        return root
    _climax_root(root, nature, days, steps_per_day, num_shards, splits)
    return root


def _climax_root(root: Path, nature: Any, days: SplitDays, steps_per_day: int,
                 num_shards: int, splits: Sequence[str]) -> None:
    """Write ``nature`` the way the seed's ``nc2np`` script lays it out."""
    check_positive_int("num_shards", num_shards)
    if steps_per_day % num_shards:
        raise InputError(f"num_shards={num_shards} must divide steps_per_day={steps_per_day}")
    per_shard = steps_per_day // num_shards
    theta = nature["theta"].values
    names = variable_names("sqg", nature["z"].values)
    last_day = None
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        for day in days.days(split):
            for shard in range(num_shards):
                first = day * steps_per_day + shard * per_shard
                piece = theta[first:first + per_shard]
                np.savez(root / split / f"{day}_{shard}.npz",
                         **{n: piece[:, j:j + 1] for j, n in enumerate(names)})
            last_day = theta[day * steps_per_day:(day + 1) * steps_per_day]
        span = theta[days.days(split).start * steps_per_day:days.days(split).stop * steps_per_day]
        np.savez(root / split / "climatology.npz",
                 **{n: span[:, j:j + 1].astype(np.float64).mean(axis=0)
                    for j, n in enumerate(names)})
    # The seed's statistics: those of one day (its loop keeps only the last day's).
    last = last_day.astype(np.float64)
    np.savez(root / "normalize_mean.npz",
             **{n: last[:, j:j + 1].mean(axis=(0, 2, 3)) for j, n in enumerate(names)})
    np.savez(root / "normalize_std.npz",
             **{n: last[:, j:j + 1].std(axis=(0, 2, 3)) for j, n in enumerate(names)})
    np.save(root / "lat.npy", nature["x"].values)  # as the seed writes them: metres
    np.save(root / "lon.npy", nature["y"].values)


def small_ensemble(n_members: int, state_shape: Sequence[int], *, mean: float = 0.0,
                   spread: float = 1.0, seed: int = 0, generator: Any = None,
                   dtype: Any = None, device: Any = "cpu"):
    """A seeded Gaussian ensemble ``mean + spread * N(0, 1)``, members leading.

    Parameters
    ----------
    n_members : int
        Ensemble size.
    state_shape : sequence of int
        Per-member shape, e.g. ``(2, 8, 8)`` for SQG or ``(40,)`` for Lorenz-96.
    mean, spread : float
        Location and scale of every value (the state's units).
    seed : int
        Seeds a fresh CPU :class:`torch.Generator` when ``generator`` is None.
    generator : torch.Generator or None
        Draw from this generator instead (it advances).
    dtype : torch.dtype or None
        Default float64.
    device : str or torch.device
        Where the tensor is returned; the draws are made on the CPU, so the values do not
        depend on the device.

    Returns
    -------
    torch.Tensor, shape (n_members, *state_shape)
    """
    import torch

    check_positive_int("n_members", n_members)
    shape = (n_members, *(check_positive_int("state_shape entry", n) for n in state_shape))
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    dtype = torch.float64 if dtype is None else dtype
    draws = torch.randn(shape, generator=generator, dtype=dtype)
    return (mean + spread * draws).to(device)
