"""Nature run → training shards with statistics, serial or MPI-parallel.

Two stages, as in the paper's pair of MPI scripts, run by :func:`preprocess`:

1. **Split** (only with ``via_chunks=True``) the nature run (netCDF or zarr,
   ``theta (time, z, y, x)`` in K) into chunks of ``steps_per_file`` consecutive output
   times, raw arrays ``{root}/chunks/chunk_NNNNN.npy`` with ``chunk_NNNNN.json`` beside
   each; each rank writes a contiguous range of chunks. By default this stage is skipped
   and each rank reads its days straight from the nature run, so the data moves once.
2. **Shard** whole days into the ClimaX ``nc2np`` layout::

       {root}/manifest.json               settings; re-runs with other settings are refused
       {root}/normalize_mean.npz          {var: (1,)} float64, training days only
       {root}/normalize_std.npz           {var: (1,)} float64 (population std)
       {root}/y.npy, {root}/x.npy         grid coordinates (m)
       {root}/{split}/{day}_{shard}.npz   {var: (steps, 1, ny, nx)} for split in train/val/test
       {root}/{split}/climatology.npz     {var: (1, ny, nx)} time mean over the split

   with variables ``{name}_{level}`` (``sqg_0`` at the surface, ``sqg_10000`` at the lid),
   or, with ``fmt="zarr"``, one chunked store ``{root}/data.zarr`` (one group per split,
   one zarr chunk per shard, statistics in the root attributes).

Every file is written atomically (:mod:`turbda_kit.io`) and verified before it is
skipped, so a killed run is resumed by running it again. Statistics are reduced over a
fixed tree of days (:func:`turbda_kit.parallel.mpi.tree_reduce`), so serial and parallel
runs give bit-identical shards *and* statistics. Within a rank, days flow through
:class:`~turbda_kit.data.day_pipeline.DayPipeline`: the next day is read while worker
threads write the shards (:func:`turbda_kit.data.npz.save_npz`) and reduce the day
(:mod:`turbda_kit.data.day_statistics`).

A "day" is ``floor(time / 86400 s)`` with ``time`` in seconds since the start of output.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InputError
from ..io import atomic_path, open_dataset, write_json
from ..parallel.mpi import abort_on_exception, block_range, get_comm, tree_reduce
from ..progress import progress_bar
from .day_pipeline import DayPipeline, StageClock
from .day_statistics import DayStatistics, field_moments  # noqa: F401 (re-exported)
from .npz import save_npz

SPLITS = ("train", "val", "test")
SECONDS_PER_DAY = 86400.0
LAYOUT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CHUNK_DIR = "chunks"
ZARR_STORE = "data.zarr"
FORMATS = ("npz", "zarr")
# Default threads per rank that write shards and compute statistics while the rank reads.
PIPELINE_WORKERS = 2

Hook = Callable[[str, int], None]


# --------------------------------------------------------------------------- days and splits


@dataclass(frozen=True)
class SplitDays:
    """Day boundaries of the train/val/test splits (ClimaX's ``start_*_year`` for days).

    ``train = [start_train_day, start_val_day)``, ``val = [start_val_day, start_test_day)``,
    ``test = [start_test_day, end_day)``; ``end_day`` is exclusive. Every split must hold
    at least one day.
    """

    start_train_day: int
    start_val_day: int
    start_test_day: int
    end_day: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"{name}={value!r} must be an integer day number")
            if value < 0:
                raise InputError(f"{name}={value} must be >= 0 (days count from the start "
                                 "of the nature run's output)")
        if not (self.start_train_day < self.start_val_day < self.start_test_day
                < self.end_day):
            raise InputError(
                "split days must be strictly increasing, start_train_day < start_val_day < "
                f"start_test_day < end_day (each split at least one day); got "
                f"{self.start_train_day}, {self.start_val_day}, {self.start_test_day}, "
                f"{self.end_day}")

    def days(self, split: str) -> range:
        """Days of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        bounds = {"train": (self.start_train_day, self.start_val_day),
                  "val": (self.start_val_day, self.start_test_day),
                  "test": (self.start_test_day, self.end_day)}
        if split not in bounds:
            raise InputError(f"split={split!r} must be one of {', '.join(SPLITS)}")
        return range(*bounds[split])

    @property
    def all_days(self) -> range:
        """``range(start_train_day, end_day)``."""
        return range(self.start_train_day, self.end_day)

    def split_of(self, day: int) -> str:
        """The split holding ``day``."""
        for split in SPLITS:
            if day in self.days(split):
                return split
        raise InputError(f"day={day} is outside [{self.start_train_day}, {self.end_day})")


def variable_names(name: str, levels: Sequence[float]) -> list[str]:
    """ClimaX-style names ``{name}_{level}`` with the level in whole metres (``sqg_0``)."""
    return [f"{name}_{int(round(float(level)))}" for level in levels]


def time_in_seconds(values: np.ndarray) -> np.ndarray:
    """A time coordinate as float64 seconds (numbers, timedelta64, or datetime64 from the first)."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.timedelta64):
        return values / np.timedelta64(1, "s")
    if np.issubdtype(values.dtype, np.datetime64):
        return (values - values[0]) / np.timedelta64(1, "s")
    return values.astype(np.float64)


# --------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class NatureRunInfo:
    """What :func:`inspect_nature_run` learnt about a nature run (no field data loaded).

    Attributes
    ----------
    path : str
        Resolved path of the netCDF file or zarr store.
    variable : str
        Source variable (``theta``).
    time_seconds : tuple of float
        Output times (s since start of output).
    dt_seconds : float
        Output interval (s); divides a day.
    steps_per_day : int
        ``86400 / dt_seconds``.
    levels : tuple of float
        Selected ``z`` levels (m).
    level_index : tuple of int
        Their positions along ``z``.
    n_levels_source : int
        Length of ``z`` in the source.
    y, x : tuple of float
        Grid coordinates (m).
    dtype : str
        Data type of the variable.
    fingerprint : str
        SHA-256 of the time axis, shape, dtype and first and last fields: identifies the data
        set independently of where the file lies.
    """

    path: str
    variable: str
    time_seconds: tuple[float, ...]
    dt_seconds: float
    steps_per_day: int
    levels: tuple[float, ...]
    level_index: tuple[int, ...]
    n_levels_source: int
    y: tuple[float, ...]
    x: tuple[float, ...]
    dtype: str
    fingerprint: str

    @property
    def n_times(self) -> int:
        """Number of output times."""
        return len(self.time_seconds)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return len(self.y), len(self.x)

    def day_start_index(self, day: int) -> int:
        """Index of the first output time of ``day``, which must be complete."""
        days = np.floor(np.asarray(self.time_seconds) / SECONDS_PER_DAY).astype(np.int64)
        first = int(np.searchsorted(days, day, side="left"))
        last = int(np.searchsorted(days, day, side="right"))
        if last - first != self.steps_per_day:
            t_end = self.time_seconds[-1] / SECONDS_PER_DAY
            raise InputError(
                f"day {day} holds {last - first} of {self.steps_per_day} output times: the "
                f"nature run covers days {int(days[0])} to {int(days[-1])} (last time "
                f"{t_end:.3f} days); choose split days with complete days only")
        return first


def _require_source(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"nature_path={str(p)!r} does not exist: give a nature run written "
                         "by turbda_kit.io.write_dataset (.nc file or .zarr store)")
    return p


def _open_source(path: str | os.PathLike):
    p = _require_source(path)
    try:
        return open_dataset(p)
    except InputError:
        raise
    except Exception as err:  # netCDF4/zarr raise many unrelated types
        raise InputError(f"nature_path={str(p)!r} is not a readable netCDF file or zarr "
                         f"store: {type(err).__name__}: {err}") from err


def _fingerprint(seconds: np.ndarray, shape: tuple[int, ...], dtype: str, first: np.ndarray,
                 last: np.ndarray) -> str:
    """SHA-256 of the time axis (s), shape, dtype and first and last fields ``(z, y, x)``."""
    digest = hashlib.sha256()
    digest.update(np.asarray(seconds, dtype=np.float64).tobytes())
    digest.update(repr((tuple(int(n) for n in shape), str(dtype))).encode())
    digest.update(np.ascontiguousarray(first).tobytes())
    digest.update(np.ascontiguousarray(last).tobytes())
    return digest.hexdigest()


_DIMS = ("time", "z", "y", "x")
# Attributes that make xarray's CF decoding change the stored values; a variable carrying
# any of them is read through xarray, never raw.
_DECODED_ATTRS = frozenset({"scale_factor", "add_offset", "missing_value", "_Unsigned",
                            "calendar"})
_SECOND_UNITS = frozenset({"s", "sec", "second", "seconds"})
_METRE_UNITS = frozenset({"", "m", "metre", "metres", "meter", "meters"})


@dataclass(frozen=True)
class _Layout:
    """What :func:`inspect_nature_run` reads: axes, shape, dtype, first and last fields."""

    seconds: np.ndarray
    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    shape: tuple[int, ...]
    dtype: str
    first: np.ndarray | None
    last: np.ndarray | None


def _stored_as_decoded(var: Any) -> bool:
    """Whether xarray's decoding leaves a netCDF4 variable's stored values unchanged."""
    if _DECODED_ATTRS.intersection(var.ncattrs()):
        return False
    kind = np.dtype(var.dtype).kind
    if "_FillValue" not in var.ncattrs():
        return kind in "fiu"
    # xarray masks the fill value to NaN: an identity only for a float NaN fill.
    fill = np.asarray(var.getncattr("_FillValue"))
    return kind == "f" and fill.dtype.kind == "f" and bool(np.all(np.isnan(fill)))


def _open_netcdf4(path) -> Any:
    """``netCDF4.Dataset(path)`` for reading, or None when netCDF4 cannot open it (netCDF-3,
    zarr, HDF5 without netCDF metadata, not netCDF at all): xarray decides those."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        import netCDF4
    except ImportError:  # pragma: no cover - netCDF4 is part of the stack
        return None
    try:
        return netCDF4.Dataset(str(p), "r")
    except Exception:
        return None


def _layout_netcdf4(path: Path, variable: str) -> _Layout | None:
    """The layout read with netCDF4 alone, when that equals what xarray decodes; else None.

    Covers netCDF-4 files as :func:`turbda_kit.io.write_dataset` writes them (time in
    plain seconds, ``(time, z, y, x)`` order, no packing). It spares importing xarray,
    pandas and dask, most of the start-up time of a rank; anything else returns None
    and goes through xarray.
    """
    ds = _open_netcdf4(path)
    if ds is None:
        return None
    try:
        var = ds.variables.get(variable)
        if (var is None or variable in ds.dimensions or tuple(var.dimensions) != _DIMS
                or np.dtype(var.dtype).kind != "f" or not _stored_as_decoded(var)):
            return None
        axes = {}
        for name in _DIMS:
            coord = ds.variables.get(name)
            units = str(getattr(coord, "units", "")).strip().lower()
            if (coord is None or tuple(coord.dimensions) != (name,)
                    or not _stored_as_decoded(coord)
                    or units not in (_SECOND_UNITS if name == "time" else _METRE_UNITS)):
                return None
            coord.set_auto_maskandscale(False)
            axes[name] = np.asarray(coord[:], dtype=np.float64)
            if np.isnan(axes[name]).any():
                return None
        var.set_auto_maskandscale(False)
        n_times = var.shape[0]
        return _Layout(axes["time"], axes["z"], axes["y"], axes["x"], tuple(var.shape),
                       str(np.dtype(var.dtype)),
                       np.asarray(var[0]) if n_times else None,
                       np.asarray(var[-1]) if n_times else None)
    except Exception:  # anything unexpected: let xarray read it (and word the error)
        return None
    finally:
        ds.close()


def _layout_xarray(path: str | os.PathLike, variable: str) -> _Layout:
    """The layout read through xarray (any netCDF file or zarr store)."""
    ds = _open_source(path)
    try:
        if variable not in ds.data_vars:
            raise InputError(f"variable={variable!r} is not in {path}; it holds "
                             f"{', '.join(map(str, ds.data_vars)) or 'no variables'}")
        da = ds[variable]
        if set(da.dims) != set(_DIMS):
            raise InputError(f"{variable} has dims {da.dims} in {path}; expected {_DIMS}")
        da = da.transpose(*_DIMS)
        n_times = da.shape[0]
        return _Layout(time_in_seconds(da["time"].values),
                       np.asarray(da["z"].values, dtype=np.float64),
                       np.asarray(da["y"].values, dtype=np.float64),
                       np.asarray(da["x"].values, dtype=np.float64),
                       tuple(da.shape), str(da.dtype),
                       da.isel(time=0).values if n_times else None,
                       da.isel(time=-1).values if n_times else None)
    finally:
        ds.close()


def inspect_nature_run(nature_path: str | os.PathLike, variable: str = "theta",
                       levels: Sequence[float] | None = None) -> NatureRunInfo:
    """Check a nature run's layout and describe it.

    Parameters
    ----------
    nature_path : path-like
        netCDF file or zarr store with ``variable`` of dims ``(time, z, y, x)``.
    variable : str
        Variable to preprocess (K).
    levels : sequence of float or None
        ``z`` levels (m) to keep; all when None.

    Returns
    -------
    NatureRunInfo

    Raises
    ------
    InputError
        Missing variable, dims or levels; fewer than two times; a non-uniform output
        interval or one that does not divide a day.

    Notes
    -----
    A netCDF-4 file as :func:`turbda_kit.io.write_dataset` writes it is read with
    netCDF4 alone; anything else through xarray. Both give the same description.
    """
    layout = _layout_netcdf4(_require_source(nature_path), variable)
    if layout is None:
        layout = _layout_xarray(nature_path, variable)
    seconds = layout.seconds
    if seconds.size < 2:
        raise InputError(f"{nature_path} holds {seconds.size} output time(s): need >= 2")
    steps = np.diff(seconds)
    dt = float(steps[0])
    if dt <= 0 or not np.allclose(steps, dt, rtol=1e-9, atol=1e-6):
        raise InputError(f"output times in {nature_path} are not uniformly spaced and "
                         f"increasing (intervals {np.unique(steps)[:5]} s)")
    per_day = SECONDS_PER_DAY / dt
    if abs(per_day - round(per_day)) > 1e-6:
        raise InputError(f"output interval {dt} s does not divide a day (86400 s): "
                         "preprocessing splits by whole days")
    z_values = layout.z
    if levels is None:
        index = list(range(z_values.size))
    else:
        index = []
        for level in levels:
            hits = np.flatnonzero(np.isclose(z_values, float(level), rtol=0, atol=1e-3))
            if hits.size == 0:
                raise InputError(f"level {level} m is not in {nature_path}; available z "
                                 f"levels (m): {z_values.tolist()}")
            index.append(int(hits[0]))
    if not index:
        raise InputError("levels=[] selects nothing: give at least one z level (m)")
    fingerprint = _fingerprint(seconds, layout.shape, layout.dtype, layout.first, layout.last)
    return NatureRunInfo(
        path=str(Path(nature_path).resolve()), variable=variable,
        time_seconds=tuple(float(t) for t in seconds), dt_seconds=dt,
        steps_per_day=int(round(per_day)),
        levels=tuple(float(z_values[i]) for i in index), level_index=tuple(index),
        n_levels_source=int(z_values.size),
        y=tuple(float(v) for v in layout.y), x=tuple(float(v) for v in layout.x),
        dtype=layout.dtype, fingerprint=fingerprint)


# --------------------------------------------------------------------------- reading the source

def _open_raw_netcdf(path: str | os.PathLike, info: NatureRunInfo) -> tuple[Any, Any] | None:
    """``(dataset, variable)`` of a netCDF-4 source that can be read raw, else None.

    Raw means the stored values with no masking, scaling or decoding pass (netCDF4 with
    automatic masking and scaling off; :class:`_SourceReader` then prefers h5py, which
    reads into a given buffer). That is only done when decoding could not change a value
    (a float variable without packing attributes, ``_FillValue`` absent or NaN, dims in
    source order) *and* the raw first and last fields reproduce the fingerprint
    :func:`inspect_nature_run` computed.
    """
    ds = _open_netcdf4(path)
    if ds is None:
        return None
    try:
        var = ds.variables.get(info.variable)
        shape = (info.n_times, info.n_levels_source, *info.grid_shape)
        if (var is not None and tuple(var.dimensions) == _DIMS and tuple(var.shape) == shape
                and np.dtype(var.dtype) == np.dtype(info.dtype)
                and np.dtype(info.dtype).kind == "f" and _stored_as_decoded(var)):
            var.set_auto_maskandscale(False)
            first, last = np.asarray(var[0]), np.asarray(var[-1])
            if _fingerprint(np.asarray(info.time_seconds), shape, info.dtype, first,
                            last) == info.fingerprint:
                return ds, var
    except Exception:  # anything unexpected: fall back to xarray, which decodes it all
        pass
    ds.close()
    return None


def _open_h5(path: str | os.PathLike, info: NatureRunInfo,
             reference: np.ndarray) -> tuple[Any, Any] | None:
    """``(file, dataset)`` of the variable opened with h5py, or None.

    h5py reads into a given buffer (``read_direct``), which netCDF4 cannot. It is used
    only when it reads ``reference`` (the first field as netCDF4 read it) identically, so
    a filter h5py lacks, or any other disagreement, leaves the reading to netCDF4.
    """
    try:
        import h5py

        handle = h5py.File(str(path), "r")
    except Exception:  # h5py missing or refusing the file: netCDF4 reads it
        return None
    try:
        dataset = handle[info.variable]
        shape = (info.n_times, info.n_levels_source, *info.grid_shape)
        if dataset.shape == shape and dataset.dtype == np.dtype(info.dtype):
            first = np.empty(shape[1:], dtype=info.dtype)
            dataset.read_direct(first, np.s_[0])
            if first.tobytes() == np.ascontiguousarray(reference).tobytes():
                return handle, dataset
    except Exception:  # a missing filter plugin, an odd layout, ...
        pass
    handle.close()
    return None


class _SourceReader:
    """Reads blocks of consecutive output times straight from the nature run.

    A netCDF-4 variable that needs no CF decoding (see :func:`_open_raw_netcdf`) is read
    raw, with h5py straight into the caller's buffer; anything else (zarr, packed or
    masked data) goes through xarray, with the decoding :func:`inspect_nature_run` saw.
    Either way a block is read with one call, contiguous on disk for a time-major
    variable.

    Parameters
    ----------
    path : path-like
        The nature run.
    info : NatureRunInfo
        From :func:`inspect_nature_run`.
    level_index : sequence of int or None
        Source levels to return (default ``info.level_index``).
    """

    def __init__(self, path: str | os.PathLike, info: NatureRunInfo,
                 level_index: Sequence[int] | None = None):
        self.info = info
        levels = list(info.level_index if level_index is None else level_index)
        # A run of consecutive levels is one strided hyperslab; anything else is read whole
        # and picked in numpy (fancy indexing in netCDF4 is slow).
        if levels == list(range(levels[0], levels[-1] + 1)):
            self._levels, self._take = slice(levels[0], levels[-1] + 1), None
        else:
            self._levels, self._take = slice(None), levels
        self.n_levels = len(levels)
        self._raw = _open_raw_netcdf(path, info)
        self._h5 = None
        if self._raw is not None:
            self._h5 = _open_h5(path, info, self._raw[1][0])
        self._ds = self._da = None
        if self._raw is None:
            self._ds = _open_source(path)
            self._da = self._ds[info.variable].transpose("time", "z", "y", "x")

    @property
    def raw(self) -> bool:
        """Whether blocks are read raw (else through xarray)."""
        return self._raw is not None

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Times ``[start, stop)``: ``(time, level, ny, nx)``, C-contiguous, source dtype.

        ``out``, when given, must have that shape and dtype and be C-contiguous; it is
        filled and returned (reusing one buffer spares the page faults of a fresh one).
        """
        shape = (stop - start, self.n_levels, *self.info.grid_shape)
        if out is None:
            out = np.empty(shape, dtype=self.info.dtype)
        elif out.shape != shape or out.dtype != np.dtype(self.info.dtype) \
                or not out.flags.c_contiguous:
            raise InputError(f"out has shape {out.shape}, dtype {out.dtype}: need a "
                             f"C-contiguous {shape} {self.info.dtype} array")
        if self._h5 is not None and self._take is None:
            self._h5[1].read_direct(out, np.s_[start:stop, self._levels])
            return out
        if self._raw is not None:
            data = self._raw[1][start:stop, self._levels]
        else:
            data = self._da.isel(time=slice(start, stop), z=self._levels).values
        np.copyto(out, data if self._take is None else np.asarray(data)[:, self._take])
        return out

    def close(self) -> None:
        """Close the source."""
        if self._h5 is not None:
            self._h5[0].close()
            self._h5 = None
        if self._raw is not None:
            self._raw[0].close()
            self._raw = None
        if self._ds is not None:
            self._ds.close()
            self._ds = self._da = None

    def __enter__(self) -> _SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- stage 1: split


def chunk_path(root: str | os.PathLike, index: int) -> Path:
    """Path of chunk ``index``'s data, ``{root}/chunks/chunk_NNNNN.npy``.

    The data is a raw ``.npy`` array ``(time, z, y, x)`` of the source dtype with every
    source level; its identity (source fingerprint, index, times, shape) is in
    :func:`chunk_meta_path`, written after the data.
    """
    return Path(root) / CHUNK_DIR / f"chunk_{index:05d}.npy"


def chunk_meta_path(root: str | os.PathLike, index: int) -> Path:
    """Path of chunk ``index``'s metadata, ``{root}/chunks/chunk_NNNNN.json``."""
    return Path(root) / CHUNK_DIR / f"chunk_{index:05d}.json"


def chunk_bounds(index: int, steps_per_file: int, n_times: int) -> tuple[int, int]:
    """Source time indices ``[start, stop)`` of chunk ``index``."""
    start = index * steps_per_file
    return start, min(start + steps_per_file, n_times)


def _chunk_meta(info: NatureRunInfo, index: int, steps_per_file: int) -> dict[str, Any]:
    start, stop = chunk_bounds(index, steps_per_file, info.n_times)
    meta = {"source_fingerprint": info.fingerprint, "chunk_index": index, "start": start,
            "stop": stop, "time_seconds": list(info.time_seconds[start:stop]),
            "shape": [stop - start, info.n_levels_source, *info.grid_shape],
            "dtype": info.dtype}
    return json.loads(json.dumps(meta))  # the form it takes on disk


def _npy_layout(handle: Any) -> tuple[int, tuple[int, ...], np.dtype]:
    """``(data offset in bytes, shape, dtype)`` of the C-order ``.npy`` file ``handle``."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f".npy format version {version} is not written by this module")
    if fortran:
        raise ValueError("Fortran-order .npy is not written by this module")
    return handle.tell(), tuple(shape), dtype


def chunk_is_valid(path: str | os.PathLike, info: NatureRunInfo, index: int,
                   steps_per_file: int) -> bool:
    """Whether chunk ``index`` at ``path`` (its ``.npy``) is complete and from this nature run.

    The metadata beside it must name this run's fingerprint, the chunk index, and the
    expected times, shape and dtype; the ``.npy`` header must agree and the file must hold
    exactly that many bytes (a truncated or foreign file is rewritten).
    """
    p = Path(path)
    meta_path = p.with_suffix(".json")
    if not (p.is_file() and meta_path.is_file()):
        return False
    try:
        expected = _chunk_meta(info, index, steps_per_file)
        if json.loads(meta_path.read_text()) != expected:
            return False
        with open(p, "rb") as handle:
            offset, shape, dtype = _npy_layout(handle)
        return (list(shape) == expected["shape"] and dtype == np.dtype(info.dtype)
                and p.stat().st_size == offset + int(np.prod(shape)) * dtype.itemsize)
    except Exception:  # unreadable or foreign file: rewrite it
        return False


def split_nature_run(nature_path: str | os.PathLike, root: str | os.PathLike,
                     steps_per_file: int, chunks: Sequence[int] | None = None,
                     comm: Any | None = None, info: NatureRunInfo | None = None,
                     hook: Hook | None = None) -> dict[str, int]:
    """Stage 1: write chunks of ``steps_per_file`` times, a contiguous range per rank.

    Parameters
    ----------
    nature_path : path-like
        The nature run.
    root : path-like
        Output root; chunks go to ``{root}/chunks/chunk_NNNNN.npy`` (raw ``(time, z, y,
        x)`` arrays, every source level) with ``chunk_NNNNN.json`` beside each.
    steps_per_file : int
        Output times per chunk (>= 1); the last chunk may be shorter.
    chunks : sequence of int or None
        Chunk indices to produce (default: all).
    comm : communicator or None
        See :func:`turbda_kit.parallel.mpi.get_comm`.
    info : NatureRunInfo or None
        From :func:`inspect_nature_run` (computed when None).
    hook : callable or None
        ``hook("chunk", index)`` after each chunk written (progress, fault injection).

    Returns
    -------
    dict
        ``{"written": n, "skipped": n}`` summed over ranks. Chunks already present and
        valid (:func:`chunk_is_valid`) are skipped.
    """
    comm = get_comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    _check_positive_int("steps_per_file", steps_per_file)
    if info is None:
        info = inspect_nature_run(nature_path)
    n_chunks = -(-info.n_times // steps_per_file)
    wanted = list(range(n_chunks)) if chunks is None else [int(c) for c in chunks]
    mine = [wanted[i] for i in block_range(len(wanted), rank, size)]
    written = skipped = 0
    bar = progress_bar(len(mine), desc=f"split (rank 0 of {size})", enabled=rank == 0)
    source = _SourceReader(nature_path, info, level_index=range(info.n_levels_source))
    try:
        for index in mine:
            path = chunk_path(root, index)
            if chunk_is_valid(path, info, index, steps_per_file):
                skipped += 1
            else:
                start, stop = chunk_bounds(index, steps_per_file, info.n_times)
                # Data first, metadata last: metadata marks a chunk finished.
                _save_npy(path, source.read(start, stop))
                write_json(chunk_meta_path(root, index),
                           _chunk_meta(info, index, steps_per_file))
                written += 1
                if hook is not None:
                    hook("chunk", index)
            bar.update(1)
    finally:
        bar.close()
        source.close()
    return {"written": int(comm.allreduce(written)), "skipped": int(comm.allreduce(skipped))}


class _ChunkReader:
    """Reads blocks of output times from stage-1 chunks, at the selected levels.

    Only the rows asked for are read (``readinto`` at the ``.npy`` data offset), straight
    into the result.
    """

    def __init__(self, root: Path, info: NatureRunInfo, steps_per_file: int):
        self.root, self.info, self.steps_per_file = root, info, steps_per_file

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Times ``[start, stop)`` at the selected levels: ``(time, level, ny, nx)``.

        ``out``: as for :meth:`_SourceReader.read`.
        """
        info = self.info
        every_level = list(info.level_index) == list(range(info.n_levels_source))
        shape = (stop - start, len(info.level_index), *info.grid_shape)
        if out is not None and (out.shape != shape or out.dtype != np.dtype(info.dtype)
                                or not out.flags.c_contiguous):
            raise InputError(f"out has shape {out.shape}, dtype {out.dtype}: need a "
                             f"C-contiguous {shape} {info.dtype} array")
        rows = out if out is not None and every_level else np.empty(
            (stop - start, info.n_levels_source, *info.grid_shape), dtype=info.dtype)
        row_bytes = rows[0].nbytes
        buffer = memoryview(rows).cast("B")
        filled, index = 0, start // self.steps_per_file
        while start < stop:
            c_start, c_stop = chunk_bounds(index, self.steps_per_file, info.n_times)
            take = min(stop, c_stop)
            path = chunk_path(self.root, index)
            with open(path, "rb", buffering=0) as handle:
                offset, _, _ = _npy_layout(handle)
                handle.seek(offset + (start - c_start) * row_bytes)
                end = filled + (take - start) * row_bytes
                while filled < end:
                    got = handle.readinto(buffer[filled:end])
                    if not got:
                        raise InputError(f"chunk {path} ended early: remove it and run again")
                    filled += got
            start, index = take, index + 1
        if every_level:
            return rows
        if out is None:
            return np.ascontiguousarray(rows[:, list(info.level_index)])
        np.take(rows, list(info.level_index), axis=1, out=out)
        return out

    def close(self) -> None:
        """Nothing held open."""


# --------------------------------------------------------------------------- outputs


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}={value!r} must be an integer >= 1")


