"""Holoviews plot builders: xarray in, a plot out; :func:`save` writes PNG and HTML.

PNGs come from the matplotlib backend (no browser needed); interactive HTML from bokeh
with inline resources (a self-contained file).

Example
-------
>>> from turbda_kit.viz.plots import rmse_vs_time, save      # doctest: +SKIP
>>> save(rmse_vs_time({"EnSF": ds_ensf, "LETKF": ds_letkf}), out_dir / "rmse")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

_EXTENSIONS_LOADED: set[str] = set()


def _hv(backends: tuple[str, ...] = ("matplotlib", "bokeh")):
    import holoviews as hv

    missing = [b for b in backends if b not in _EXTENSIONS_LOADED]
    if missing:
        hv.extension(*missing, logo=False)
        _EXTENSIONS_LOADED.update(missing)
    return hv


def save(obj, path_stem: str | os.PathLike, png: bool = True, html: bool = True) -> list[Path]:
    """Write ``obj`` as ``<stem>.png`` (matplotlib) and ``<stem>.html`` (bokeh, inline).

    Returns the paths written. Each file is written to a temporary name and moved into
    place, so a crash never leaves a partial figure.
    """
    from ..io import atomic_path

    hv = _hv()
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if png:
        target = stem.with_suffix(".png")
        with atomic_path(target) as tmp:
            hv.save(obj, tmp, backend="matplotlib", fmt="png", dpi=100)
        written.append(target)
    if html:
        target = stem.with_suffix(".html")
        with atomic_path(target) as tmp:
            hv.save(obj, tmp, backend="bokeh", fmt="html", resources="inline")
        written.append(target)
    return written


def rmse_vs_time(datasets: Mapping[str, object], variable: str = "rmse_analysis",
                 units: str = "K", title: str = "RMSE vs time"):
    """One curve per experiment: ``variable`` against model time in hours.

    Parameters
    ----------
    datasets : mapping of label to xarray.Dataset
        Cycling-engine outputs (with ``time_hours`` and ``variable`` along ``cycle``).
    variable : str
        Which score to draw.
    units : str
        Units of the score, for the axis label.
    """
    hv = _hv()
    curves = []
    for label, ds in datasets.items():
        if variable not in ds:
            raise KeyError(f"{label!r} has no variable {variable!r}; it has {sorted(ds.data_vars)}")
        x = ds["time_hours"].values if "time_hours" in ds else ds["cycle"].values
        curves.append(hv.Curve((x, ds[variable].values), "time (h)", f"{variable} ({units})",
                               label=label))
    return hv.Overlay(curves).opts(title=title)


def fields(panels: Mapping[str, np.ndarray], x_km: np.ndarray | None = None,
           y_km: np.ndarray | None = None, units: str = "K", symmetric: bool = False,
           cols: int = 3):
    """A row of images (e.g. truth / forecast / analysis / error) of 2-D fields.

    Parameters
    ----------
    panels : mapping of title to array, shape (ny, nx)
    x_km, y_km : arrays, optional
        Coordinates in km (default: grid indices).
    symmetric : bool
        Centre the colour range on zero for every panel (for error fields); panels whose
        title contains "error" are always centred.
    cols : int
        Panels per row.
    """
    hv = _hv()
    images = []
    for title, field in panels.items():
        field = np.asarray(field)
        ny, nx = field.shape
        xs = x_km if x_km is not None else np.arange(nx)
        ys = y_km if y_km is not None else np.arange(ny)
        kdims = ["x (km)", "y (km)"] if x_km is not None else ["x (grid)", "y (grid)"]
        img = hv.Image((xs, ys, field), kdims, units).opts(title=title, colorbar=True)
        if symmetric or "error" in title.lower():
            lim = float(np.nanmax(np.abs(field))) or 1.0
            img = img.opts(clim=(-lim, lim), cmap="RdBu_r")
        images.append(img)
    return hv.Layout(images).cols(min(cols, len(images)))


def scaling(ds, x: str = "ranks", y: str = "time_per_cycle_s", by: str | None = None,
            title: str = "scaling"):
    """Curves of ``y`` against ``x`` from a scaling Dataset, one per value of ``by``."""
    hv = _hv()
    if by is None:
        return hv.Curve((ds[x].values, ds[y].values), x, y).opts(title=title) * hv.Scatter(
            (ds[x].values, ds[y].values), x, y)
    curves = [hv.Curve((ds.sel({by: v})[x].values, ds.sel({by: v})[y].values), x, y,
                       label=f"{by}={v}") for v in ds[by].values]
    return hv.Overlay(curves).opts(title=title)
