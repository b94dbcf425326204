"""Ensemble members of a cycling run, streamed to disk one cycle at a time.

With :class:`MemberOutput` the cycling engine writes the forecast and/or analysis
ensemble of every cycle, and the truth it was scored against, to a netCDF-4 file or a
zarr store, so that users can compute their own scores (CRPS, rank histograms, spread
diagnostics with xskillscore or properscoring) from the members:

=====================  ==========================================  ======================
variable               dims                                        units
=====================  ==========================================  ======================
``forecast_ensemble``  ``(cycle, member, *state_dims)``            the state's (K)
``analysis_ensemble``  ``(cycle, member, *state_dims)``            the state's (K)
``truth``              ``(cycle, *state_dims)``                    the state's (K)
=====================  ==========================================  ======================

with the coordinates and attributes of the run's Dataset (:mod:`turbda_kit.experiments.cf`:
``time`` decodable, ``x``/``y``/``z`` in m). Each cycle is one chunk
``(1, member, *state_shape)``, written as soon as the cycle is analysed, so memory holds
one ensemble whatever the run's length.

Reliability: the store is built under a hidden *partial* name beside its final path
(``.<name>.partial.nc``) and moved into place only when the run finishes, so a file at
the final path is always complete (``attrs["complete"] == "true"``). A run resumed from
its checkpoint reopens the partial store and goes on writing (cycles after the
checkpoint are written again, identically); a partial store of other settings, or a
missing one, is refused with an :class:`~turbda_kit.errors.InputError` saying what to do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..io import atomic_path
from ..optional import require
from . import cf

__all__ = [
    "MEMBER_FORMATS",
    "MEMBER_KINDS",
    "SAVE_MEMBERS_CHOICES",
    "MemberOutput",
    "MemberWriter",
    "members_file_name",
]

MEMBER_KINDS = ("forecast", "analysis")
"""Which ensembles can be saved: ``forecast_ensemble`` and ``analysis_ensemble``."""
SAVE_MEMBERS_CHOICES = ("none", "forecast", "analysis", "both")
"""Values of the notebooks' ``save_members`` parameter."""
MEMBER_FORMATS = {"netcdf": ".nc", "zarr": ".zarr"}
"""Values of the notebooks' ``members_format`` parameter and their file suffixes."""


def members_file_name(prefix: str, name: str, members_format: str = "netcdf") -> str:
    """``<prefix>_<name>_members.nc`` (or ``.zarr``): the member file beside a run's results.

    Raises
    ------
    InputError
        An unknown format.
    """
    if members_format not in MEMBER_FORMATS:
        raise InputError(f"members_format={members_format!r}: choose one of "
                         f"{', '.join(MEMBER_FORMATS)}")
    return f"{prefix}_{name}_members{MEMBER_FORMATS[members_format]}"


@dataclass(frozen=True)
class MemberOutput:
    """Where the cycling engine streams ensemble members, and which.

    Attributes
    ----------
    path : Path
        The final file: ``*.nc`` (netCDF-4) or ``*.zarr`` (a zarr store directory).
    kinds : tuple of str
        ``"forecast"`` and/or ``"analysis"``.

    Examples
    --------
    >>> MemberOutput("out/cycling_letkf_members.nc", ("analysis",)).kinds
    ('analysis',)
    >>> MemberOutput.from_setting("none", "out/x.nc") is None
    True
    """

    path: Path
    kinds: tuple[str, ...] = MEMBER_KINDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", tuple(k for k in MEMBER_KINDS if k in kinds))
        unknown = [k for k in kinds if k not in MEMBER_KINDS]
        if unknown or not self.kinds:
            raise InputError(f"kinds={kinds!r}: give one or both of {MEMBER_KINDS}")
        if self.path.suffix not in MEMBER_FORMATS.values():
            raise InputError(f"cannot tell the format of the member file {self.path}: use a "
                             "'.nc' (netCDF-4) or '.zarr' suffix")

    @classmethod
    def from_setting(cls, save_members: str, path: str | os.PathLike) -> MemberOutput | None:
        """The output a notebook's ``save_members`` parameter asks for (None: ``"none"``).

        Parameters
        ----------
        save_members : {"none", "forecast", "analysis", "both"}
        path : path-like
            The final member file.
        """
        if save_members not in SAVE_MEMBERS_CHOICES:
            raise InputError(f"save_members={save_members!r}: choose one of "
                             f"{', '.join(SAVE_MEMBERS_CHOICES)}")
        if save_members == "none":
            return None
        kinds = MEMBER_KINDS if save_members == "both" else (save_members,)
        return cls(Path(path), kinds)

    @property
    def is_zarr(self) -> bool:
        return self.path.suffix == ".zarr"

    @property
    def partial_path(self) -> Path:
        """The hidden name the store has until the run finishes."""
        return self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")

    @property
    def variables(self) -> tuple[str, ...]:
        """The ensemble variables written: ``forecast_ensemble``, ``analysis_ensemble``."""
        return tuple(f"{kind}_ensemble" for kind in self.kinds)