def shard_path(root: str | os.PathLike, split: str, day: int, shard: int) -> Path:
    """``{root}/{split}/{day}_{shard}.npz``."""
    return Path(root) / split / f"{day}_{shard}.npz"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)  # a real file: numpy writes the buffer with one tofile


def _sha256(data: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(data)).hexdigest()


@dataclass
class _Plan:
    """Everything the output writers need to know (identical on every rank)."""

    root: Path
    info: NatureRunInfo
    split_days: SplitDays
    steps_per_file: int
    num_shards: int
    names: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_shard(self) -> int:
        return self.info.steps_per_day // self.num_shards


class _NpzOutput:
    """ClimaX ``nc2np`` layout: one ``.npz`` per (day, shard)."""

    def __init__(self, plan: _Plan):
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
        """Rank 0: statistics, climatologies and coordinates."""
        root, names = self.plan.root, self.plan.names
        train = stats["train"].scalar
        std = train.std()
        save_npz(root / "normalize_mean.npz",
                  {n: train.mean[j:j + 1].copy() for j, n in enumerate(names)})
        save_npz(root / "normalize_std.npz", {n: std[j:j + 1].copy() for j, n in enumerate(names)})
        for split in SPLITS:
            clim = stats[split].field.mean.astype(self.plan.info.dtype)
            save_npz(root / split / "climatology.npz",
                      {n: clim[j:j + 1].copy() for j, n in enumerate(names)})
        _save_npy(root / "y.npy", np.asarray(self.plan.info.y))
        _save_npy(root / "x.npy", np.asarray(self.plan.info.x))

    def expected_files(self) -> list[Path]:
        """Files a complete output holds (checked before declaring a re-run a no-op)."""
        root = self.plan.root
        files = [root / "normalize_mean.npz", root / "normalize_std.npz", root / "y.npy",
                 root / "x.npy"]
        for split in SPLITS:
            files.append(root / split / "climatology.npz")
            files += [shard_path(root, split, d, s) for d in self.plan.split_days.days(split)
                      for s in range(self.plan.num_shards)]
        return files


