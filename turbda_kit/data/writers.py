"""Stage 2 of preprocessing: where and how the shards of each day are written.

Two layouts share one protocol, :class:`ShardWriter`:

* :class:`NpzShardWriter` — the ClimaX ``nc2np`` layout, one ``.npz`` per (day, shard)::

      {root}/normalize_mean.npz          {var: (1,)} float64, training days only
      {root}/normalize_std.npz           {var: (1,)} float64 (population std)
      {root}/y.npy, {root}/x.npy         grid coordinates (m)
      {root}/lat.npy, {root}/lon.npy     zeros (ny,), (nx,): what the seed's loader reads
      {root}/{split}/{day}_{shard}.npz   {var: (steps, 1, ny, nx)} for split in train/val/test
      {root}/{split}/climatology.npz     {var: (1, ny, nx)} time mean over the split

* :class:`ZarrShardWriter` — one store ``{root}/data.zarr``: a group per split, one zarr
  chunk per shard, the statistics in the root attributes.

Every writer can tell whether a day is already on disk and intact
(``read_verified``), so a killed run resumes by running it again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..cf import CONVENTIONS
from ..io import write_json
from ..optional import require
from .day_statistics import DayStatistics
from .npz import save_npy, save_npz
from .readers import NatureRunInfo
from .splits import SECONDS_PER_DAY, SPLITS, SplitDays
from .time_axis import time_attrs

__all__ = ["FORMATS", "NpzShardWriter", "ShardPlan", "ShardWriter", "ZARR_STORE",
           "ZarrShardWriter", "shard_path", "shard_writer"]

FORMATS = ("npz", "zarr")
ZARR_STORE = "data.zarr"


def _field_long_name(variable: str, level_m: float) -> str:
    """What a stored field is: the nature run's ``variable`` at one ``z`` level."""
    what = "potential temperature (anomaly)" if variable == "theta" else variable
    return f"{what} of the nature run at z = {level_m:g} m"


def shard_path(root: str | os.PathLike, split: str, day: int, shard: int) -> Path:
    """``{root}/{split}/{day}_{shard}.npz``."""
    return Path(root) / split / f"{day}_{shard}.npz"


def _sha256(data: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(data)).hexdigest()


@dataclass
class ShardPlan:
    """Everything a shard writer needs to know (identical on every rank).

    Attributes
    ----------
    root : Path
        Output root.
    info : NatureRunInfo
        The nature run.
    split_days : SplitDays
    steps_per_file : int
        Output times per stage-1 chunk (recorded only).
    num_shards : int
        Shards per day.
    names : list of str
        Output variables, in channel order.
    settings : dict
        The manifest's settings (the zarr store keeps a copy to recognise itself).
    """

    root: Path
    info: NatureRunInfo
    split_days: SplitDays
    steps_per_file: int
    num_shards: int
    names: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_shard(self) -> int:
        """Output times per shard."""
        return self.info.steps_per_day // self.num_shards


class ShardWriter(Protocol):
    """How one output layout is written, verified and finished."""

    def prepare(self) -> None:
        """Rank 0, before any day: create what the ranks write into."""

    def read_verified(self, split: str, day: int) -> np.ndarray | None:
        """The day's data ``(steps_per_day, vars, ny, nx)`` when it is on disk and intact."""

    def write_tasks(self, split: str, day: int, data: np.ndarray) -> list[Callable[[], None]]:
        """Independent callables that together write the day's shards (for a thread pool)."""

    def finalize(self, stats: dict[str, DayStatistics]) -> None:
        """Rank 0, after every day: statistics, climatologies, coordinates."""

    def expected_files(self) -> list[Path]:
        """What a complete output holds (checked before a rerun is declared a no-op)."""


def shard_writer(plan: ShardPlan, fmt: str) -> ShardWriter:
    """The writer of ``fmt`` (``"npz"`` or ``"zarr"``) for ``plan``."""
    return NpzShardWriter(plan) if fmt == "npz" else ZarrShardWriter(plan)