def _storage_dtype(dtype: Any) -> np.dtype:
    """float32 and float64 members are stored as they are; other floats as float32."""
    name = str(dtype).removeprefix("torch.")
    return np.dtype(name) if name in ("float32", "float64") else np.dtype("float32")


class MemberWriter:
    """Stream one run's ensemble members to disk, one chunk per cycle.

    Parameters
    ----------
    output : MemberOutput
    n_cycles, n_members : int
    state_dims : sequence of str
    state_shape : sequence of int
    dtype : numpy or torch dtype
        Of the ensemble; float32/float64 are kept, others stored as float32.
    coords : mapping
        Coordinates of the run's Dataset: ``cycle``, ``time``, ``time_hours`` along
        ``cycle`` and the state's (``{name: (dims, values, attrs)}``).
    attrs : mapping
        The run's settings and provenance (written as the store's attributes).
    fingerprint : str
        The run's checkpoint fingerprint: a resumed run must find a store made with it.
    state_units, state_name : str
        For the CF attributes (:func:`turbda_kit.experiments.cf.describe_dataset`).
    resume : bool
        Reopen the partial store of an interrupted run instead of starting a new one.

    Raises
    ------
    InputError
        On resume: no partial store (nor a finished one) of this run, or one of other
        settings.
    """

    def __init__(self, output: MemberOutput, *, n_cycles: int, n_members: int,
                 state_dims: Sequence[str], state_shape: Sequence[int], dtype: Any,
                 coords: Mapping[str, Any], attrs: Mapping[str, Any], fingerprint: str,
                 state_units: str, state_name: str = "", resume: bool = False):
        self.output = output
        self.dtype = _storage_dtype(dtype)
        self.state_shape = tuple(int(s) for s in state_shape)
        self.fingerprint = fingerprint
        partial = output.partial_path
        if resume:
            self._reopen(partial)
        else:
            self._create(partial, n_cycles, n_members, tuple(state_dims), coords, attrs,
                         state_units, state_name)
        self._handle: Any = None

    # -- creation and resumption -------------------------------------------------------

    def _create(self, partial: Path, n_cycles: int, n_members: int, state_dims: tuple,
                coords: Mapping[str, Any], attrs: Mapping[str, Any], state_units: str,
                state_name: str) -> None:
        da = require("dask.array", "saving ensemble members")
        _remove(partial)
        partial.parent.mkdir(parents=True, exist_ok=True)
        member_shape = (n_cycles, n_members, *self.state_shape)
        chunks = (1, n_members, *self.state_shape)
        data_vars = {name: (("cycle", "member", *state_dims),
                            da.full(member_shape, np.nan, dtype=self.dtype, chunks=chunks))
                     for name in self.output.variables}
        data_vars["truth"] = (("cycle", *state_dims),
                              da.full((n_cycles, *self.state_shape), np.nan, dtype=self.dtype,
                                      chunks=(1, *self.state_shape)))
        all_coords = dict(coords)
        all_coords["member"] = ("member", np.arange(n_members), {})
        template = xr.Dataset(data_vars, coords=all_coords)
        cf.describe_dataset(template, state_units, state_name=state_name)
        template.attrs.update({k: v for k, v in attrs.items() if v is not None})
        template.attrs.update({"complete": "false", "run_fingerprint": self.fingerprint,
                               "members_saved": ", ".join(self.output.kinds)})
        key = "chunks" if self.output.is_zarr else "chunksizes"
        encoding = {name: {key: chunks if name != "truth" else (1, *self.state_shape)}
                    for name in template.data_vars}
        # compute=False writes the coordinates and the layout; the NaN arrays stay unwritten
        # (they read as the fill value) until each cycle's chunk is written.
        if self.output.is_zarr:
            template.to_zarr(partial, mode="w", compute=False, consolidated=False,
                             encoding=encoding)
        else:
            template.to_netcdf(partial, compute=False, encoding=encoding)

    def _reopen(self, partial: Path) -> None:
        final = self.output.path
        if not partial.exists() and final.exists():
            # The run had finished (its last checkpoint is the last cycle): reopen it.
            os.replace(final, partial)
        if not partial.exists():
            raise InputError(
                f"the checkpointed run wrote its ensemble members to {partial}, which is "
                "missing: delete the run's checkpoint directory to restart it from cycle 1, "
                "or run without saving members")
        try:
            with xr.open_dataset(partial, engine="zarr" if self.output.is_zarr else None,
                                 consolidated=False if self.output.is_zarr else None,
                                 decode_times=False) as existing:
                fingerprint = existing.attrs.get("run_fingerprint")
                variables = set(existing.data_vars)
        except Exception as err:  # netCDF/zarr readers raise many unrelated types
            raise InputError(f"cannot reopen the partial member store {partial} of the "
                             f"checkpointed run ({type(err).__name__}: {err}): delete it and "
                             "the run's checkpoint directory to restart from cycle 1") from err
        if fingerprint != self.fingerprint or not set(self.output.variables) <= variables:
            raise InputError(f"the partial member store {partial} belongs to a run of other "
                             "settings: delete it (and the run's checkpoint) or write the "
                             "members elsewhere")

    # -- writing -----------------------------------------------------------------------

    def _open(self):
        if self._handle is None:
            if self.output.is_zarr:
                zarr = require("zarr", "saving ensemble members as zarr")
                self._handle = zarr.open_group(str(self.output.partial_path), mode="r+")
            else:
                netCDF4 = require("netCDF4", "saving ensemble members as netCDF")
                self._handle = netCDF4.Dataset(self.output.partial_path, "a")
        return self._handle

    def _as_array(self, tensor: Any) -> np.ndarray:
        if hasattr(tensor, "detach"):
            tensor = tensor.detach().cpu()
            if str(tensor.dtype).removeprefix("torch.") not in ("float32", "float64"):
                tensor = tensor.float()
            tensor = tensor.numpy()
        return np.asarray(tensor, dtype=self.dtype)

    def write(self, cycle: int, forecast: Any, analysis: Any, truth: Any) -> None:
        """Write cycle ``cycle`` (1-based): the ensembles ``(member, *state_shape)`` asked
        for and the truth ``(*state_shape)``."""
        store = self._open()
        index = cycle - 1
        values = {"forecast_ensemble": forecast, "analysis_ensemble": analysis,
                  "truth": truth}
        for name in (*self.output.variables, "truth"):
            store[name][index] = self._as_array(values[name])
        if not self.output.is_zarr:
            # Closed after every cycle: a killed run leaves a consistent netCDF file.
            self.close()

    def close(self) -> None:
        """Close the store (it is reopened by the next write)."""
        handle, self._handle = self._handle, None
        if handle is not None and not self.output.is_zarr:
            handle.close()

    def finish(self, attrs: Mapping[str, Any] | None = None) -> Path:
        """Mark the store complete, add ``attrs`` and move it to its final path.

        Returns
        -------
        Path
            The final path.
        """
        store = self._open()
        extra = {k: (str(v) if isinstance(v, bool) else v)
                 for k, v in dict(attrs or {}).items() if v is not None}
        extra["complete"] = "true"
        if self.output.is_zarr:
            store.attrs.update(extra)
        else:
            for key, value in extra.items():
                store.setncattr(key, value)
        self._handle = None
        if not self.output.is_zarr:
            store.close()
        with atomic_path(self.output.path, is_dir=self.output.is_zarr) as tmp:
            os.replace(self.output.partial_path, tmp)
        return self.output.path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
