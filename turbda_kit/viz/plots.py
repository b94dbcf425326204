"""Holoviews plot builders: xarray in, a plot out; :func:`save` writes PNG and HTML.

One backend convention for the whole kit:

* **bokeh is the display backend**: in a notebook, plots are interactive bokeh plots,
  with BokehJS and Panel's stylesheets embedded in the notebook (no CDN), so they render
  in a JupyterLab with no internet. Display a plot with :func:`show` (a bare holoviews
  object also renders; :func:`show` also inlines Panel's stylesheets);
* **PNGs come from the matplotlib backend** (:func:`render`, :func:`save`): no browser
  needed; HTML files from bokeh with inline resources (self-contained).

Every builder sets its options for both backends, so the PNG and the HTML show the same
titles, labels with units, colours, line styles and legends. Figures are checked for
readability (data, units, no overlapping text) by :mod:`turbda_kit.viz.checks`.

Example
-------
>>> from turbda_kit.viz.plots import rmse_figure, save, show    # doctest: +SKIP
>>> figure = rmse_figure({"letkf": ds_letkf, "ensf": ds_ensf})  # doctest: +SKIP
>>> save(figure, out_dir / "rmse")                               # doctest: +SKIP
>>> show(figure)                               # doctest: +SKIP - the notebook's last line
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import atomic_path
from ..optional import require

__all__ = [
    "DISPLAY_BACKEND", "EXPORT_BACKEND", "LINE_STYLES", "MARKERS", "PALETTE", "RUN_LINES",
    "RUN_STYLES", "VARIABLE_LABELS", "axis_label", "climatological_spread", "field_panels",
    "fields", "figure_styles", "init_notebook", "level_title", "loss_curves",
    "observation_error_level", "prediction_panels", "readable_log_ticks", "rollout_rmse_figure",
    "rank_histogram", "rank_histograms", "render", "rmse_figure", "rmse_vs_time",
    "run_line", "run_style", "running_mean", "save", "scaling", "scaling_figure",
    "scaling_rmse", "show", "spread_ratio_vs_time", "spread_rmse_vs_time", "spread_skill",
    "spread_skill_figure", "throughput", "throughput_figure",
]

DISPLAY_BACKEND = "bokeh"
"""What notebooks show: interactive bokeh plots."""
EXPORT_BACKEND = "matplotlib"
"""What PNGs are drawn with."""

_EXTENSIONS_LOADED: set[str] = set()


def _hv(backends: tuple[str, ...] = (DISPLAY_BACKEND, EXPORT_BACKEND)):
    """holoviews with both backends loaded, bokeh first (the display backend), resources
    inline (BokehJS and Panel's stylesheets are embedded, never fetched from a CDN)."""
    hv = require("holoviews", "plotting")
    missing = [b for b in backends if b not in _EXTENSIONS_LOADED]
    if missing:
        import panel as pn

        # Panel renders holoviews in notebooks; inline makes it embed its stylesheets too.
        pn.config.inline = True
        order = [b for b in (DISPLAY_BACKEND, EXPORT_BACKEND) if b in missing] + [
            b for b in missing if b not in (DISPLAY_BACKEND, EXPORT_BACKEND)]
        hv.extension(*order, logo=False, inline=True)
        if EXPORT_BACKEND in missing:
            # No "A", "B" sublabels, and room between panels for colour bars and labels:
            # also for layouts composed with `+` outside the builders.
            hv.opts.defaults(hv.opts.Layout(sublabel_format="", hspace=0.55, vspace=0.45),
                             backend=EXPORT_BACKEND)
        _EXTENSIONS_LOADED.update(missing)
    return hv


def init_notebook() -> None:
    """Load the plotting extensions in a notebook: bokeh interactive, resources inline.

    Builders call it themselves; call it first when a notebook draws with holoviews
    directly (instead of ``hv.extension(...)``), so every notebook follows one convention.
    """
    _hv()


def show(obj, **kwargs: Any):
    """An interactive bokeh view of ``obj`` for a notebook cell (its last expression).

    Parameters
    ----------
    obj : holoviews object
    **kwargs
        Passed to :class:`panel.pane.HoloViews` (e.g. ``widget_location``).

    Returns
    -------
    panel.pane.HoloViews
        Rendered with BokehJS and every stylesheet inline, so the plot needs no internet.
    """
    _hv()
    import panel as pn

    return pn.pane.HoloViews(obj, backend=DISPLAY_BACKEND, **kwargs)


def render(obj):
    """The matplotlib figure of ``obj``, as :func:`save` writes it to PNG.

    Returns
    -------
    matplotlib.figure.Figure
        Close it (``matplotlib.pyplot.close(fig)``) when done.
    """
    hv = _hv()
    return hv.render(obj, backend=EXPORT_BACKEND)


def save(obj, path_stem: str | os.PathLike, png: bool = True, html: bool = True,
         dpi: int = 100) -> list[Path]:
    """Write ``obj`` as ``<stem>.png`` (matplotlib) and ``<stem>.html`` (bokeh, inline).

    Returns the paths written. Each file is written to a temporary name and moved into
    place, so a crash never leaves a partial figure. The PNG is cut to a tight box around
    everything drawn (legends and colour bars outside the axes included).
    """
    hv = _hv()
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if png:
        plt = require("matplotlib.pyplot", "PNG figures")
        target = stem.with_suffix(".png")
        figure = render(obj)
        try:
            with atomic_path(target) as tmp:
                figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight",
                               pad_inches=0.1)
        finally:
            plt.close(figure)
        written.append(target)
    if html:
        target = stem.with_suffix(".html")
        with atomic_path(target) as tmp:
            hv.save(obj, tmp, backend=DISPLAY_BACKEND, fmt="html", resources="inline")
        written.append(target)
    return written


# ---------------------------------------------------------------------------------------
# Styles: colours that stay apart for colour-blind readers (Okabe & Ito), and a line
# style and marker for every series, so overlapping curves stay visible in print.

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
           "#7f7f7f", "#8c564b", "#999933")
"""Colours given in turn to runs and curves without a style of their own."""
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

RUN_STYLES: dict[str, tuple[str, str, bool]] = {
    # run name: (legend label, colour, dashed) — the coupled runs of SC24 Fig. 4 first.
    "vit_ensf": ("ViT + EnSF", "#0072B2", False),
    "vit_ensf_shocks": ("ViT + EnSF, shocks", "#D55E00", True),
    "vit_only": ("ViT only", "#E69F00", False),
    "sqg_letkf": ("SQG + LETKF", "#009E73", True),
    "sqg_ensf": ("SQG + EnSF", "#CC79A7", True),
    "sqg_free": ("SQG, no DA", "#555555", True),
    "letkf": ("LETKF", "#009E73", False),
    "ensf": ("EnSF", "#CC79A7", False),
    "free": ("no DA", "#555555", True),
}
"""Legend label, colour and whether dashed, of the runs the experiment notebooks write."""