class _ZarrOutput:
    """One zarr store: a group per split, one chunk per shard, statistics in attrs.

    The store is built under a hidden temporary name and moved into place by rank 0 when
    complete; per-day marker files (with a checksum) make an interrupted build resumable.
    """

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.final = plan.root / ZARR_STORE
        self.partial = plan.root / f".{ZARR_STORE}.partial"
        self.markers = plan.root / f".{ZARR_STORE}.done"

    def _marker(self, split: str, day: int) -> Path:
        return self.markers / split / f"{day}.json"

    def _template(self, split: str):
        import dask.array as da
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
                            {"units": "K", "level_m": level})
                     for name, level in zip(plan.names, plan.info.levels)}
        coords = {"time": ("time", seconds, {"units": "s", "long_name": "time since start of output"}),
                  "day": ("time", np.floor(seconds / SECONDS_PER_DAY).astype(np.int64)),
                  "y": ("y", np.asarray(plan.info.y), {"units": "m"}),
                  "x": ("x", np.asarray(plan.info.x), {"units": "m"})}
        attrs = {"split": split, "first_day": days.start, "n_days": len(days),
                 "steps_per_day": plan.info.steps_per_day, "num_shards": plan.num_shards,
                 "steps_per_shard": plan.steps_per_shard}
        encoding = {name: {"chunks": chunks} for name in plan.names}
        return xr.Dataset(data_vars, coords, attrs), encoding

    def _template_ok(self) -> bool:
        import zarr

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
        import zarr

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
        import zarr

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
        import zarr

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
        import zarr

        names = self.plan.names
        for split in SPLITS:
            clim = stats[split].field.mean.astype(self.plan.info.dtype)
            # to_zarr(mode="a") replaces the group's attributes: carry them over.
            kept = dict(zarr.open_group(str(self.partial), mode="r")[split].attrs)
            ds = xr.Dataset({f"climatology_{n}": (("y", "x"), clim[j], {"units": "K"})
                             for j, n in enumerate(names)}, attrs=kept)
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


