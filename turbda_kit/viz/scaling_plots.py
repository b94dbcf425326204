"""Holoviews builders for scaling Datasets: time, efficiency, CPU utilisation, RMSE.

Input is a summarised scaling Dataset (dims ``ranks, size``; ``time_per_cycle_s``,
``efficiency``, optionally ``efficiency_cpu``, ``cpu_utilisation``, ``oversubscribed``;
``attrs["mode"]`` ``"strong"`` or ``"weak"``), as written by ``notebooks/04_ensf_scaling``
and ``benchmarks/bench_ensf_scaling.py``. Options are set for both backends, so the PNG
(matplotlib) and the HTML (bokeh) show the same titles, labels and colours.

Example
-------
>>> from turbda_kit.viz.scaling_plots import save_scaling_plots     # doctest: +SKIP
>>> save_scaling_plots(ds, "runs/scaling")      # scaling_strong.png/.html, scaling_strong_rmse.*
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..optional import require
from .plots import PALETTE, readable_log_ticks, save

__all__ = ["efficiency_panel", "rmse_panel", "save_scaling_plots", "scaling_overview",
           "time_panel", "utilisation_panel"]

_BACKENDS = ("matplotlib", "bokeh")
_BOX_ASPECT = 1.2                      # width / height of every panel (matplotlib)
_BOKEH_PANEL = {"width": 420, "height": 340}
_OVERSUBSCRIBED_COLOUR = "#d62728"


def _hv():
    hv = require("holoviews", "plotting")
    missing = [b for b in _BACKENDS if b not in hv.Store.renderers]
    if missing:
        hv.extension(*missing, logo=False)
    return hv


def _styled(element, common: Mapping, matplotlib: Mapping, bokeh: Mapping):
    element = element.opts(**common, **matplotlib, backend="matplotlib")
    return element.opts(**common, **bokeh, backend="bokeh")


def _line(element, colour: str, dashed: bool = False, width: float = 2.0):
    return _styled(element, {"color": colour},
                   {"linestyle": "--" if dashed else "-", "linewidth": width},
                   {"line_dash": "dashed" if dashed else "solid", "line_width": width})


def _points(element, colour: str, size: float = 6.0, cross: bool = False):
    return _styled(element, {"color": colour}, {"s": size ** 2, "marker": "X" if cross else "o"},
                   {"size": size, "marker": "x" if cross else "circle"})


def _axes_hook(plot, element) -> None:
    """matplotlib hook: one box shape for every panel (holoviews' ``aspect`` is lost on log
    axes) and plain numbers on log axes (:func:`~turbda_kit.viz.plots.readable_log_ticks`;
    the rank axis, ticked explicitly, keeps only its ticks at the rank counts)."""
    ax = plot.handles.get("axis")
    if ax is None:
        return
    ax.set_aspect("auto")
    ax.set_box_aspect(1.0 / _BOX_ASPECT)
    readable_log_ticks(plot, element)


def _panel(overlay, title: str, axes: Mapping):
    return _styled(overlay, {"title": title, "show_grid": True, **axes},
                   {"aspect": _BOX_ASPECT, "hooks": [_axes_hook]}, _BOKEH_PANEL)


def _mode(ds) -> str:
    mode = str(ds.attrs.get("mode", ""))
    if mode not in ("strong", "weak"):
        raise InputError(f"attrs['mode']={mode!r}: not a scaling Dataset (need 'strong' or "
                         "'weak'; written by 04_ensf_scaling or bench_ensf_scaling.py)")
    return mode


def _size_label(size: int, mode: str) -> str:
    return f"{int(size):,} {'points' if mode == 'strong' else 'per rank'}"


def _series(ds, name: str, size) -> tuple[np.ndarray, np.ndarray]:
    """Ranks and finite values of ``name`` at ``size``."""
    ranks = np.asarray(ds["ranks"].values, dtype=np.float64)
    values = np.asarray(ds[name].sel(size=size).values, dtype=np.float64)
    ok = np.isfinite(values)
    return ranks[ok], values[ok]


def _rank_axis(ds) -> dict:
    """A log ranks axis ticked at the rank counts (linear for one rank count: a log axis
    over a single value has no range)."""
    ticks = [int(r) for r in ds["ranks"].values]
    return {"logx": len(ticks) > 1, "xticks": ticks}


def time_panel(ds, title: str | None = None):
    """Time per cycle against ranks, one curve per size, with the ideal dashed.

    Strong scaling: log-log with the ideal ``T(p0) p0 / p``. Weak scaling: a linear time
    axis from 0 with the flat ideal ``T(p0)`` (a log axis over a narrow range would
    magnify a 10% loss).
    """
    hv = _hv()
    mode = _mode(ds)
    elements, top = [], 0.0
    for index, size in enumerate(ds["size"].values):
        colour = PALETTE[index % len(PALETTE)]
        ranks, t = _series(ds, "time_per_cycle_s", size)
        if not len(t):
            continue
        ideal = t[0] * ranks[0] / ranks if mode == "strong" else np.full(len(t), t[0])
        label = "time per cycle (s)"
        elements += [_line(hv.Curve((ranks, t), "ranks", label, label=_size_label(size, mode)),
                           colour),
                     _points(hv.Scatter((ranks, t), "ranks", label), colour),
                     _line(hv.Curve((ranks, ideal), "ranks", label,
                                    label="ideal" if index == 0 else ""), colour, dashed=True,
                           width=1.0)]
        top = max(top, float(t.max()), float(ideal.max()))
    if not elements:
        raise InputError(f"the {mode}-scaling Dataset has no finite time per cycle")
    axes = _rank_axis(ds)
    axes.update({"logy": True} if mode == "strong" else {"logy": False, "ylim": (0, 1.15 * top)})
    return _panel(hv.Overlay(elements), f"{title or mode + ' scaling'}: time per cycle", axes)


def efficiency_panel(ds, title: str | None = None):
    """Efficiency against ranks per size: wall time (solid) and CPU seconds (dashed), with 1."""
    hv = _hv()
    mode = _mode(ds)
    elements, top = [], 1.0
    for index, size in enumerate(ds["size"].values):
        colour = PALETTE[index % len(PALETTE)]
        ranks, eff = _series(ds, "efficiency", size)
        if not len(eff):
            continue
        label = _size_label(size, mode)
        elements += [_line(hv.Curve((ranks, eff), "ranks", "efficiency", label=label), colour),
                     _points(hv.Scatter((ranks, eff), "ranks", "efficiency"), colour)]
        top = max(top, float(eff.max()))
        if "efficiency_cpu" in ds:
            ranks_cpu, eff_cpu = _series(ds, "efficiency_cpu", size)
            if len(eff_cpu):
                elements.append(_line(hv.Curve((ranks_cpu, eff_cpu), "ranks", "efficiency",
                                               label=f"{label}, CPU time"), colour, dashed=True))
                top = max(top, float(eff_cpu.max()))
    if not elements:
        raise InputError(f"the {mode}-scaling Dataset has no finite efficiency")
    elements.append(_line(hv.HLine(1.0), "#555555", dashed=True, width=1.2))
    return _panel(hv.Overlay(elements), f"{title or mode + ' scaling'}: efficiency",
                  {**_rank_axis(ds), "ylim": (0, 1.1 * top),
                   "legend_position": "bottom_left"})


def utilisation_panel(ds, title: str | None = None):
    """CPU utilisation (CPU time / cores given / wall) against ranks per size, with 1.

    Points where a rank had fewer CPUs than the cores it keeps busy (``oversubscribed``)
    are marked with a red cross.
    """
    hv = _hv()
    mode = _mode(ds)
    if "cpu_utilisation" not in ds:
        raise InputError("the scaling Dataset has no cpu_utilisation (written before CPU time "
                         "was recorded): re-run the study, or plot time and efficiency only")
    cores = int(ds.attrs.get("cores_per_rank", ds.attrs.get("threads_per_rank", 1)))
    label_y = "CPU utilisation"
    elements, top = [], 1.0
    for index, size in enumerate(ds["size"].values):
        colour = PALETTE[index % len(PALETTE)]
        ranks, used = _series(ds, "cpu_utilisation", size)
        if not len(used):
            continue
        elements += [_line(hv.Curve((ranks, used), "ranks", label_y,
                                    label=_size_label(size, mode)), colour),
                     _points(hv.Scatter((ranks, used), "ranks", label_y), colour)]
        top = max(top, float(used.max()))
        if "oversubscribed" in ds:
            flags = np.asarray(ds["oversubscribed"].sel(size=size).values, dtype=bool)
            values = np.asarray(ds["cpu_utilisation"].sel(size=size).values, dtype=np.float64)
            bad = flags & np.isfinite(values)
            if bad.any():
                elements.append(_points(hv.Scatter(
                    (np.asarray(ds["ranks"].values, dtype=np.float64)[bad], values[bad]),
                    "ranks", label_y, label="oversubscribed"), _OVERSUBSCRIBED_COLOUR,
                    size=10.0, cross=True))
    if not elements:
        raise InputError(f"the {mode}-scaling Dataset has no finite CPU utilisation")
    elements.append(_line(hv.HLine(1.0), "#555555", dashed=True, width=1.2))
    return _panel(hv.Overlay(elements), f"{title or mode + ' scaling'}: CPU utilisation",
                  {**_rank_axis(ds), "ylim": (0, 1.1 * top), "legend_position": "bottom_left",
                   "ylabel": f"CPU time / ({cores} core(s) x ranks x wall)"})


def scaling_overview(ds, title: str | None = None):
    """Time per cycle, efficiency and (when recorded) CPU utilisation side by side.

    Parameters
    ----------
    ds : xarray.Dataset
        A summarised scaling Dataset.
    title : str, optional
        Prefix of the panel titles (default ``"<mode> scaling"``).

    Returns
    -------
    holoviews.Layout
        Two or three panels in one row.
    """
    hv = _hv()
    panels = [time_panel(ds, title), efficiency_panel(ds, title)]
    if "cpu_utilisation" in ds and np.isfinite(ds["cpu_utilisation"].values).any():
        panels.append(utilisation_panel(ds, title))
    layout = hv.Layout(panels).cols(len(panels))
    return layout.opts(sublabel_format="", fig_inches=(5 * len(panels), 4),
                       backend="matplotlib")


def rmse_panel(ds, title: str | None = None):
    """Analysis RMSE per cycle at the largest rank count, one curve per size."""
    hv = _hv()
    mode = _mode(ds)
    largest = ds.isel(ranks=-1)
    curves = [_line(hv.Curve((ds["cycle"].values, largest["rmse_analysis"].sel(size=s).values),
                             "cycle", "analysis RMSE", label=_size_label(s, mode)),
                    PALETTE[i % len(PALETTE)])
              for i, s in enumerate(ds["size"].values)]
    return _panel(hv.Overlay(curves), title or f"analysis RMSE per cycle, "
                  f"{int(largest['ranks'])} rank(s)", {})


def save_scaling_plots(ds, out_dir: str | os.PathLike, prefix: str | None = None,
                       html: bool = True) -> list[Path]:
    """Write the overview and the RMSE per cycle of a scaling Dataset as PNG (+ HTML).

    Files: ``{prefix}.png`` (:func:`scaling_overview`) and ``{prefix}_rmse.png``
    (:func:`rmse_panel`), each with an ``.html`` twin when ``html``; ``prefix`` defaults to
    ``scaling_{mode}``.

    Returns
    -------
    list of Path
        The files written.
    """
    mode = _mode(ds)
    prefix = prefix or f"scaling_{mode}"
    out = Path(out_dir)
    written = save(scaling_overview(ds), out / prefix, html=html)
    written += save(rmse_panel(ds), out / f"{prefix}_rmse", html=html)
    return written
