"""CF-1.8 metadata shared by every Dataset the kit writes.

Nature runs, Lorenz-96 problems, shard stores, cycling and coupled results, scaling
studies and sweep tables all follow the same few rules, so that xarray, cf-xarray,
ncview or Panoply label them without guessing:

* the Dataset says ``Conventions = "CF-1.8"``;
* every variable and coordinate has ``units`` (UDUNITS strings: ``K``, ``s``, ``h``, ``m``;
  ``1`` for counts, indices, flags and ratios) and a ``long_name``; a ``standard_name``
  only where the CF standard-name table has one (``time``, ``forecast_period``,
  ``projection_x_coordinate``, ``height`` ...); text coordinates (labels) need no units;
* a ``time`` coordinate is float64 seconds with the units
  ``"seconds since 2000-01-01 00:00:00"`` (:mod:`turbda_kit.data.time_axis`), which CF
  readers decode to dates; the date is nominal;
* every dimension has a coordinate variable (an index with units ``1`` where nothing
  better exists: ``member``, ``rank``, ``setting`` ...).

This module holds what the writers share: :data:`CONVENTIONS`, :class:`VariableInfo` and
:func:`describe` (a catalogue of variables applied to a Dataset). What the experiment
results' variables are lives in :mod:`turbda_kit.experiments.cf`; the check that a Dataset
follows these rules is :func:`turbda_kit.testing.assert_cf_complete`. Only numpy is
imported (preprocessing ranks load this without torch or xarray).

Examples
--------
>>> import xarray as xr
>>> ds = xr.Dataset({"wall_s": ("setting", [1.5, 2.0])},
...                 coords={"setting": ("setting", [0, 1])})
>>> ds = describe(ds, {"wall_s": VariableInfo("wall time of the run", "s"),
...                    "setting": VariableInfo("setting index", "1")})
>>> ds.attrs["Conventions"], ds["wall_s"].attrs["units"], ds["setting"].attrs["long_name"]
('CF-1.8', 's', 'setting index')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["CONVENTIONS", "VariableInfo", "describe", "index_coordinate"]

CONVENTIONS = "CF-1.8"
"""The ``Conventions`` attribute of every Dataset the kit writes."""


@dataclass(frozen=True)
class VariableInfo:
    """What a variable is: its long name, units and (when one exists) CF standard name.

    Attributes
    ----------
    long_name : str
    units : str
        A UDUNITS string (``"1"`` for counts, indices, flags and ratios; ``""`` for text,
        which has no units). The experiment
        results also use ``"state"`` / ``"obs"`` for the units of the state or of the
        observations, known only when a run is made
        (:func:`turbda_kit.experiments.cf.describe_dataset` resolves them).
    standard_name : str
        The CF standard name, when one exists ("" otherwise).
    """

    long_name: str
    units: str
    standard_name: str = ""

    def attrs(self) -> dict[str, str]:
        """``{"long_name"[, "units"][, "standard_name"]}`` (no units for text)."""
        out = {"long_name": self.long_name}
        if self.units:
            out["units"] = self.units
        if self.standard_name:
            out["standard_name"] = self.standard_name
        return out


def describe(ds, catalogue: Mapping[str, VariableInfo], *, title: str | None = None,
             replace: bool = False):
    """Give the variables and coordinates of ``ds`` named in ``catalogue`` their CF
    attributes and the Dataset ``Conventions``, in place.

    Parameters
    ----------
    ds : xarray.Dataset
    catalogue : mapping of name to VariableInfo
        Names not in ``ds`` are skipped; variables not in the catalogue are left as they are.
    title : str, optional
        The Dataset's ``title`` (kept when it has one and ``title`` is None).
    replace : bool
        Overwrite attributes a variable already has (default: keep them, so a writer's
        more specific long name wins).

    Returns
    -------
    xarray.Dataset
        ``ds``, with ``Conventions = "CF-1.8"``.
    """
    for name in list(ds.data_vars) + list(ds.coords):
        info = catalogue.get(str(name))
        if info is None:
            continue
        attrs = ds[name].attrs
        for key, value in info.attrs().items():
            if replace:
                attrs[key] = value
            else:
                attrs.setdefault(key, value)
    ds.attrs["Conventions"] = CONVENTIONS
    if title:
        ds.attrs["title"] = title
    return ds


def index_coordinate(dim: str, size: int, long_name: str) -> tuple[str, np.ndarray, dict]:
    """A coordinate ``0 .. size - 1`` along ``dim`` with units ``"1"``: ``(dim, values, attrs)``."""
    return (dim, np.arange(int(size), dtype=np.int64), {"units": "1", "long_name": long_name})