# --------------------------------------------------------------------------- manifest


def _settings(plan_info: NatureRunInfo, split_days: SplitDays, steps_per_file: int,
              num_shards: int, fmt: str, name: str, names: list[str]) -> dict[str, Any]:
    settings = {
        "layout_version": LAYOUT_VERSION,
        "format": fmt,
        **{k: int(v) for k, v in asdict(split_days).items()},
        "steps_per_file": int(steps_per_file),
        "num_shards": int(num_shards),
        "steps_per_day": plan_info.steps_per_day,
        "steps_per_shard": plan_info.steps_per_day // num_shards,
        "dt_seconds": plan_info.dt_seconds,
        "hours_per_step": plan_info.dt_seconds / 3600.0,
        "source_variable": plan_info.variable,
        "name": name,
        "variables": names,
        "levels_m": list(plan_info.levels),
        "grid": list(plan_info.grid_shape),
        "dtype": plan_info.dtype,
        "source_fingerprint": plan_info.fingerprint,
    }
    return json.loads(json.dumps(settings))  # the form it takes in manifest.json


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The ``manifest.json`` of a preprocessing root, or None when there is none."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not readable JSON ({err}): remove it or choose another "
                         "root") from err


def _check_root(root: Path, settings: dict[str, Any]) -> tuple[str | None, dict | None]:
    """(error message, existing manifest) for writing ``settings`` into ``root``."""
    manifest = read_manifest(root)
    if manifest is None:
        if root.exists() and any(root.iterdir()):
            return (f"root={str(root)!r} already holds files but no {MANIFEST_NAME}: it is not "
                    "a turbda preprocessing output; choose an empty or new directory"), None
        return None, None
    old = manifest.get("settings", {})
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if changed:
        detail = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now"
                           for k in changed[:6])
        return (f"root={str(root)!r} holds shards made with other settings ({detail}): "
                "refusing to mix data sets; choose another root or remove it"), manifest
    return None, manifest