class NpzShardWriter:
    """ClimaX ``nc2np`` layout: one ``.npz`` per (day, shard)."""

    def __init__(self, plan: ShardPlan):
        self.plan = plan

    def prepare(self) -> None:
        """Nothing to create ahead of time (directories appear with their files)."""

    def _shape(self) -> tuple[int, ...]:
        return (self.plan.steps_per_shard, 1, *self.plan.info.grid_shape)

    def read_verified(self, split: str, day: int) -> np.ndarray | None:
        """The day's data from its shards when all exist and look right, else None."""
        parts = []
        for shard in range(self.plan.num_shards):
            path = shard_path(self.plan.root, split, day, shard)
            if not path.is_file():
                return None
            try:
                with np.load(path) as npz:
                    if sorted(npz.files) != sorted(self.plan.names):
                        return None
                    arrays = [npz[name] for name in self.plan.names]
            except Exception:  # truncated or foreign file: rewrite it
                return None
            if any(a.shape != self._shape() or str(a.dtype) != self.plan.info.dtype
                   for a in arrays):
                return None
            parts.append(np.concatenate(arrays, axis=1))
        return np.concatenate(parts, axis=0)

    def write_tasks(self, split: str, day: int, data: np.ndarray) -> list[Callable[[], None]]:
        """Callables that write the day's shards (``data (steps_per_day, vars, ny, nx)``),
        one per shard, independent of each other (for a thread pool)."""
        sps = self.plan.steps_per_shard

        def task(shard: int) -> Callable[[], None]:
            piece = data[shard * sps:(shard + 1) * sps]
            return functools.partial(
                save_npz, shard_path(self.plan.root, split, day, shard),
                {name: piece[:, j:j + 1] for j, name in enumerate(self.plan.names)})

        return [task(shard) for shard in range(self.plan.num_shards)]

    def finalize(self, stats: dict[str, DayStatistics]) -> None:
        """Rank 0, every shard written: statistics, climatologies and coordinates; the
        temporary files of a run killed mid-write are removed."""
        root, names = self.plan.root, self.plan.names
        for folder in (root, *(root / split for split in SPLITS)):
            for stale in folder.glob(".*.tmp-*"):  # turbda_kit.io.atomic_path's names
                stale.unlink(missing_ok=True)
        train = stats["train"].scalar
        std = train.std()
        save_npz(root / "normalize_mean.npz",
                  {n: train.mean[j:j + 1].copy() for j, n in enumerate(names)})
        save_npz(root / "normalize_std.npz", {n: std[j:j + 1].copy() for j, n in enumerate(names)})
        for split in SPLITS:
            clim = stats[split].field.mean.astype(self.plan.info.dtype)
            save_npz(root / split / "climatology.npz",
                      {n: clim[j:j + 1].copy() for j, n in enumerate(names)})
        save_npy(root / "y.npy", np.asarray(self.plan.info.y))
        save_npy(root / "x.npy", np.asarray(self.plan.info.x))
        # The seed's loader (ClimaX's) reads lat.npy / lon.npy and weights its validation
        # metrics by cos(lat in degrees). On the doubly periodic f-plane every row weighs
        # the same: latitude 0 makes those weights 1 (the seed's own files hold metres).
        ny, nx = self.plan.info.grid_shape
        save_npy(root / "lat.npy", np.zeros(ny))
        save_npy(root / "lon.npy", np.zeros(nx))

    def expected_files(self) -> list[Path]:
        """Files a complete output holds (checked before declaring a re-run a no-op)."""
        root = self.plan.root
        files = [root / "normalize_mean.npz", root / "normalize_std.npz", root / "y.npy",
                 root / "x.npy", root / "lat.npy", root / "lon.npy"]
        for split in SPLITS:
            files.append(root / split / "climatology.npz")
            files += [shard_path(root, split, d, s) for d in self.plan.split_days.days(split)
                      for s in range(self.plan.num_shards)]
        return files


