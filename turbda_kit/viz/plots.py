"""Holoviews plot builders: xarray in, a plot out; :func:`save` writes PNG and HTML.

PNGs come from the matplotlib backend (no browser needed); interactive HTML from bokeh
with inline resources (a self-contained file).

Example
-------
>>> from turbda_kit.viz.plots import rmse_vs_time, save      # doctest: +SKIP
>>> save(rmse_vs_time({"EnSF": ds_ensf, "LETKF": ds_letkf}), out_dir / "rmse")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError

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


# ---------------------------------------------------------------------------------------
# Paper-style figure builders (the figure notebooks in figures/). Options are set for both
# backends, so the PNG (matplotlib) and the HTML (bokeh) show the same titles, labels,
# colours and legends.

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
"""Colours given in turn to runs and curves without a style of their own."""

RUN_STYLES: dict[str, tuple[str, str, bool]] = {
    # run name: (legend label, colour, dashed) — the coupled runs of SC24 Fig. 4 first.
    "vit_ensf": ("ViT + EnSF", "#1f77b4", False),
    "vit_ensf_shocks": ("ViT + EnSF, shocks", "#17becf", False),
    "vit_only": ("ViT only", "#ff7f0e", False),
    "sqg_letkf": ("SQG + LETKF", "#2ca02c", True),
    "sqg_ensf": ("SQG + EnSF", "#9467bd", True),
    "sqg_free": ("SQG, no DA", "#7f7f7f", True),
    "letkf": ("LETKF", "#2ca02c", False),
    "ensf": ("EnSF", "#9467bd", False),
    "free": ("no DA", "#7f7f7f", True),
}
"""Legend label, colour and line style of the runs the experiment notebooks write."""

_MODEL_NAMES = {"sqg": "SQG", "lorenz96": "L96"}


def _both(obj, common: Mapping | None = None, matplotlib: Mapping | None = None,
          bokeh: Mapping | None = None):
    """Apply options to ``obj`` for the matplotlib and the bokeh backend."""
    common = dict(common or {})
    obj = obj.opts(**common, **dict(matplotlib or {}), backend="matplotlib")
    return obj.opts(**common, **dict(bokeh or {}), backend="bokeh")


def _readable_log_ticks(plot, element) -> None:
    """matplotlib hook: plain numbers on log axes (0.5, 1, 2 …, not 10^0 or 1.2×10^0).

    Minor ticks are labelled at 2 and 5 times powers of ten when the axis spans less than
    two decades, and left unlabelled otherwise; an axis with explicit ticks keeps only those.
    """
    from matplotlib import ticker

    ax = plot.handles.get("axis")
    if ax is None:
        return
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")

    def minor_label(value, _):
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
        return f"{value:g}" if mantissa in (2.0, 5.0) else ""

    for axis, scale, explicit in ((ax.xaxis, ax.get_xscale(), plot.xticks is not None),
                                  (ax.yaxis, ax.get_yscale(), plot.yticks is not None)):
        if scale != "log":
            continue
        axis.set_major_formatter(plain)
        low, high = sorted(abs(v) for v in axis.get_view_interval())
        if explicit or low <= 0 or high / low >= 100:
            axis.set_minor_formatter(ticker.NullFormatter())
        else:
            axis.set_minor_formatter(ticker.FuncFormatter(minor_label))


def _box_aspect(width_over_height: float):
    """matplotlib hook fixing the axes' width/height ratio (holoviews' ``aspect`` is lost
    on a log x axis with fixed y limits)."""

    def hook(plot, element) -> None:
        ax = plot.handles.get("axis")
        if ax is not None:
            ax.set_aspect("auto")  # no data-space aspect: it would move the fixed limits
            ax.set_box_aspect(1.0 / width_over_height)

    return hook


def _line(element, colour: str, dashed: bool = False, width: float = 2.0):
    return _both(element, {"color": colour},
                 {"linestyle": "--" if dashed else "-", "linewidth": width},
                 {"line_dash": "dashed" if dashed else "solid", "line_width": width})


def _points(element, colour: str, size: float = 6.0):
    return _both(element, {"color": colour}, {"s": size ** 2, "marker": "o"},
                 {"size": size, "marker": "circle"})


def _reference(element):
    """A thin dashed grey guide line (ideal scaling, 1:1, uniform)."""
    return _line(element, "#555555", dashed=True, width=1.2)


def run_style(name: str, attrs: Mapping | None = None, index: int = 0) -> tuple[str, str, bool]:
    """Legend label, colour and whether dashed, for the run called ``name``.

    Parameters
    ----------
    name : str
        Run name (``vit_ensf``, ``letkf``, …); a suffix ``" (dir)"`` added to tell apart
        runs of the same name is kept in the label.
    attrs : mapping, optional
        The run's Dataset attributes: the model of a cycling run (``attrs["model"]``)
        prefixes its filter name (``SQG + LETKF``).
    index : int
        Position of the run, picking a palette colour for unknown names.
    """
    base, _, suffix = name.partition(" (")
    label, colour, dashed = RUN_STYLES.get(base, (base, PALETTE[index % len(PALETTE)], False))
    model = _MODEL_NAMES.get(str((attrs or {}).get("model", "")))
    if base in ("letkf", "ensf") and model:
        label = f"{model} + {label}"
    elif base == "free" and model:
        label = f"{model}, no DA"
    if suffix:
        label = f"{label} ({suffix}"
    return label, colour, dashed


def _scored(ds, variable: str) -> np.ndarray:
    start = int(ds.attrs.get("config_spinup_cycles", 0))
    return np.asarray(ds[variable].values, dtype=np.float64)[start:]


def rmse_figure(datasets: Mapping[str, object], variable: str = "rmse_analysis",
                units: str = "K", title: str | None = None, logy: bool = False,
                mean_in_legend: bool = True):
    """RMSE against time for several runs: the layout of SC24 Fig. 4.

    Parameters
    ----------
    datasets : mapping of run name to xarray.Dataset
        Cycling-engine outputs (``time_hours`` and ``variable`` along ``cycle``); run
        names pick labels and colours (:data:`RUN_STYLES`).
    variable : str
        ``rmse_analysis`` or ``rmse_forecast`` (any per-cycle variable works).
    units : str
        Units of ``variable`` (K for SQG).
    title : str, optional
    logy : bool
        Logarithmic RMSE axis (runs that diverge and runs that track the truth differ by
        an order of magnitude).
    mean_in_legend : bool
        Append the mean over the cycles after spin-up to each label.

    Returns
    -------
    holoviews.Overlay
        x: time (h), y: RMSE (units); one curve per run, legend on the right.
    """
    hv = _hv()
    if not datasets:
        raise InputError("rmse_figure needs at least one Dataset")
    what = variable.replace("rmse_", "") + " RMSE" if variable.startswith("rmse_") else variable
    y_label = f"{what} ({units})" if units else what
    curves = []
    for index, (name, ds) in enumerate(datasets.items()):
        if variable not in ds:
            raise InputError(f"run {name!r} has no variable {variable!r}; it has "
                             f"{sorted(ds.data_vars)}")
        label, colour, dashed = run_style(name, ds.attrs, index)
        if mean_in_legend:
            label = f"{label}: {np.nanmean(_scored(ds, variable)):.2f} {units}".rstrip()
        hours = ds["time_hours"].values if "time_hours" in ds else ds["cycle"].values
        curve = hv.Curve((hours, ds[variable].values), "time (h)", y_label, label=label)
        curves.append(_line(curve, colour, dashed))
    return _both(hv.Overlay(curves),
                 {"title": title or f"{what} against time", "logy": logy, "show_grid": True,
                  "legend_position": "right"},
                 {"fig_inches": (8, 3.6), "hooks": [_readable_log_ticks]},
                 {"width": 820, "height": 380})


def spread_skill(datasets: Mapping[str, object], kind: str = "analysis", units: str = "K",
                 skip_spinup: bool = True, title: str | None = None):
    """Ensemble spread against RMSE, one point per cycle and run, with the 1:1 line.

    Points below the line: the ensemble is over-confident (spread smaller than its error).

    Parameters
    ----------
    datasets : mapping of run name to xarray.Dataset
        Cycling-engine outputs with ``rmse_<kind>`` and ``spread_<kind>``.
    kind : {"analysis", "forecast"}
    units : str
    skip_spinup : bool
        Leave out each run's spin-up cycles (``attrs["config_spinup_cycles"]``).
    """
    hv = _hv()
    elements, top = [], 0.0
    for index, (name, ds) in enumerate(datasets.items()):
        label, colour, _ = run_style(name, ds.attrs, index)
        rmse = _scored(ds, f"rmse_{kind}") if skip_spinup else ds[f"rmse_{kind}"].values
        spread = _scored(ds, f"spread_{kind}") if skip_spinup else ds[f"spread_{kind}"].values
        finite = np.isfinite(rmse) & np.isfinite(spread)
        top = max(top, float(np.max(rmse[finite], initial=0)), float(np.max(spread[finite],
                                                                             initial=0)))
        points = hv.Scatter((rmse, spread), f"{kind} RMSE ({units})", f"{kind} spread ({units})",
                            label=label)
        elements.append(_points(points, colour))
    top = 1.08 * top or 1.0
    diagonal = hv.Curve(([0.0, top], [0.0, top]), f"{kind} RMSE ({units})",
                        f"{kind} spread ({units})", label="spread = RMSE")
    return _both(hv.Overlay([_reference(diagonal), *elements]),
                 {"title": title or f"{kind} spread against RMSE, per cycle",
                  "xlim": (0, top), "ylim": (0, top), "show_grid": True,
                  "legend_position": "right"},
                 {"fig_inches": (6.4, 4)}, {"width": 600, "height": 420})


def spread_rmse_vs_time(datasets: Mapping[str, object], kind: str = "analysis",
                        units: str = "K", title: str | None = None):
    """RMSE (solid) and spread (dashed) against time, one colour per run."""
    hv = _hv()
    curves = []
    for index, (name, ds) in enumerate(datasets.items()):
        label, colour, _ = run_style(name, ds.attrs, index)
        hours = ds["time_hours"].values if "time_hours" in ds else ds["cycle"].values
        y_label = f"{kind} RMSE, spread ({units})"
        curves.append(_line(hv.Curve((hours, ds[f"rmse_{kind}"].values), "time (h)", y_label,
                                     label=f"{label} RMSE"), colour))
        curves.append(_line(hv.Curve((hours, ds[f"spread_{kind}"].values), "time (h)", y_label,
                                     label=f"{label} spread"), colour, dashed=True))
    return _both(hv.Overlay(curves),
                 {"title": title or f"{kind} RMSE (solid) and spread (dashed)",
                  "show_grid": True, "legend_position": "right"},
                 {"fig_inches": (8, 3.6)}, {"width": 820, "height": 380})


def rank_histogram(counts: np.ndarray, label: str = "", colour: str = PALETTE[0]):
    """A truth-rank histogram as frequencies, with the flat histogram of a reliable ensemble.

    Parameters
    ----------
    counts : array of int, shape (m + 1,)
        ``rank_histogram`` of a run (ranks 0 … m).
    label : str
        Title.
    colour : str
    """
    hv = _hv()
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    frequency = counts / total if total > 0 else counts
    edges = np.arange(counts.size + 1) - 0.5
    bars = hv.Histogram((edges, frequency), kdims=["rank of the truth"], vdims=["frequency"])
    bars = _both(bars, {"alpha": 0.8}, {"facecolor": colour}, {"fill_color": colour})
    flat = _reference(hv.HLine(1.0 / counts.size))
    return _both(hv.Overlay([bars, flat]), {"title": label, "show_grid": True},
                 {"fig_inches": (3.6, 3)}, {"width": 320, "height": 280})


def rank_histograms(datasets: Mapping[str, object], cols: int = 3):
    """:func:`rank_histogram` of every run (``rank_histogram`` variable), in a grid."""
    hv = _hv()
    panels = []
    for index, (name, ds) in enumerate(datasets.items()):
        label, colour, _ = run_style(name, ds.attrs, index)
        panels.append(rank_histogram(ds["rank_histogram"].values, label, colour))
    return _both(hv.Layout(panels).cols(max(1, min(cols, len(panels)))),
                 matplotlib={"sublabel_format": ""})


def scaling_figure(ds, title: str | None = None):
    """Time per cycle and parallel efficiency against ranks, one curve per size.

    Parameters
    ----------
    ds : xarray.Dataset
        A scaling Dataset (:mod:`turbda_kit.experiments.scaling`: ``time_per_cycle_s`` and
        ``efficiency`` over ``ranks, size``; ``attrs["mode"]``).
    title : str, optional
        Prefix of the two panel titles (default: the mode).

    Returns
    -------
    holoviews.Layout
        Left: time per cycle (s) with the ideal (dashed: ``T(p0) p0 / p`` strong, log-log;
        ``T(p0)`` weak, linear time axis from 0); right: efficiency with the perfect value
        1 (dashed).
    """
    hv = _hv()
    mode = str(ds.attrs.get("mode", "strong"))
    title = title or f"{mode} scaling"
    ranks = np.asarray(ds["ranks"].values, dtype=np.float64)
    times, effs = [], []
    top_eff = 1.0
    for index, size in enumerate(ds["size"].values):
        colour = PALETTE[index % len(PALETTE)]
        point = ds.sel(size=size)
        label = f"{int(size):,} {'points' if mode == 'strong' else 'per rank'}"
        t = np.asarray(point["time_per_cycle_s"].values, dtype=np.float64)
        e = np.asarray(point["efficiency"].values, dtype=np.float64)
        ok = np.isfinite(t) & (t > 0)
        if not ok.any():
            continue
        p0, t0 = ranks[ok][0], t[ok][0]
        ideal = t0 * p0 / ranks[ok] if mode == "strong" else np.full(ok.sum(), t0)
        time_label = "time per cycle (s)"
        times += [_line(hv.Curve((ranks[ok], t[ok]), "ranks", time_label, label=label), colour),
                  _points(hv.Scatter((ranks[ok], t[ok]), "ranks", time_label), colour),
                  _line(hv.Curve((ranks[ok], ideal), "ranks", time_label), colour, dashed=True,
                        width=1.0)]
        effs += [_line(hv.Curve((ranks[ok], e[ok]), "ranks", "efficiency", label=label), colour),
                 _points(hv.Scatter((ranks[ok], e[ok]), "ranks", "efficiency"), colour)]
        top_eff = max(top_eff, float(np.nanmax(e[ok])))
    if not times:
        raise InputError(f"the {mode}-scaling Dataset has no finite time per cycle")
    ticks = [int(r) for r in ranks]
    # Weak scaling's ideal is flat: a linear axis from 0 shows a 10% loss as 10%, where a
    # log axis over a narrow range would magnify it.
    time_axes = {"logy": True} if mode == "strong" else {
        "logy": False, "ylim": (0, 1.15 * max(float(np.nanmax(c.dimension_values(1)))
                                               for c in times))}
    time_plot = _both(hv.Overlay(times), {
        "title": f"{title}: time per cycle (dashed: ideal)", "logx": True, **time_axes,
        "show_grid": True, "xticks": ticks, "legend_position": "bottom_right"},
        {"aspect": 1.3, "hooks": [_readable_log_ticks, _box_aspect(1.3)]},
        {"width": 460, "height": 360})
    eff_plot = _both(hv.Overlay([*effs, _reference(hv.HLine(1.0))]), {
        "title": f"{title}: efficiency", "logx": True, "show_grid": True, "xticks": ticks,
        "ylim": (0, 1.1 * top_eff), "legend_position": "bottom_left"},
        {"aspect": 1.3, "hooks": [_readable_log_ticks, _box_aspect(1.3)]},
        {"width": 460, "height": 360})
    return _both(hv.Layout([time_plot, eff_plot]).cols(2), matplotlib={"sublabel_format": ""})


def throughput(table, y: str = "samples_per_s", y_label: str | None = None,
               title: str | None = None, ideal: bool | None = None):
    """A throughput measure against devices, one curve per strategy.

    Parameters
    ----------
    table : xarray.Dataset
        :func:`turbda_kit.experiments.results.throughput_table` (dim ``run`` with coords
        ``strategy`` and ``devices``). Runs of the same strategy and device count are
        averaged.
    y : str
        ``samples_per_s``, ``tflops_per_device``, ``tokens_per_s``, ``peak_mem_gb``, …
    y_label, title : str, optional
    ideal : bool, optional
        Draw linear scaling from the fewest-device point (dashed); default: for
        ``samples_per_s`` and ``tokens_per_s`` only.

    Returns
    -------
    holoviews.Overlay
    """
    hv = _hv()
    units = table[y].attrs.get("units", "")
    y_label = y_label or (f"{y} ({units})" if units else y)
    families = ("single process", "ddp", "fsdp", "deepspeed")
    strategies = sorted(dict.fromkeys(table["strategy"].values.tolist()), key=lambda label: (
        next((i for i, f in enumerate(families) if label.startswith(f)), len(families)), label))
    devices_all = np.asarray(table["devices"].values)
    elements = []
    for index, strategy in enumerate(strategies):
        colour = PALETTE[index % len(PALETTE)]
        rows = np.asarray(table["strategy"].values) == strategy
        devices = np.unique(devices_all[rows])
        values = np.array([np.nanmean(np.asarray(table[y].values)[rows & (devices_all == d)])
                           for d in devices])
        elements.append(_line(hv.Curve((devices, values), "devices", y_label, label=strategy),
                              colour))
        elements.append(_points(hv.Scatter((devices, values), "devices", y_label), colour))
    if ideal is None:
        ideal = y in ("samples_per_s", "tokens_per_s")
    if ideal and devices_all.size:
        fewest = devices_all.min()
        base = float(np.nanmax(np.asarray(table[y].values)[devices_all == fewest]))
        span = np.unique(devices_all)
        elements.append(_reference(hv.Curve((span, base * span / fewest), "devices", y_label,
                                            label="linear scaling")))
    ticks = [int(d) for d in np.unique(devices_all)]
    return _both(hv.Overlay(elements), {
        "title": title or f"{y_label} against devices", "show_grid": True, "xticks": ticks,
        "legend_position": "top_left"}, {"aspect": 1.3}, {"width": 480, "height": 360})


def field_panels(rows: Mapping[str, Mapping[str, np.ndarray]], x_km: np.ndarray | None = None,
                 y_km: np.ndarray | None = None, units: str = "K", cmap: str = "viridis"):
    """Rows of 2-D field snapshots (e.g. truth / forecast mean / analysis mean / error).

    Parameters
    ----------
    rows : mapping of row title to (mapping of panel name to array, shape (ny, nx))
        Every row should have the same panels. Panels whose name contains ``"error"`` share
        one colour range symmetric about zero (``RdBu_r``); all others share one range
        (``cmap``), so every panel of the figure is comparable with the others of its kind.
    x_km, y_km : arrays, optional
        Grid coordinates in km (default: grid indices).
    units : str
        Units of the fields (K for SQG potential temperature).
    cmap : str
        Colour map of the non-error panels.

    Returns
    -------
    holoviews.Layout
        One row per entry of ``rows``.
    """
    hv = _hv()
    if not rows:
        raise InputError("field_panels needs at least one row")
    values = [np.asarray(a, dtype=np.float64) for row in rows.values() for name, a in row.items()
              if "error" not in name.lower()]
    errors = [np.asarray(a, dtype=np.float64) for row in rows.values() for name, a in row.items()
              if "error" in name.lower()]
    low = min((float(np.nanmin(v)) for v in values), default=0.0)
    high = max((float(np.nanmax(v)) for v in values), default=1.0)
    if high <= low:
        high = low + 1.0
    limit = max((float(np.nanmax(np.abs(e))) for e in errors), default=1.0) or 1.0
    kdims = ["x (km)", "y (km)"] if x_km is not None else ["x (grid)", "y (grid)"]
    panels = []
    for row_title, row in rows.items():
        for name, field in row.items():
            field = np.asarray(field)
            ny, nx = field.shape
            xs = x_km if x_km is not None else np.arange(nx)
            ys = y_km if y_km is not None else np.arange(ny)
            is_error = "error" in name.lower()
            vdim = f"error ({units})" if is_error else f"θ ({units})"
            image = hv.Image((xs, ys, field), kdims, vdim)
            image = _both(image, {
                "title": f"{row_title}: {name}" if row_title else name, "colorbar": True,
                "cmap": "RdBu_r" if is_error else cmap,
                "clim": (-limit, limit) if is_error else (low, high)},
                {"fig_inches": 3.2, "aspect": "equal"},
                {"width": 300, "height": 260, "tools": ["hover"]})
            panels.append(image)
    columns = max(len(row) for row in rows.values())
    return _both(hv.Layout(panels).cols(columns),
                 matplotlib={"sublabel_format": "", "hspace": 0.7, "vspace": 0.3})


def loss_curves(history: list[Mapping], title: str = "training loss", logy: bool = True):
    """Training and validation loss against the optimiser step, from the trainer's rows.

    Parameters
    ----------
    history : list of mapping
        ``TrainResult.history`` or the rows of the trainer's ``metrics.csv``: ``step``,
        ``kind`` (``"train"`` or ``"val"``) and ``train_loss`` / ``val_loss`` (MSE in
        normalised units; text from a CSV is read as numbers).
    title : str
    logy : bool
        Logarithmic loss axis.

    Returns
    -------
    holoviews.Overlay
        The training curve, and the validation curve with its points when there are
        validation rows.
    """
    hv = _hv()

    def points(kind: str, key: str) -> list[tuple[float, float]]:
        return [(float(row["step"]), float(row[key])) for row in history
                if row.get("kind") == kind and row.get(key) not in (None, "")]

    train, val = points("train", "train_loss"), points("val", "val_loss")
    if not train and not val:
        raise InputError("loss_curves needs rows with kind 'train' (train_loss) or 'val' "
                         "(val_loss): pass TrainResult.history or the rows of metrics.csv")
    axis = ("step", "MSE (normalised)")
    elements = []
    if train:
        elements.append(_line(hv.Curve(train, *axis, label="train"), PALETTE[0]))
    if val:
        elements.append(_line(hv.Curve(val, *axis, label="validation"), PALETTE[1]))
        elements.append(_points(hv.Scatter(val, *axis), PALETTE[1]))
    return _both(hv.Overlay(elements), {"title": title, "logy": logy, "show_grid": True,
                                        "legend_position": "top_right"},
                 {"fig_inches": 5, "hooks": [_readable_log_ticks, _box_aspect(1.6)]},
                 {"width": 520, "height": 340})