# --------------------------------------------------------------------------- the entry point


@dataclass(frozen=True)
class PreprocessSummary:
    """What :func:`preprocess` did (counts summed over ranks).

    Attributes
    ----------
    root : Path
        Output root.
    fmt : str
        ``"npz"`` or ``"zarr"``.
    variables : list of str
        Output variable names, in channel order.
    chunks_written, chunks_skipped : int
        Stage 1 chunk files written / found complete.
    days_written, days_skipped : int
        Stage 2 days whose shards were written / found complete.
    already_complete : bool
        The root was complete and nothing was done.
    wall_seconds : float
        Wall time on rank 0.
    stage_seconds : dict of str to float
        Where rank 0's wall time went: ``mpi`` (start-up of MPI and waiting in
        collectives), ``inspect`` (layout checks and fingerprint), ``split`` (stage 1,
        with ``via_chunks``), ``verify`` (checking existing shards), ``read`` (the
        next day, while the previous one is processed), ``statistics`` and ``write``
        (shards): seconds summed over the threads that do them
        (:class:`~turbda_kit.data.day_pipeline.DayPipeline`), so the stages overlap and
        can add up to more than the wall time; ``finalize``
        (statistics files, manifest, chunk removal). The rest (manifest, the statistics
        tree's gather) is not itemised. Empty for an already complete root.
    """

    root: Path
    fmt: str
    variables: list[str]
    chunks_written: int
    chunks_skipped: int
    days_written: int
    days_skipped: int
    already_complete: bool
    wall_seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


