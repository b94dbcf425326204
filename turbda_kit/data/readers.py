"""Reading a nature run: its layout (:func:`inspect_nature_run`) and its fields by time.

A nature run is a netCDF file or zarr store holding ``theta (time, z, y, x)`` in K with
coordinates ``time`` (seconds since time zero, :mod:`turbda_kit.data.time_axis`), ``z``,
``y``, ``x`` (m). :func:`inspect_nature_run` checks the layout and describes it in a
:class:`NatureRunInfo` without loading the fields; :class:`NatureRunReader` then reads
blocks of consecutive output times into a caller's buffer.

A netCDF-4 file as :func:`turbda_kit.io.write_dataset` writes it is inspected with
netCDF4 alone and read raw with h5py (one hyperslab per block). Anything else goes through
xarray with its usual decoding: zarr stores, packed integers, other dim orders, other time
encodings. Both ways describe and read a file identically (tested bit for bit), and the
raw way is used only after it has reproduced the fingerprint the inspection computed.

A file that cannot be read (truncated, garbled, not a nature run) raises
:class:`~turbda_kit.errors.InputError` naming it and saying how to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import open_dataset
from ..optional import require
from .splits import SECONDS_PER_DAY
from .time_axis import seconds_from_stored, time_in_seconds
from .validation import unreadable_file

__all__ = ["NATURE_RUN_DIMS", "NatureRunInfo", "NatureRunReader", "inspect_nature_run"]

NATURE_RUN_DIMS = ("time", "z", "y", "x")
_EXPECTED = ("a nature run: a netCDF-4 file or zarr store with theta (time, z, y, x) in K, "
             "as turbda_kit.data.nature.sqg_nature_run writes it")
_FIX = ("copy the file again, or run 01_generate_data (sqg_nature_run) for it again: an "
        "interrupted nature run resumes from its checkpoint")
# Attributes that make xarray's CF decoding change the stored values; a variable carrying
# any of them is read through xarray, never raw.
_DECODED_ATTRS = frozenset({"scale_factor", "add_offset", "missing_value", "_Unsigned",
                            "calendar"})
_METRE_UNITS = frozenset({"", "m", "metre", "metres", "meter", "meters"})


@contextlib.contextmanager
def _reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn a reader's own error (HDF5, zarr, OS) into an InputError naming ``path``."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:  # netCDF4, h5py, zarr and the OS raise many unrelated types
        raise unreadable_file(path, _EXPECTED, _FIX, err) from err


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
        Output times (s since the run's time zero, :mod:`turbda_kit.data.time_axis`).
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
        raise unreadable_file(p, _EXPECTED, _FIX, err) from err


def _fingerprint(seconds: np.ndarray, shape: tuple[int, ...], dtype: str, first: np.ndarray,
                 last: np.ndarray) -> str:
    """SHA-256 of the time axis (s), shape, dtype and first and last fields ``(z, y, x)``."""
    digest = hashlib.sha256()
    digest.update(np.asarray(seconds, dtype=np.float64).tobytes())
    digest.update(repr((tuple(int(n) for n in shape), str(dtype))).encode())
    digest.update(np.ascontiguousarray(first).tobytes())
    digest.update(np.ascontiguousarray(last).tobytes())
    return digest.hexdigest()


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


def _stored_as_decoded(var: Any, ignore: frozenset[str] = frozenset()) -> bool:
    """Whether xarray's decoding leaves a netCDF4 variable's stored values unchanged
    (attributes in ``ignore`` are handled by the caller)."""
    if _DECODED_ATTRS.difference(ignore).intersection(var.ncattrs()):
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
        netCDF4 = require("netCDF4", "reading a netCDF nature run")
    except ImportError:  # pragma: no cover - netCDF4 is part of the stack
        return None
    try:
        return netCDF4.Dataset(str(p), "r")
    except Exception:
        return None


def _axis_netcdf4(ds: Any, name: str) -> np.ndarray | None:
    """Coordinate ``name`` as float64 (time in seconds, others in m), when read raw it is
    what xarray decodes; else None."""
    coord = ds.variables.get(name)
    if coord is None or tuple(coord.dimensions) != (name,):
        return None
    units = str(getattr(coord, "units", "")).strip()
    if name != "time":
        if not _stored_as_decoded(coord) or units.lower() not in _METRE_UNITS:
            return None
        coord.set_auto_maskandscale(False)
        values = np.asarray(coord[:], dtype=np.float64)
    else:
        # Plain seconds (older nature runs) or "<unit> since <date>" in a Gregorian
        # calendar (xarray decodes those to dates; time_in_seconds counts from the date).
        if not _stored_as_decoded(coord, ignore=frozenset({"calendar"})):
            return None
        coord.set_auto_maskandscale(False)
        values = seconds_from_stored(np.asarray(coord[:]), units,
                                     getattr(coord, "calendar", None))
        if values is None:
            return None
    return None if np.isnan(values).any() else values


def _layout_netcdf4(path: Path, variable: str) -> _Layout | None:
    """The layout read with netCDF4 alone, when that equals what xarray decodes; else None.

    Covers netCDF-4 files as :func:`turbda_kit.io.write_dataset` writes them (time in
    seconds, plain or CF ``seconds since``; ``(time, z, y, x)`` order; no packing). It
    spares importing xarray, pandas and dask, most of the start-up time of a rank;
    anything else returns None and goes through xarray.
    """
    ds = _open_netcdf4(path)
    if ds is None:
        return None
    try:
        var = ds.variables.get(variable)
        if (var is None or variable in ds.dimensions
                or tuple(var.dimensions) != NATURE_RUN_DIMS
                or np.dtype(var.dtype).kind != "f" or not _stored_as_decoded(var)):
            return None
        axes = {name: _axis_netcdf4(ds, name) for name in NATURE_RUN_DIMS}
        if any(values is None for values in axes.values()):
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
            raise InputError(
                f"variable={variable!r} is not in {path}; it holds "
                f"{', '.join(map(str, ds.data_vars)) or 'no variables'}. Expected {_EXPECTED}: "
                "pass variable=<name> if the field has another name, or generate the nature "
                "run with 01_generate_data")
        da = ds[variable]
        if set(da.dims) != set(NATURE_RUN_DIMS):
            raise InputError(f"{variable} has dims {da.dims} in {path}; expected "
                             f"{NATURE_RUN_DIMS}")
        da = da.transpose(*NATURE_RUN_DIMS)
        n_times = da.shape[0]
        with _reading(path):
            return _Layout(time_in_seconds(da["time"].values, da["time"].encoding.get("units")),
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
        A missing or unreadable (truncated, damaged) file; a missing variable, dims or
        levels; fewer than two times; a non-uniform output interval or one that does not
        divide a day.

    Notes
    -----
    A netCDF-4 file as :func:`turbda_kit.io.write_dataset` writes it is read with
    netCDF4 alone; anything else through xarray. Both give the same description. Time is
    counted in seconds from the reference date of the ``time`` units (time zero of a
    nature run), or as plain seconds in files written before the CF encoding.
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


# --------------------------------------------------------------------------- reading fields

def _open_raw_netcdf(path: str | os.PathLike, info: NatureRunInfo) -> tuple[Any, Any] | None:
    """``(dataset, variable)`` of a netCDF-4 source that can be read raw, else None.

    Raw means the stored values with no masking, scaling or decoding pass (netCDF4 with
    automatic masking and scaling off; :class:`NatureRunReader` then prefers h5py, which
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
        if (var is not None and tuple(var.dimensions) == NATURE_RUN_DIMS
                and tuple(var.shape) == shape and np.dtype(var.dtype) == np.dtype(info.dtype)
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
        h5py = require("h5py", "reading a netCDF-4 nature run")
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


class NatureRunReader:
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
        self.info, self.path = info, Path(path)
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
            self._da = self._ds[info.variable].transpose(*NATURE_RUN_DIMS)

    @property
    def raw(self) -> bool:
        """Whether blocks are read raw (else through xarray)."""
        return self._raw is not None

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Times ``[start, stop)``: ``(time, level, ny, nx)``, C-contiguous, source dtype.

        ``out``, when given, must have that shape and dtype and be C-contiguous; it is
        filled and returned (reusing one buffer spares the page faults of a fresh one).

        Raises
        ------
        InputError
            ``out`` of the wrong shape or dtype, or a file that breaks off or is damaged
            where these times are stored.
        """
        shape = (stop - start, self.n_levels, *self.info.grid_shape)
        if out is None:
            out = np.empty(shape, dtype=self.info.dtype)
        elif out.shape != shape or out.dtype != np.dtype(self.info.dtype) \
                or not out.flags.c_contiguous:
            raise InputError(f"out has shape {out.shape}, dtype {out.dtype}: need a "
                             f"C-contiguous {shape} {self.info.dtype} array")
        with _reading(self.path):
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

    def __enter__(self) -> NatureRunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