class ZarrShardWriter:
    """One zarr store: a group per split, one chunk per shard, statistics in attrs.

    The store is built under a hidden temporary name and moved into place by rank 0 when
    complete; per-day marker files (with a checksum) make an interrupted build resumable.
    """

    def __init__(self, plan: ShardPlan):
        self.plan = plan
        self.final = plan.root / ZARR_STORE
        self.partial = plan.root / f".{ZARR_STORE}.partial"
        self.markers = plan.root / f".{ZARR_STORE}.done"

    def _marker(self, split: str, day: int) -> Path:
        return self.markers / split / f"{day}.json"

    def _template(self, split: str):
        da = require("dask.array", "writing zarr shards")
        import xarray as xr

        plan = self.plan
        days = plan.split_days.days(split)
        n_time = len(days) * plan.info.steps_per_day
        ny, nx = plan.info.grid_shape
        chunks = (plan.steps_per_shard, ny, nx)
        first = plan.info.day_start_index(days.start)
        seconds = np.asarray(plan.info.time_seconds[first:first + n_time])
        data_vars = {name: (("time", "y", "x"),
                            da.zeros((n_time, ny, nx), dtype=plan.info.dtype, chunks=chunks),
                            {"units": "K", "level_m": level,
                             "long_name": _field_long_name(plan.info.variable, level)})
                     for name, level in zip(plan.names, plan.info.levels)}
        coords = {"time": ("time", seconds,
                           time_attrs("time since the nature run's time zero", axis=False)),
                  "day": ("time", np.floor(seconds / SECONDS_PER_DAY).astype(np.int64),
                          {"units": "1", "long_name": "day of the nature run (whole days "
                           "since its time zero)"}),
                  "y": ("y", np.asarray(plan.info.y), {
                      "units": "m", "long_name": "northward distance",
                      "standard_name": "projection_y_coordinate", "axis": "Y"}),
                  "x": ("x", np.asarray(plan.info.x), {
                      "units": "m", "long_name": "eastward distance",
                      "standard_name": "projection_x_coordinate", "axis": "X"})}
        attrs = {"title": f"turbda_kit training shards, {split} split", "Conventions": CONVENTIONS,
                 "split": split, "first_day": days.start, "n_days": len(days),
                 "steps_per_day": plan.info.steps_per_day, "num_shards": plan.num_shards,
                 "steps_per_shard": plan.steps_per_shard}
        encoding = {name: {"chunks": chunks} for name in plan.names}
        return xr.Dataset(data_vars, coords, attrs), encoding

    def _template_ok(self) -> bool:
        zarr = require("zarr", "writing zarr shards")
        try:
            group = zarr.open_group(str(self.partial), mode="r")
            for split in SPLITS:
                n_time = len(self.plan.split_days.days(split)) * self.plan.info.steps_per_day
                for name in self.plan.names:
                    if group[split][name].shape != (n_time, *self.plan.info.grid_shape):
                        return False
            return group.attrs.get("turbda_settings") == json.loads(
                json.dumps(self.plan.settings))
        except Exception:
            return False

    def prepare(self) -> None:
        """Rank 0: create (or reuse) the partial store's arrays; other ranks wait after."""
        zarr = require("zarr", "writing zarr shards")
        if self.partial.exists() and self._template_ok():
            return
        shutil.rmtree(self.partial, ignore_errors=True)
        shutil.rmtree(self.markers, ignore_errors=True)
        for split in SPLITS:
            template, encoding = self._template(split)
            template.to_zarr(str(self.partial), group=split, mode="w", compute=False,
                             encoding=encoding, consolidated=False)
        group = zarr.open_group(str(self.partial), mode="a")
        group.attrs["turbda_settings"] = json.loads(json.dumps(self.plan.settings))

    def _region(self, split: str, day: int) -> slice:
        offset = (day - self.plan.split_days.days(split).start) * self.plan.info.steps_per_day
        return slice(offset, offset + self.plan.info.steps_per_day)

    def read_verified(self, split: str, day: int) -> np.ndarray | None:
        """The day's data when its marker exists and the checksum of the stored data agrees."""
        marker = self._marker(split, day)
        if not marker.is_file():
            return None
        zarr = require("zarr", "writing zarr shards")
        try:
            expected = json.loads(marker.read_text())["sha256"]
            group = zarr.open_group(str(self.partial), mode="r")[split]
            region = self._region(split, day)
            data = np.stack([np.asarray(group[name][region]) for name in self.plan.names],
                            axis=1)
        except Exception:
            return None
        return data if _sha256(data) == expected else None

    def write(self, split: str, day: int, data: np.ndarray) -> None:
        """Write the day's region (whole zarr chunks), then its marker."""
        zarr = require("zarr", "writing zarr shards")
        group = zarr.open_group(str(self.partial), mode="r+")[split]
        region = self._region(split, day)
        for j, name in enumerate(self.plan.names):
            group[name][region] = data[:, j]
        write_json(self._marker(split, day), {"sha256": _sha256(data)})

    def write_tasks(self, split: str, day: int, data: np.ndarray) -> list[Callable[[], None]]:
        """The day's write as one callable (its marker must follow all of its chunks)."""
        return [functools.partial(self.write, split, day, data)]

    def finalize(self, stats: dict[str, DayStatistics]) -> None:
        """Rank 0: climatologies, statistics in attrs, then move the store into place."""
        import xarray as xr
        zarr = require("zarr", "writing zarr shards")
        names, info = self.plan.names, self.plan.info
        for split in SPLITS:
            clim = stats[split].field.mean.astype(info.dtype)
            # to_zarr(mode="a") replaces the group's attributes: carry them over.
            kept = dict(zarr.open_group(str(self.partial), mode="r")[split].attrs)
            ds = xr.Dataset({f"climatology_{n}": (("y", "x"), clim[j], {
                "units": "K", "long_name": f"time mean over the {split} split of the "
                f"{_field_long_name(info.variable, level)}"})
                for j, (n, level) in enumerate(zip(names, info.levels))}, attrs=kept)
            ds.to_zarr(str(self.partial), group=split, mode="a", consolidated=False)
        train = stats["train"].scalar
        std = train.std()
        group = zarr.open_group(str(self.partial), mode="a")
        group.attrs.update({
            "variables": names,
            "normalize_mean": {n: [float(train.mean[j])] for j, n in enumerate(names)},
            "normalize_std": {n: [float(std[j])] for j, n in enumerate(names)},
            "hours_per_step": self.plan.info.dt_seconds / 3600.0,
        })
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)
        shutil.rmtree(self.markers, ignore_errors=True)

    def expected_files(self) -> list[Path]:
        """The finished store."""
        return [self.final]