def preprocess(nature_path: str | os.PathLike, root: str | os.PathLike, start_train_day: int,
               start_val_day: int, start_test_day: int, end_day: int, steps_per_file: int,
               num_shards: int, fmt: str = "npz", comm: Any | None = None, *,
               variable: str = "theta", name: str = "sqg",
               levels: Sequence[float] | None = None, via_chunks: bool = False,
               keep_chunks: bool = False, hook: Hook | None = None,
               workers: int = PIPELINE_WORKERS) -> PreprocessSummary:
    """Turn a nature run into training shards with statistics; serial or under MPI.

    Parameters
    ----------
    nature_path : path-like
        Nature run (``.nc`` or ``.zarr``) with ``variable (time, z, y, x)`` in K.
    root : path-like
        Output directory (new, empty, or a previous run's with the same settings).
    start_train_day, start_val_day, start_test_day, end_day : int
        Split boundaries in days since the start of output; ``end_day`` exclusive. All
        days used must be complete in the nature run.
    steps_per_file : int
        Output times per stage-1 chunk file (used with ``via_chunks``; recorded in the
        manifest either way).
    num_shards : int
        Shards per day; must divide the number of output times per day.
    fmt : {"npz", "zarr"}
        ClimaX ``.npz`` shards, or one zarr store ``data.zarr``.
    comm : communicator or None
        mpi4py communicator; default COMM_WORLD under a parallel launch, else serial.
    variable : str
        Source variable.
    name : str
        Output variable prefix: arrays are named ``{name}_{level in m}``.
    levels : sequence of float or None
        ``z`` levels (m) to keep (default all).
    via_chunks : bool
        Run stage 1 (:func:`split_nature_run`) and build the shards from its chunk files,
        the paper's two-stage pipeline. By default (False) each rank reads its own days
        straight from the nature run, which every rank opens anyway: the data then moves
        once instead of twice. Both give byte-identical shards and statistics, and a root
        started one way may be resumed the other.
    keep_chunks : bool
        Keep ``{root}/chunks`` after success (removed by default).
    workers : int
        Threads per rank that write the shards and compute the statistics while the
        rank reads the next day (:class:`~turbda_kit.data.day_pipeline.DayPipeline`).
        The output does not depend on it. 2 suits 2 cores per rank; give more where
        ranks have more cores (e.g. ``srun -c 7``).
    hook : callable or None
        ``hook(stage, index)`` after each chunk (``"chunk"``, only with ``via_chunks``)
        and day (``"day"``) this rank completes; for progress or fault-injection tests.

    Returns
    -------
    PreprocessSummary

    Raises
    ------
    InputError
        Bad layout or parameters, days outside the run, a root holding other data.

    Examples
    --------
    >>> preprocess("nature_sqg.nc", "shards", 0, 20, 25, 30,  # doctest: +SKIP
    ...            steps_per_file=24, num_shards=2)
    """
    start = time.monotonic()
    clock = StageClock()
    with clock("mpi"):
        comm = get_comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    if not isinstance(via_chunks, (bool, np.bool_)):
        raise InputError(f"via_chunks={via_chunks!r} must be True or False")
    if fmt not in FORMATS:
        raise InputError(f"fmt={fmt!r} must be one of {', '.join(FORMATS)}")
    _check_positive_int("steps_per_file", steps_per_file)
    _check_positive_int("num_shards", num_shards)
    _check_positive_int("workers", workers)
    if not isinstance(name, str) or not name or "_" in name:
        raise InputError(f"name={name!r} must be a non-empty string without '_' (arrays are "
                         "named {name}_{level})")
    split_days = SplitDays(start_train_day, start_val_day, start_test_day, end_day)
    with clock("inspect"):
        info = inspect_nature_run(nature_path, variable, levels)
    if info.steps_per_day % num_shards:
        raise InputError(f"num_shards={num_shards} must divide the {info.steps_per_day} output "
                         f"times per day (dt = {info.dt_seconds} s)")
    first_indices = {day: info.day_start_index(day) for day in split_days.all_days}
    names = variable_names(name, info.levels)
    root = Path(root).resolve()
    settings = _settings(info, split_days, steps_per_file, num_shards, fmt, name, names)
    plan = _Plan(root, info, split_days, steps_per_file, num_shards, names, settings)
    output = _NpzOutput(plan) if fmt == "npz" else _ZarrOutput(plan)

    # Rank 0 decides about the root; everyone raises the same error if it is refused.
    verdict: tuple[str | None, bool] = (None, False)
    if rank == 0:
        error, manifest = _check_root(root, settings)
        complete = (error is None and manifest is not None
                    and manifest.get("status") == "complete"
                    and all(p.exists() for p in output.expected_files()))
        if error is None and not complete:
            write_json(root / MANIFEST_NAME, _manifest(settings, info, split_days, "running"))
        verdict = (error, complete)
    with clock("mpi"):
        error, complete = comm.bcast(verdict, root=0)
    if error is not None:
        raise InputError(error)
    if complete:
        return PreprocessSummary(root, fmt, names, 0, 0, 0, 0, True,
                                 time.monotonic() - start)

    with abort_on_exception(comm):
        chunk_counts = {"written": 0, "skipped": 0}
        if via_chunks:
            # Stage 1: only the chunks that hold days we use.
            t_first = first_indices[split_days.start_train_day]
            t_stop = first_indices[split_days.end_day - 1] + info.steps_per_day
            needed = range(t_first // steps_per_file, -(-t_stop // steps_per_file))
            with clock("split"):
                chunk_counts = split_nature_run(nature_path, root, steps_per_file,
                                                list(needed), comm, info, hook)
        if rank == 0:
            output.prepare()
        with clock("mpi"):
            comm.barrier()  # every chunk and the output template exist before stage 2

        # Stage 2: a contiguous block of days per rank; statistics over a fixed tree of days.
        all_days = list(split_days.all_days)
        my_days = {all_days[i] for i in block_range(len(all_days), rank, size)}
        counts = {"written": 0, "skipped": 0}
        reader: _ChunkReader | _SourceReader | None = None

        def load(split: str, day: int, buffer: np.ndarray) -> tuple[np.ndarray, bool]:
            nonlocal reader
            with clock("verify"):
                data = output.read_verified(split, day)
            if data is not None:
                counts["skipped"] += 1
                return data, False
            if reader is None:  # opened on first use: a fully resumed rank never opens it
                reader = (_ChunkReader(root, info, steps_per_file) if via_chunks
                          else _SourceReader(nature_path, info))
            first = first_indices[day]
            counts["written"] += 1
            return reader.read(first, first + info.steps_per_day, out=buffer), True

        owned: dict[str, range] = {}
        for split in SPLITS:
            days = split_days.days(split)
            mine = [i for i, d in enumerate(days) if d in my_days]
            owned[split] = range(mine[0], mine[-1] + 1) if mine else range(0)
        # tree_reduce asks for its leaves in increasing order, split after split.
        order = [(split, split_days.days(split)[i]) for split in SPLITS for i in owned[split]]
        # Only the training split's spread is used (normalize_std); the others need means.
        pipeline = DayPipeline(order, load, output.write_tasks, lambda split: split == "train",
                               (info.steps_per_day, len(names), *info.grid_shape),
                               info.dtype, clock, workers=workers)
        bar = progress_bar(len(my_days), desc=f"shard (rank 0 of {size})", enabled=rank == 0)

        def leaf_for(split: str) -> Callable[[int], DayStatistics]:
            days = split_days.days(split)

            def leaf(i: int) -> DayStatistics:
                day_stats = pipeline.statistics(split, days[i])
                if hook is not None:
                    hook("day", days[i])
                bar.update(1)
                return day_stats

            return leaf

        stats: dict[str, DayStatistics] = {}
        try:
            for split in SPLITS:
                stats[split] = tree_reduce(len(split_days.days(split)), leaf_for(split),
                                           DayStatistics.combine, comm, owned=owned[split])
        finally:
            pipeline.close()
            bar.close()
            if reader is not None:
                reader.close()
        with clock("mpi"):
            days_written = int(comm.allreduce(counts["written"]))
            days_skipped = int(comm.allreduce(counts["skipped"]))

        with clock("finalize"):
            if rank == 0:
                output.finalize(stats)
                manifest = _manifest(settings, info, split_days, "complete")
                manifest["statistics"] = {
                    "normalize_mean": dict(zip(names, stats["train"].scalar.mean.tolist())),
                    "normalize_std": dict(zip(names, stats["train"].scalar.std().tolist())),
                    "train_values_per_variable": stats["train"].scalar.count,
                }
                write_json(root / MANIFEST_NAME, manifest)
                if not keep_chunks:
                    shutil.rmtree(root / CHUNK_DIR, ignore_errors=True)
        with clock("mpi"):
            comm.barrier()
    return PreprocessSummary(root, fmt, names, chunk_counts["written"], chunk_counts["skipped"],
                             days_written, days_skipped, False, time.monotonic() - start,
                             clock.seconds)


def _manifest(settings: dict[str, Any], info: NatureRunInfo, split_days: SplitDays,
              status: str) -> dict[str, Any]:
    # Light provenance on purpose: provenance.collect() imports torch, seconds per rank.
    import socket

    from ..provenance import git_revision, utc_now

    git = git_revision()
    return {
        "layout": "climax-npz" if settings["format"] == "npz" else "zarr",
        "status": status,
        "settings": settings,
        "source": {"path": info.path, "variable": info.variable, "n_times": info.n_times,
                   "levels_m": list(info.levels)},
        "splits": {s: {"first_day": split_days.days(s).start,
                       "end_day": split_days.days(s).stop,
                       "n_days": len(split_days.days(s))} for s in SPLITS},
        "turbda_kit_version": __version__,
        "git_revision": git["revision"],
        "git_dirty": git["dirty"],
        "host": socket.gethostname(),
        "updated_utc": utc_now(),
    }


# --------------------------------------------------------------------------- synthetic input


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
        Day of the first output (time starts at ``start_day * 86400`` s).

    Returns
    -------
    xarray.Dataset
        ``theta (time, z, y, x)`` in K: a random walk around 290 K (not a solution of the
        SQG equations — only the layout is realistic).
    """
    import xarray as xr

    for label, value in (("n_days", n_days), ("steps_per_day", steps_per_day), ("grid", grid)):
        _check_positive_int(label, value)
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
                         {"units": "s", "long_name": "time since start of output"}),
                "z": ("z", np.asarray(levels_m, dtype=np.float64), {"units": "m"}),
                "y": ("y", spacing * np.arange(grid), {"units": "m"}),
                "x": ("x", spacing * np.arange(grid), {"units": "m"})},
        attrs={"title": "synthetic nature run (random walk; layout only)", "seed": seed})