RUN_LINES: dict[str, tuple[str, str]] = {
    # run name: (matplotlib line style, marker)
    "vit_ensf": ("-", "o"),
    "vit_ensf_shocks": ("--", "s"),
    "vit_only": ("-", "^"),
    "sqg_letkf": ("-.", "D"),
    "sqg_ensf": ("--", "v"),
    "sqg_free": (":", "X"),
    "letkf": ("-.", "D"),
    "ensf": ("--", "v"),
    "free": (":", "X"),
}
"""Line style and marker of each known run: no two runs of one figure share both."""

_MODEL_NAMES = {"sqg": "SQG", "lorenz96": "L96"}
_BOKEH_DASH = {"-": "solid", "--": "dashed", "-.": "dashdot", ":": "dotted"}
_GUIDE_COLOUR = "#444444"

VARIABLE_LABELS = {
    "rmse_analysis": "analysis RMSE", "rmse_forecast": "forecast RMSE",
    "spread_analysis": "analysis spread", "spread_forecast": "forecast spread",
    "crps_analysis": "analysis CRPS", "crps_forecast": "forecast CRPS",
    "time_per_cycle_s": "time per cycle", "efficiency": "parallel efficiency",
    "samples_per_s": "samples/s (whole job)", "tokens_per_s": "tokens/s (whole job)",
    "samples_per_s_per_device": "samples/s per device",
    "tflops_per_device": "achieved TFLOPS per device", "peak_mem_gb": "peak memory per device",
    "surrogate_drift": "surrogate drift",
}
"""Human names of the variables the kit writes (axis labels get the units added)."""
_VARIABLE_UNITS = {"time_per_cycle_s": "s", "samples_per_s": "1/s", "tokens_per_s": "1/s",
                   "samples_per_s_per_device": "1/s", "tflops_per_device": "TFLOPS",
                   "peak_mem_gb": "GB"}


def axis_label(variable: str, units: str | None = None) -> str:
    """``"analysis RMSE (K)"`` for ``rmse_analysis`` in K: a human name and the unit.

    Dimensionless units (``"1"``, ``""``) give the name alone.
    """
    name = VARIABLE_LABELS.get(variable, variable.replace("_", " "))
    units = _VARIABLE_UNITS.get(variable) if units is None else units
    return f"{name} ({units})" if units and units != "1" else name


_LEVEL = re.compile(r"^(?P<var>[A-Za-z]+)_(?P<height>\d+(\.\d+)?)$")


def level_title(name: str) -> str:
    """A readable title for a ClimaX-style variable name.

    ``sqg_0`` → ``θ at the surface (z = 0 km)``, ``sqg_10000`` → ``θ at the lid
    (z = 10 km)``; other names are returned unchanged.
    """
    match = _LEVEL.match(str(name))
    if match is None:
        return str(name)
    height_km = float(match.group("height")) / 1e3
    where = "at the surface" if height_km == 0 else "at the lid"
    variable = "θ" if match.group("var") in ("sqg", "theta") else match.group("var")
    return f"{variable} {where} (z = {height_km:g} km)"


def _both(obj, common: Mapping | None = None, matplotlib: Mapping | None = None,
          bokeh: Mapping | None = None):
    """Apply options to ``obj`` for the matplotlib and the bokeh backend."""
    common = dict(common or {})
    obj = obj.opts(**common, **dict(matplotlib or {}), backend="matplotlib")
    return obj.opts(**common, **dict(bokeh or {}), backend="bokeh")


def readable_log_ticks(plot, element) -> None:
    """matplotlib hook: plain numbers on log axes (0.5, 1, 2 …, not 10^0 or 1.2×10^0).

    Minor ticks are labelled at 2 and 5 times powers of ten when the axis spans less than
    two decades, at every minor tick when fewer than two of 1, 2 and 5 times a power of
    ten fall on the axis (a span under a factor of about 2.5 would otherwise show one
    number or none), and left unlabelled over two decades or more; an axis with explicit
    ticks keeps only those.
    """
    ticker = require("matplotlib.ticker", "PNG figures")
    ax = plot.handles.get("axis")
    if ax is None:
        return
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")

    def mantissa(value: float) -> float:
        return round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0

    def minor_label(value, _):
        return f"{value:g}" if mantissa(value) in (2.0, 5.0) else ""

    for axis, scale, explicit in ((ax.xaxis, ax.get_xscale(), plot.xticks is not None),
                                  (ax.yaxis, ax.get_yscale(), plot.yticks is not None)):
        if scale != "log":
            continue
        axis.set_major_formatter(plain)
        low, high = sorted(abs(v) for v in axis.get_view_interval())
        if explicit or low <= 0 or high / low >= 100:
            axis.set_minor_formatter(ticker.NullFormatter())
        elif _round_values_within(low, high) < 2:
            axis.set_minor_formatter(plain)
        else:
            axis.set_minor_formatter(ticker.FuncFormatter(minor_label))


def _round_values_within(low: float, high: float) -> int:
    """How many of 1, 2 and 5 times a power of ten lie in ``[low, high]`` (``low > 0``)."""
    first = math.floor(math.log10(low))
    return sum(1 for decade in range(first, math.floor(math.log10(high)) + 1)
               for m in (1.0, 2.0, 5.0) if low <= m * 10.0**decade <= high)


def _box_aspect(width_over_height: float):
    """matplotlib hook fixing the axes' width/height ratio (holoviews' ``aspect`` is lost
    on a log x axis with fixed y limits)."""

    def hook(plot, element) -> None:
        ax = plot.handles.get("axis")
        if ax is not None:
            ax.set_aspect("auto")  # no data-space aspect: it would move the fixed limits
            ax.set_box_aspect(1.0 / width_over_height)

    return hook


def _title_above_ticks(points: float = 12.0):
    """matplotlib hook: lift the panel title ``points`` above the axes (matplotlib's 6).

    Half of a tick label sticks out above the axes when a tick sits at the top limit
    (e.g. ``ylim = (0, 1.15 * top)`` landing on 0.8): with the default gap the title
    overlaps it.
    """

    def hook(plot, element) -> None:
        ax = plot.handles.get("axis")
        if ax is not None and ax.get_title():
            title = ax.title
            ax.set_title(title.get_text(), pad=points, fontsize=title.get_fontsize(),
                         fontweight=title.get_fontweight())

    return hook


def _markevery(every: int, offset: int):
    """matplotlib hook: draw a curve's marker on every ``every``-th point from ``offset``
    (offsets differ per run, so markers of overlapping curves do not cover each other)."""

    def hook(plot, element) -> None:
        artist = plot.handles.get("artist")
        if artist is not None and hasattr(artist, "set_markevery"):
            artist.set_markevery((offset, max(1, every)))

    return hook


def _legend_beside(fontsize: float = 9.0):
    """matplotlib hook: the legend outside the axes on the right, frameless, so it never
    covers data and never squeezes the panel."""

    def hook(plot, element) -> None:
        ax = plot.handles.get("axis")
        legend = ax.get_legend() if ax is not None else None
        if legend is None:
            return
        handles = list(legend.legend_handles)
        labels = [t.get_text() for t in legend.get_texts()]
        legend.remove()
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False, fontsize=fontsize)

    return hook


def _integer_ticks(values: Sequence[float]):
    """matplotlib hook: ticks only at ``values``, labelled as integers (1, 2, 4 ranks)."""

    def hook(plot, element) -> None:
        ticker = require("matplotlib.ticker", "PNG figures")
        ax = plot.handles.get("axis")
        if ax is None:
            return
        ax.xaxis.set_major_locator(ticker.FixedLocator(list(values)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())

    return hook


def _line(element, colour: str, dashed: bool = False, width: float = 2.0, *,
          linestyle: str | None = None, marker: str | None = None, every: int = 0,
          offset: int = 0, alpha: float = 1.0):
    """Style a Curve for both backends: colour, line style (``dashed`` or a matplotlib
    ``linestyle``), width and, in the PNG, a marker every ``every`` points."""
    style = linestyle or ("--" if dashed else "-")
    mpl: dict[str, Any] = {"linestyle": style, "linewidth": width, "alpha": alpha}
    if marker:
        mpl.update(marker=marker, ms=5)
        mpl["hooks"] = [_markevery(every, offset)] if every else []
    return _both(element, {"color": colour},
                 mpl, {"line_dash": _BOKEH_DASH.get(style, "solid"), "line_width": width,
                       "alpha": alpha})


def _points(element, colour: str, size: float = 6.0, marker: str = "o"):
    bokeh_marker = {"o": "circle", "s": "square", "^": "triangle", "D": "diamond",
                    "v": "inverted_triangle", "X": "x", "P": "plus", "*": "star"}
    return _both(element, {"color": colour}, {"s": size ** 2, "marker": marker},
                 {"size": size, "marker": bokeh_marker.get(marker, "circle")})


def _reference(element, linestyle: str = "--", width: float = 1.2):
    """A thin grey guide line (ideal scaling, 1:1, uniform, a reference level)."""
    return _line(element, _GUIDE_COLOUR, linestyle=linestyle, width=width)


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
    default = (base.replace("_", " "), PALETTE[index % len(PALETTE)], False)
    label, colour, dashed = RUN_STYLES.get(base, default)
    model = _MODEL_NAMES.get(str((attrs or {}).get("model", "")))
    if base in ("letkf", "ensf") and model:
        label = f"{model} + {label}"
    elif base == "free" and model:
        label = f"{model}, no DA"
    if suffix:
        label = f"{label} ({suffix}"
    return label, colour, dashed


def run_line(name: str, index: int = 0) -> tuple[str, str]:
    """Matplotlib line style and marker of the run called ``name`` (:data:`RUN_LINES`;
    unknown names take them in turn by ``index``)."""
    base = name.partition(" (")[0]
    return RUN_LINES.get(base, (LINE_STYLES[index % len(LINE_STYLES)],
                                MARKERS[index % len(MARKERS)]))


def figure_styles(datasets: Mapping[str, Any]) -> dict[str, tuple[str, str, str, str]]:
    """Label, colour, line style and marker of every run of one figure, all distinct.

    Known runs keep their own (:data:`RUN_STYLES`, :data:`RUN_LINES`); a run whose colour
    or (line style, marker) another run of the figure already has (``letkf`` from 05
    beside ``sqg_letkf`` from 06) takes the next free one.
    """
    styles: dict[str, tuple[str, str, str, str]] = {}
    colours: set[str] = set()
    lines: set[tuple[str, str]] = set()
    for index, (name, ds) in enumerate(datasets.items()):
        label, colour, _ = run_style(name, getattr(ds, "attrs", {}), index)
        linestyle, marker = run_line(name, index)
        if colour in colours:
            colour = next((c for c in PALETTE if c not in colours), colour)
        if (linestyle, marker) in lines:
            marker = next((m for m in MARKERS if (linestyle, m) not in lines), marker)
        colours.add(colour)
        lines.add((linestyle, marker))
        styles[name] = (label, colour, linestyle, marker)
    return styles


def _scored(ds, variable: str) -> np.ndarray:
    start = int(ds.attrs.get("config_spinup_cycles", 0))
    return np.asarray(ds[variable].values, dtype=np.float64)[start:]


def _time_axis(datasets: Mapping[str, Any]) -> tuple[float, str]:
    """(hours per unit, label): days for runs longer than ten days, else hours."""
    longest = 0.0
    for ds in datasets.values():
        hours = ds["time_hours"].values if "time_hours" in ds else ds["cycle"].values
        longest = max(longest, float(np.nanmax(hours)) if len(hours) else 0.0)
    return (24.0, "time (days)") if longest > 240.0 else (1.0, "time (h)")


def _hours(ds) -> np.ndarray:
    return np.asarray(ds["time_hours"].values if "time_hours" in ds else ds["cycle"].values,
                      dtype=np.float64)


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean over ``window`` points (shorter at the ends; NaN ignored)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    finite = np.isfinite(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    counts = np.convolve(finite.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _smoothing(datasets: Mapping[str, Any], smooth_cycles: int | None) -> int:
    if smooth_cycles is not None:
        return max(0, int(smooth_cycles))
    longest = max((int(ds.sizes.get("cycle", 0)) for ds in datasets.values()), default=0)
    return 10 if longest >= 60 else 0


def _units_of(ds, variable: str) -> str | None:
    return ds[variable].attrs.get("units") if variable in ds.variables else None


def observation_error_level(ds, variable: str = "rmse_analysis") -> float | None:
    """The observation error std of a run, when it is in the units of ``variable``.

    An analysis that copied the observations of every point would score this RMSE. None
    when the observations are in other units (arctan observations), or unknown.
    """
    std = ds.attrs.get("config_obs_error_std")
    if std is None:
        return None
    obs_units, units = _units_of(ds, "innovation_mean"), _units_of(ds, variable)
    if obs_units is not None and units is not None:
        return float(std) if obs_units == units else None
    return float(std) if str(ds.attrs.get("obs", "identity")) == "identity" else None


def climatological_spread(ds, min_days: float = 10.0) -> float | None:
    """Spread of the truth about its own time mean: ``sqrt(mean_points(var_time(truth)))``.

    A free run whose members have forgotten the truth scores about this RMSE. None without
    a saved ``truth`` (runs made without ``save_means``), or for a run shorter than
    ``min_days`` of model time: the truth of a few days has not explored its climate, and
    its spread would understate the climatological one many times over.
    """
    if "truth" not in ds or ds.sizes.get("cycle", 0) < 2:
        return None
    hours = _hours(ds)
    if "time_hours" not in ds or float(hours[-1] - hours[0]) < 24.0 * min_days:
        return None
    truth = np.asarray(ds["truth"].values, dtype=np.float64)
    variance = np.nanvar(truth, axis=0, ddof=1)
    return float(np.sqrt(np.nanmean(variance)))


def _reference_levels(datasets: Mapping[str, Any], variable: str, obs_error: float | None,
                      clim: float | None) -> list[tuple[str, float, str]]:
    levels = []
    if obs_error is None:
        obs_error = next((v for v in (observation_error_level(ds, variable)
                                      for ds in datasets.values()) if v is not None), None)
    if clim is None:
        clim = next((v for v in (climatological_spread(ds) for ds in datasets.values())
                     if v is not None), None)
    if obs_error is not None:
        levels.append(("observation error", float(obs_error), ":"))
    if clim is not None:
        levels.append(("climatological spread", float(clim), "-."))
    return levels


def rmse_figure(datasets: Mapping[str, object], variable: str = "rmse_analysis",
                units: str = "K", title: str | None = None, logy: bool = False,
                mean_in_legend: bool = True, smooth_cycles: int | None = None,
                reference_lines: bool = True, obs_error: float | None = None,
                climatological: float | None = None):
    """RMSE against time for several runs (the layout of SC24 Fig. 4), with the levels
    that explain it.

    Parameters
    ----------
    datasets : mapping of run name to xarray.Dataset
        Cycling-engine outputs (``time_hours`` and ``variable`` along ``cycle``); run
        names pick labels, colours, line styles and markers (:data:`RUN_STYLES`,
        :data:`RUN_LINES`).
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
    smooth_cycles : int, optional
        Draw each run's running mean over this many cycles in bold over its per-cycle
        values (thin, faint): shock cycles make per-cycle curves a band. Default: 10 for
        runs of 60 cycles or more, none for shorter ones; 0 turns it off.
    reference_lines : bool
        Draw the observation error std (an analysis copying observations of every point
        scores it; from ``attrs["config_obs_error_std"]`` when the observations are in the
        units of ``variable``) and the climatological spread of the truth (a run that has
        forgotten the truth scores it; from the saved ``truth`` of runs of ten days or
        more, :func:`climatological_spread`) as labelled grey lines.
    obs_error, climatological : float, optional
        Give those levels instead of reading them from the runs.

    Returns
    -------
    holoviews.Overlay
        x: time (h, or days beyond ten days), y: RMSE (units); legend beside the axes.
    """
    hv = _hv()
    if not datasets:
        raise InputError("rmse_figure needs at least one Dataset")
    y_label = axis_label(variable, units)
    what = VARIABLE_LABELS.get(variable, variable)
    per_unit, x_label = _time_axis(datasets)
    window = _smoothing(datasets, smooth_cycles)
    elements = []
    start, stop = math.inf, -math.inf
    styles = figure_styles(datasets)
    for index, (name, ds) in enumerate(datasets.items()):
        if variable not in ds:
            raise InputError(f"run {name!r} has no variable {variable!r}; it has "
                             f"{sorted(ds.data_vars)}")
        label, colour, linestyle, marker = styles[name]
        if mean_in_legend:
            label = f"{label}: {np.nanmean(_scored(ds, variable)):.2f} {units}".rstrip()
        x = _hours(ds) / per_unit
        y = np.asarray(ds[variable].values, dtype=np.float64)
        if x.size:
            start, stop = min(start, float(x[0])), max(stop, float(x[-1]))
        every = max(1, x.size // 12)
        if window > 1:
            raw = hv.Curve((x, y), x_label, y_label)
            elements.append(_line(raw, colour, width=0.7, alpha=0.35))
            curve = hv.Curve((x, running_mean(y, window)), x_label, y_label, label=label)
        else:
            curve = hv.Curve((x, y), x_label, y_label, label=label)
        elements.append(_line(curve, colour, width=1.8, linestyle=linestyle, marker=marker,
                              every=every, offset=(index * every) // max(1, len(datasets))))
    if reference_lines and math.isfinite(start):
        for name, level, style in _reference_levels(datasets, variable, obs_error,
                                                    climatological):
            guide = hv.Curve(([start, stop], [level, level]), x_label, y_label,
                             label=f"{name}: {level:.2f} {units}".rstrip())
            elements.append(_reference(guide, linestyle=style))
    heading = title or f"{what} against time"
    if window > 1:
        heading += f"\n(bold: {window}-cycle running mean; thin: each cycle)"
    return _both(hv.Overlay(elements),
                 {"title": heading, "logy": logy, "show_grid": True,
                  "legend_position": "right"},
                 {"fig_inches": (7.5, 3.6), "aspect": 2.2,
                  "hooks": [readable_log_ticks, _legend_beside()]},
                 {"width": 900, "height": 400})


def rmse_vs_time(datasets: Mapping[str, object], variable: str = "rmse_analysis",
                 units: str = "K", title: str = "RMSE vs time"):
    """One curve per experiment: ``variable`` against model time — :func:`rmse_figure`
    (kept for the notebooks that call it by this name)."""
    return rmse_figure(datasets, variable=variable, units=units, title=title)


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
    x_label, y_label = axis_label(f"rmse_{kind}", units), axis_label(f"spread_{kind}", units)
    styles = figure_styles(datasets)
    for name, ds in datasets.items():
        label, colour, _, marker = styles[name]
        rmse = _scored(ds, f"rmse_{kind}") if skip_spinup else ds[f"rmse_{kind}"].values
        spread = _scored(ds, f"spread_{kind}") if skip_spinup else ds[f"spread_{kind}"].values
        finite = np.isfinite(rmse) & np.isfinite(spread)
        top = max(top, float(np.max(rmse[finite], initial=0)), float(np.max(spread[finite],
                                                                             initial=0)))
        points = hv.Scatter((rmse, spread), x_label, y_label, label=label)
        elements.append(_points(points, colour, marker=marker))
    top = 1.08 * top or 1.0
    diagonal = hv.Curve(([0.0, top], [0.0, top]), x_label, y_label, label="spread = RMSE")
    return _both(hv.Overlay([_reference(diagonal), *elements]),
                 {"title": title or f"{kind} spread against RMSE, per cycle",
                  "xlim": (0, top), "ylim": (0, top), "show_grid": True,
                  "legend_position": "right"},
                 {"fig_inches": (4.6, 4.0), "hooks": [_legend_beside()]},
                 {"width": 640, "height": 440})


def spread_skill_figure(datasets: Mapping[str, object], kind: str = "analysis",
                        units: str = "K", skip_spinup: bool = True,
                        smooth_cycles: int | None = None):
    """Is each ensemble's spread an honest estimate of its error? Two panels.

    Left: :func:`spread_skill` (spread against RMSE per cycle, the 1:1 line dashed);
    right: :func:`spread_ratio_vs_time` (spread / RMSE against time, the value of a
    reliable ensemble in grey), whose legend names the runs for both panels.

    Parameters
    ----------
    datasets : mapping of run name to xarray.Dataset
    kind : {"analysis", "forecast"}
    units : str
    skip_spinup : bool
        Leave each run's spin-up cycles out of the scatter.
    smooth_cycles : int, optional
        Running mean of the ratio (see :func:`rmse_figure`).
    """
    hv = _hv()
    scatter = spread_skill(datasets, kind, units, skip_spinup,
                           title=f"{kind} spread against RMSE (dashed: equal)")
    scatter = _both(scatter, {"show_legend": False}, {"hooks": [], "aspect": 1.0},
                    {"width": 420})
    ratio = spread_ratio_vs_time(datasets, kind, smooth_cycles=smooth_cycles,
                                 title=f"{kind} spread / RMSE against time")
    ratio = _both(ratio, {}, {"aspect": 1.6})
    return _both(hv.Layout([scatter, ratio]).cols(2),
                 matplotlib={"sublabel_format": "", "hspace": 0.35, "fig_size": 120})


def spread_ratio_vs_time(datasets: Mapping[str, object], kind: str = "analysis",
                         title: str | None = None, smooth_cycles: int | None = None):
    """Spread / RMSE against time, one curve per run, with the value of a reliable ensemble.

    A reliable ensemble of ``m`` members has ``spread / RMSE = sqrt(m / (m + 1))`` in
    expectation (:mod:`turbda_kit.metrics`), drawn as a grey line per member count.

    Parameters
    ----------
    datasets : mapping of run name to xarray.Dataset
    kind : {"analysis", "forecast"}
    title : str, optional
    smooth_cycles : int, optional
        Running mean as in :func:`rmse_figure` (default: 10 cycles for runs of 60 or more).
    """
    hv = _hv()
    per_unit, x_label = _time_axis(datasets)
    window = _smoothing(datasets, smooth_cycles)
    y_label = f"{kind} spread / RMSE"
    elements, members, span = [], set(), [math.inf, -math.inf]
    styles = figure_styles(datasets)
    for index, (name, ds) in enumerate(datasets.items()):
        label, colour, linestyle, marker = styles[name]
        x = _hours(ds) / per_unit
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (np.asarray(ds[f"spread_{kind}"].values, dtype=np.float64)
                     / np.asarray(ds[f"rmse_{kind}"].values, dtype=np.float64))
        if window > 1:
            elements.append(_line(hv.Curve((x, ratio), x_label, y_label), colour, width=0.7,
                                  alpha=0.35))
            ratio = running_mean(ratio, window)
        every = max(1, x.size // 12)
        elements.append(_line(hv.Curve((x, ratio), x_label, y_label, label=label), colour,
                              width=1.8, linestyle=linestyle, marker=marker, every=every,
                              offset=(index * every) // max(1, len(datasets))))
        if x.size:
            span = [min(span[0], float(x[0])), max(span[1], float(x[-1]))]
        if int(ds.attrs.get("n_members", 0)) > 0:
            members.add(int(ds.attrs["n_members"]))
    for m in sorted(members):
        level = math.sqrt(m / (m + 1))
        elements.append(_reference(hv.Curve((span, [level, level]), x_label, y_label,
                                            label=f"reliable, {m} members: {level:.2f}")))
    heading = title or f"{kind} spread / RMSE against time (below the grey line: over-confident)"
    return _both(hv.Overlay(elements),
                 {"title": heading, "show_grid": True, "legend_position": "right"},
                 {"fig_inches": (7.5, 3.2), "aspect": 2.4, "hooks": [_legend_beside()]},
                 {"width": 900, "height": 360})


def spread_rmse_vs_time(datasets: Mapping[str, object], kind: str = "analysis",
                        units: str = "K", title: str | None = None):
    """RMSE (solid) and spread (dashed) against time, one colour per run.

    With several runs the curves crowd each other; :func:`spread_ratio_vs_time` draws one
    curve per run.
    """
    hv = _hv()
    per_unit, x_label = _time_axis(datasets)
    curves = []
    styles = figure_styles(datasets)
    for name, ds in datasets.items():
        label, colour, _, _ = styles[name]
        x = _hours(ds) / per_unit
        y_label = f"{kind} RMSE, spread ({units})"
        curves.append(_line(hv.Curve((x, ds[f"rmse_{kind}"].values), x_label, y_label,
                                     label=f"{label} RMSE"), colour))
        curves.append(_line(hv.Curve((x, ds[f"spread_{kind}"].values), x_label, y_label,
                                     label=f"{label} spread"), colour, dashed=True))
    return _both(hv.Overlay(curves),
                 {"title": title or f"{kind} RMSE (solid) and spread (dashed)",
                  "show_grid": True, "legend_position": "right"},
                 {"fig_inches": (7.5, 3.6), "aspect": 2.2, "hooks": [_legend_beside()]},
                 {"width": 900, "height": 400})


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
    styles = figure_styles(datasets)
    for name, ds in datasets.items():
        label, colour, _, _ = styles[name]
        panels.append(rank_histogram(ds["rank_histogram"].values, label, colour))
    return _both(hv.Layout(panels).cols(max(1, min(cols, len(panels)))),
                 matplotlib={"sublabel_format": "", "hspace": 0.4, "vspace": 0.4})


# ---------------------------------------------------------------------------------------
# Scaling


def _size_label(size: float, mode: str) -> str:
    return f"{int(size):,} {'points in total' if mode == 'strong' else 'points per rank'}"


def scaling(ds, x: str = "ranks", y: str = "time_per_cycle_s", by: str | None = None,
            title: str = "scaling"):
    """``y`` against ``x`` from a scaling Dataset, one curve with markers per value of ``by``.

    Single points stay visible (markers), the ranks axis has ticks at the rank counts run,
    the y axis starts at zero and is labelled with a human name and its unit.
    """
    hv = _hv()
    x_label = "MPI ranks" if x == "ranks" else axis_label(x)
    units = ds[y].attrs.get("units") if y in ds.variables else None
    y_label = axis_label(y, None if units in (None, "") else units)
    mode = str(ds.attrs.get("mode", "strong"))
    groups = [(None, ds)] if by is None else [(v, ds.sel({by: v})) for v in ds[by].values]
    elements, top = [], 0.0
    for index, (value, part) in enumerate(groups):
        xs = np.asarray(part[x].values, dtype=np.float64)
        ys = np.asarray(part[y].values, dtype=np.float64)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if not ok.any():
            continue
        colour, marker = PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]
        label = (_size_label(value, mode) if by == "size" else f"{by} = {value}") if by else y_label
        top = max(top, float(np.max(ys[ok])))
        if ok.sum() > 1:
            elements.append(_line(hv.Curve((xs[ok], ys[ok]), x_label, y_label), colour,
                                  linestyle=LINE_STYLES[index % len(LINE_STYLES)]))
        elements.append(_points(hv.Scatter((xs[ok], ys[ok]), x_label, y_label, label=label),
                                colour, size=7.0, marker=marker))
    if not elements:
        raise InputError(f"the scaling Dataset has no finite {y}")
    ticks = sorted({float(v) for v in np.asarray(ds[x].values, dtype=np.float64).ravel()})
    low, high = ticks[0], ticks[-1]
    pad = 0.5 if high - low < 1 else 0.08 * (high - low)
    return _both(hv.Overlay(elements), {
        "title": title, "show_grid": True, "xlim": (low - pad, high + pad),
        "ylim": (0, 1.15 * top if top > 0 else 1.0), "legend_position": "right"},
        {"fig_inches": (5.5, 3.6), "hooks": [_integer_ticks(ticks), _legend_beside()]},
        {"width": 620, "height": 380, "xticks": [int(t) for t in ticks]})


def scaling_rmse(ds, title: str | None = None):
    """Analysis RMSE per cycle of a scaling study at its largest rank count, one curve per
    size: says which study it is (strong: total size; weak: size per rank)."""
    hv = _hv()
    mode = str(ds.attrs.get("mode", "strong"))
    largest = ds.isel(ranks=-1)
    ranks = int(largest["ranks"])
    units = ds["rmse_analysis"].attrs.get("units", "1")
    y_label = axis_label("rmse_analysis", units if units != "1" else "non-dimensional")
    cycles = np.asarray(ds["cycle"].values, dtype=np.float64)
    elements = []
    for index, size in enumerate(ds["size"].values):
        values = np.asarray(largest["rmse_analysis"].sel(size=size).values, dtype=np.float64)
        elements.append(_line(hv.Curve((cycles, values), "cycle", y_label,
                                       label=_size_label(size, mode)),
                              PALETTE[index % len(PALETTE)],
                              linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                              marker=MARKERS[index % len(MARKERS)], every=1))
    return _both(hv.Overlay(elements), {
        "title": title or f"{mode} scaling: analysis RMSE per cycle on {ranks} rank(s)",
        "show_grid": True, "legend_position": "right"},
        {"fig_inches": (5.5, 3.6), "hooks": [_legend_beside()]},
        {"width": 620, "height": 380})


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
        Left: time per cycle (s; ms when every cycle takes under 0.1 s) with the ideal
        (dashed: ``T(p0) p0 / p`` strong, log-log; ``T(p0)`` weak, linear time axis from 0);
        right: efficiency with the perfect value 1 (dashed).
    """
    hv = _hv()
    mode = str(ds.attrs.get("mode", "strong"))
    title = title or f"{mode} scaling"
    ranks = np.asarray(ds["ranks"].values, dtype=np.float64)
    times, effs = [], []
    top_eff = 1.0
    eff_label = "parallel efficiency"
    # Milliseconds for short cycles: tick labels like "0.00125" crowd the panel title.
    finite = np.asarray(ds["time_per_cycle_s"].values, dtype=np.float64)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    scale, time_label = ((1e3, "time per cycle (ms)") if finite.size and finite.max() < 0.1
                         else (1.0, "time per cycle (s)"))
    for index, size in enumerate(ds["size"].values):
        colour, marker = PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]
        point = ds.sel(size=size)
        label = _size_label(size, mode)
        t = np.asarray(point["time_per_cycle_s"].values, dtype=np.float64) * scale
        e = np.asarray(point["efficiency"].values, dtype=np.float64)
        ok = np.isfinite(t) & (t > 0)
        if not ok.any():
            continue
        p0, t0 = ranks[ok][0], t[ok][0]
        ideal = t0 * p0 / ranks[ok] if mode == "strong" else np.full(ok.sum(), t0)
        times += [_line(hv.Curve((ranks[ok], t[ok]), "MPI ranks", time_label), colour),
                  _points(hv.Scatter((ranks[ok], t[ok]), "MPI ranks", time_label, label=label),
                          colour, size=7.0, marker=marker),
                  _line(hv.Curve((ranks[ok], ideal), "MPI ranks", time_label), colour,
                        dashed=True, width=1.0)]
        effs += [_line(hv.Curve((ranks[ok], e[ok]), "MPI ranks", eff_label), colour),
                 _points(hv.Scatter((ranks[ok], e[ok]), "MPI ranks", eff_label, label=label),
                         colour, size=7.0, marker=marker)]
        top_eff = max(top_eff, float(np.nanmax(e[ok])))
    if not times:
        raise InputError(f"the {mode}-scaling Dataset has no finite time per cycle")
    ticks = [int(r) for r in ranks]
    single = len(ticks) == 1
    # Weak scaling's ideal is flat: a linear axis from 0 shows a 10% loss as 10%, where a
    # log axis over a narrow range would magnify it. One rank count: linear axes too.
    top_time = max(float(np.nanmax(c.dimension_values(1))) for c in times)
    time_axes = {"logy": True} if mode == "strong" and not single else {
        "logy": False, "ylim": (0, 1.15 * top_time)}
    x_axes = {"logx": not single, "xlim": (ticks[0] - 0.5, ticks[-1] + 0.5) if single else
              (ticks[0] / 1.3, ticks[-1] * 1.3)}
    time_plot = _both(hv.Overlay(times), {
        "title": f"{title}: time per cycle (dashed: ideal)", **x_axes, **time_axes,
        "show_grid": True, "legend_position": "bottom_right"},
        {"aspect": 1.3, "hooks": [readable_log_ticks, _box_aspect(1.3), _integer_ticks(ticks),
                                  _legend_beside(), _title_above_ticks()]},
        {"width": 460, "height": 360, "xticks": ticks})
    eff_plot = _both(hv.Overlay([*effs, _reference(hv.HLine(1.0))]), {
        "title": f"{title}: efficiency", **x_axes, "show_grid": True,
        "ylim": (0, 1.1 * top_eff), "legend_position": "bottom_left"},
        {"aspect": 1.3, "hooks": [readable_log_ticks, _box_aspect(1.3), _integer_ticks(ticks),
                                  _legend_beside(), _title_above_ticks()]},
        {"width": 460, "height": 360, "xticks": ticks})
    return _both(hv.Layout([time_plot, eff_plot]).cols(2),
                 matplotlib={"sublabel_format": "", "hspace": 1.2})


# ---------------------------------------------------------------------------------------
# Training throughput


def throughput(table, y: str = "samples_per_s", y_label: str | None = None,
               title: str | None = None, ideal: bool | None = None):
    """A throughput measure against devices, one series per strategy.

    Series with one device count are drawn as markers only (their legend entry is a
    marker); strategies measured at the same device count are set slightly apart
    horizontally so no marker hides another; the y axis starts at zero and the x axis
    leaves room around the first and last device counts.

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
    y_label = y_label or axis_label(y, units or None)
    if not re.search(r"\(.+\)\s*$", y_label) and units:
        y_label = f"{y_label} ({units})"
    families = ("single process", "ddp", "fsdp", "deepspeed")
    strategies = sorted(dict.fromkeys(table["strategy"].values.tolist()), key=lambda label: (
        next((i for i, f in enumerate(families) if label.startswith(f)), len(families)), label))
    devices_all = np.asarray(table["devices"].values)
    values_all = np.asarray(table[y].values, dtype=np.float64)
    shared = {int(d): [s for s in strategies
                       if np.any((np.asarray(table["strategy"].values) == s) & (devices_all == d))]
              for d in np.unique(devices_all)}
    elements, top = [], 0.0
    for index, strategy in enumerate(strategies):
        colour, marker = PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]
        rows = np.asarray(table["strategy"].values) == strategy
        devices = np.unique(devices_all[rows])
        values = np.array([np.nanmean(values_all[rows & (devices_all == d)]) for d in devices])
        # Strategies at the same device count sit 0.06 apart, centred on it.
        offsets = np.array([0.06 * (shared[int(d)].index(strategy)
                                    - (len(shared[int(d)]) - 1) / 2) for d in devices])
        xs = devices.astype(np.float64) + offsets
        top = max(top, float(np.nanmax(values)) if values.size else 0.0)
        if devices.size > 1:
            elements.append(_line(hv.Curve((xs, values), "devices", y_label), colour,
                                  linestyle=LINE_STYLES[index % len(LINE_STYLES)]))
        elements.append(_points(hv.Scatter((xs, values), "devices", y_label, label=strategy),
                                colour, size=8.0, marker=marker))
    if ideal is None:
        ideal = y in ("samples_per_s", "tokens_per_s")
    if ideal and devices_all.size:
        fewest = devices_all.min()
        base = float(np.nanmax(values_all[devices_all == fewest]))
        span = np.unique(devices_all).astype(np.float64)
        elements.append(_reference(hv.Curve((span, base * span / fewest), "devices", y_label,
                                            label="linear scaling")))
        top = max(top, float(base * span.max() / fewest))
    ticks = [int(d) for d in np.unique(devices_all)]
    low, high = min(ticks), max(ticks)
    pad = 0.5 if high - low < 2 else 0.1 * (high - low)
    return _both(hv.Overlay(elements), {
        "title": title or f"{y_label} against devices", "show_grid": True,
        "xlim": (low - pad, high + pad), "ylim": (0, 1.12 * top if top > 0 else 1.0),
        "legend_position": "right"},
        {"fig_inches": (5.2, 3.6), "hooks": [_integer_ticks(ticks), _legend_beside(),
                                             _title_above_ticks()]},
        {"width": 560, "height": 380, "xticks": ticks})


def throughput_figure(table, title: str = "ViT training"):
    """Samples/s of the whole job (with linear scaling, dashed) and achieved TFLOPS per
    device, side by side; the right panel's legend names the strategies of both."""
    hv = _hv()
    left = throughput(table, "samples_per_s", "samples/s (whole job)",
                      f"{title}: samples/s (dashed: linear)")
    left = _both(left, {"show_legend": False}, {"hooks": [_integer_ticks(
        [int(d) for d in np.unique(np.asarray(table["devices"].values))])]})
    right = throughput(table, "tflops_per_device", "achieved TFLOPS per device",
                       f"{title}: TFLOPS per device")
    return _both(hv.Layout([left, right]).cols(2),
                 matplotlib={"sublabel_format": "", "hspace": 0.45})


# ---------------------------------------------------------------------------------------
# Fields

_SIGNED_MAP = "RdBu_r"
_ERROR_WORDS = ("error", "difference", "increment", "anomaly", " - ", "−")


def _colorbar_below(plot, element) -> None:
    """matplotlib hook: the colour bar's label (a short unit) under it, horizontal, and the
    panel's title in a smaller font: a label along the bar's side runs into the next
    panel's axis label, one above it into the title."""
    colorbar = plot.handles.get("cbar")
    ax = plot.handles.get("axis")
    if ax is not None:
        ax.title.set_fontsize(10)
    if colorbar is None:
        return
    label = colorbar.ax.get_ylabel() or colorbar.ax.get_xlabel()
    colorbar.ax.tick_params(labelsize=8)
    formatter = colorbar.ax.yaxis.get_major_formatter()
    if hasattr(formatter, "set_useOffset"):
        formatter.set_useOffset(False)  # "290.5", not "0.5" and a "+2.9e2" over the bar
    if label:
        colorbar.ax.set_ylabel("")
        # Left-aligned at the bar: a longer label runs into the free space on its right.
        colorbar.ax.set_xlabel(label, fontsize=9, labelpad=4, loc="left")


def _wrapped(title: str, width: int = 34) -> str:
    """A long panel title on two lines (image panels are narrow)."""
    import textwrap

    return "\n".join(textwrap.wrap(title, width)) if len(title) > width else title


def _panel_layout(n: int, cols: int | None) -> int:
    """Columns for ``n`` panels: as asked, else the squarest grid with no empty slot when
    one exists (4 → 2 × 2, 6 → 3 × 2, 8 → 4 × 2), at most 4 columns."""
    if cols:
        return max(1, min(cols, n))
    if n <= 3:
        return n
    square = math.ceil(math.sqrt(n))
    for c in range(square, 5):
        if n % c == 0:
            return c
    return min(square, 4)


def _image(field: np.ndarray, xs, ys, kdims, vdim: str, title: str, cmap: str,
           clim: tuple[float, float]):
    hv = _hv()
    image = hv.Image((xs, ys, field), kdims, vdim)
    return _both(image, {"title": _wrapped(title), "colorbar": True, "cmap": cmap, "clim": clim},
                 {"fig_inches": 3.0, "aspect": "equal", "hooks": [_colorbar_below]},
                 {"width": 320, "height": 270, "tools": ["hover"]})


def _unit_text(units: str) -> str:
    return "dimensionless" if units in ("1", "") else units


def fields(panels: Mapping[str, np.ndarray], x_km: np.ndarray | None = None,
           y_km: np.ndarray | None = None, units: str = "K", symmetric: bool = False,
           cols: int | None = None):
    """Images of 2-D fields, each with its colour bar (e.g. truth / forecast / error).

    Parameters
    ----------
    panels : mapping of title to array, shape (ny, nx)
    x_km, y_km : arrays, optional
        Coordinates in km (default: grid indices).
    units : str
        Units of the fields, shown above each colour bar (``"1"``: dimensionless).
    symmetric : bool
        Centre every panel's colour range on zero with a diverging map. Panels whose title
        says error, difference or anomaly (or holds " - ") each get their own range,
        symmetric about zero; the other panels share one range (diverging and symmetric
        when their values have both signs), so that they compare with each other.
    cols : int, optional
        Panels per row (default: a grid without empty slots where one exists).
    """
    hv = _hv()
    images = []
    kdims = ["x (km)", "y (km)"] if x_km is not None else ["x (grid point)", "y (grid point)"]
    arrays = {title: np.asarray(field, dtype=np.float64) for title, field in panels.items()}
    differences = {t for t in arrays if any(w in t.lower() for w in _ERROR_WORDS)}
    # The other fields share one range, so that truth and forecast compare.
    shared = [a for t, a in arrays.items() if t not in differences]
    low = min((float(np.nanmin(a)) for a in shared), default=0.0)
    high = max((float(np.nanmax(a)) for a in shared), default=1.0)
    for title, field in arrays.items():
        ny, nx = field.shape
        xs = x_km if x_km is not None else np.arange(nx)
        ys = y_km if y_km is not None else np.arange(ny)
        lo, hi = ((float(np.nanmin(field)), float(np.nanmax(field))) if title in differences
                  else (low, high))
        if symmetric or title in differences or lo < 0 < hi:
            lim = max(abs(lo), abs(hi)) or 1.0
            cmap, clim = _SIGNED_MAP, (-lim, lim)
        else:
            cmap, clim = "viridis", (lo, hi if hi > lo else lo + 1.0)
        images.append(_image(field, xs, ys, kdims, _unit_text(units), title, cmap, clim))
    return _both(hv.Layout(images).cols(_panel_layout(len(images), cols)),
                 matplotlib={"sublabel_format": "", "hspace": 0.55, "vspace": 0.35})


def field_panels(rows: Mapping[str, Mapping[str, np.ndarray]], x_km: np.ndarray | None = None,
                 y_km: np.ndarray | None = None, units: str = "K", cmap: str = "viridis",
                 variable: str = "θ", error_quantile: float = 0.99):
    """Rows of 2-D field snapshots (e.g. truth / forecast mean / analysis mean / error).

    Parameters
    ----------
    rows : mapping of row title to (mapping of panel name to array, shape (ny, nx))
        Every row should have the same panels. Fields (panels not named "error") share one
        colour range across the figure, so they compare with each other: a diverging map
        symmetric about zero when they hold both signs (anomalies), else ``cmap``.
        Each error panel gets its own range symmetric about zero (``RdBu_r``), set by the
        ``error_quantile`` of its absolute values, so a 1 K error is as visible as a 30 K
        one in another row; its colour bar gives the scale.
    x_km, y_km : arrays, optional
        Grid coordinates in km (default: grid point indices).
    units : str
        Units of the fields (K for SQG potential temperature).
    cmap : str
        Colour map of unsigned fields.
    variable : str
        Symbol of the field in the colour-bar labels.
    error_quantile : float
        Quantile of ``|error|`` at the ends of an error panel's colour range (values beyond
        saturate), in (0, 1].

    Returns
    -------
    holoviews.Layout
        One row per entry of ``rows``.
    """
    hv = _hv()
    if not rows:
        raise InputError("field_panels needs at least one row")
    if not 0 < error_quantile <= 1:
        raise InputError(f"error_quantile={error_quantile}: give a quantile in (0, 1]")
    values = [np.asarray(a, dtype=np.float64) for row in rows.values() for name, a in row.items()
              if "error" not in name.lower()]
    low = min((float(np.nanmin(v)) for v in values), default=0.0)
    high = max((float(np.nanmax(v)) for v in values), default=1.0)
    if high <= low:
        high = low + 1.0
    if low < 0 < high:
        bound = max(-low, high)
        field_map, field_clim = _SIGNED_MAP, (-bound, bound)
    else:
        field_map, field_clim = cmap, (low, high)
    kdims = ["x (km)", "y (km)"] if x_km is not None else ["x (grid point)", "y (grid point)"]
    panels = []
    for row_title, row in rows.items():
        for name, field in row.items():
            field = np.asarray(field, dtype=np.float64)
            ny, nx = field.shape
            xs = x_km if x_km is not None else np.arange(nx)
            ys = y_km if y_km is not None else np.arange(ny)
            if "error" in name.lower():
                magnitude = np.abs(field[np.isfinite(field)])
                limit = float(np.quantile(magnitude, error_quantile)) if magnitude.size else 1.0
                image = _image(field, xs, ys, kdims, f"{name} ({units})",
                               f"{row_title}: {name}" if row_title else name, _SIGNED_MAP,
                               (-(limit or 1.0), limit or 1.0))
            else:
                image = _image(field, xs, ys, kdims, f"{variable} ({units})",
                               f"{row_title}: {name}" if row_title else name, field_map,
                               field_clim)
            panels.append(image)
    columns = max(len(row) for row in rows.values())
    return _both(hv.Layout(panels).cols(columns),
                 matplotlib={"sublabel_format": "", "hspace": 0.55, "vspace": 0.45})


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
                 {"fig_inches": 5, "hooks": [readable_log_ticks, _box_aspect(1.6)]},
                 {"width": 520, "height": 340})


def rollout_rmse_figure(summary: Mapping[str, Any], title: str = "test rollout RMSE (both levels)"):
    """RMSE against lead time of a surrogate, persistence and climatology.

    Parameters
    ----------
    summary : mapping
        ``RolloutScores.to_dict()``: ``lead_hours`` (h) and ``rmse_all_K``,
        ``persistence_rmse_all_K``, ``climatology_rmse_all_K`` (K), one value per lead.
    title : str

    Returns
    -------
    holoviews.Overlay
        One labelled curve per forecast, lead (h) against RMSE (K).
    """
    hv = _hv()
    curves = [hv.Curve((summary["lead_hours"], summary[f"{key}rmse_all_K"]), "lead (h)",
                       "RMSE (K)", label=label)
              for key, label in (("", "ViT"), ("persistence_", "persistence"),
                                 ("climatology_", "climatology"))]
    return _both(hv.Overlay(curves), common={"title": title},
                 matplotlib={"fig_inches": (5.6, 3.6), "hooks": [_legend_beside()]},
                 bokeh={"legend_position": "right", "width": 560})


def prediction_panels(truth: np.ndarray, forecast: np.ndarray, lead_hours: float,
                      leads: Sequence[int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Rows of truth / forecast / error panels for :func:`field_panels`, one per lead.

    Parameters
    ----------
    truth, forecast : ndarray, shape (n_leads, ny, nx)
        One level of the verifying truth and of the forecast at leads 1 ... n_leads (K).
    lead_hours : float
        Hours per lead step.
    leads : sequence of int, optional
        Zero-based lead indices to show; default the first and the last.
    """
    if truth.shape != forecast.shape or truth.ndim != 3:
        raise ValueError(f"truth {truth.shape} and forecast {forecast.shape} must both be "
                         "(n_leads, ny, nx)")
    chosen = sorted({0, len(truth) - 1}) if leads is None else list(leads)
    return {f"+{(k + 1) * lead_hours:g} h, z = 0": {
        "truth": truth[k], "ViT": forecast[k], "ViT - truth (error)": forecast[k] - truth[k]}
        for k in chosen}
