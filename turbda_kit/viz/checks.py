"""Is a rendered figure readable? Data present, axes labelled with units, no text on text.

:func:`figure_problems` inspects a matplotlib figure (what :func:`turbda_kit.viz.plots.render`
returns, and what the PNGs are made of) and lists what a reader would stumble over:

* a plot panel with no data drawn (no finite line point, marker, bar or image);
* an axis without a label, or whose label gives no unit in parentheses (``time (h)``,
  ``analysis RMSE (K)``) unless it is a count or a ratio named in ``unitless`` or a
  ratio written ``a / b``;
* a colour bar without a label or title saying its unit;
* two text boxes that overlap — titles, axis labels, tick labels, legends, colour bars
  (each with its ticks and label) — compared by their window extents in pixels;
* a legend that hides data: a line vertex or marker inside the legend's box.

(Text outside the axes grid is not a problem: PNGs are saved with a tight bounding box.)

The test suite runs every figure builder through it (``tests/viz/test_readability.py``).

Example
-------
>>> from turbda_kit.viz.plots import render, rmse_figure         # doctest: +SKIP
>>> assert figure_problems(render(rmse_figure(runs))) == []        # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..optional import require

__all__ = ["UNITLESS_LABELS", "figure_problems"]

UNITLESS_LABELS = ("MPI ranks", "ranks", "devices", "rank of the truth", "frequency",
                   "parallel efficiency", "efficiency", "ensemble member", "cycle")
"""Axis labels of counts and ratios that need no unit."""

_UNIT = re.compile(r"\([^()]*\S[^()]*\)\s*$")


def _visible_text(text: Any) -> bool:
    return bool(text is not None and text.get_visible() and str(text.get_text()).strip())


def _shrunk(box: Any, pixels: float = 1.0):
    """A bounding box made ``pixels`` smaller on every side (touching is not overlapping)."""
    Bbox = require("matplotlib.transforms", "figure checks").Bbox
    x0, y0, x1, y1 = box.x0 + pixels, box.y0 + pixels, box.x1 - pixels, box.y1 - pixels
    return Bbox([[x0, y0], [max(x0, x1), max(y0, y1)]])


def _overlap(a: Any, b: Any) -> bool:
    a, b = _shrunk(a), _shrunk(b)
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _is_colorbar(ax: Any) -> bool:
    return getattr(ax, "_colorbar", None) is not None or ax.get_label() == "<colorbar>"


def _describe(ax: Any, index: int) -> str:
    title = ax.get_title() or ax.get_title(loc="left") or ax.get_title(loc="right")
    return f"panel {index + 1}" + (f" {title!r}" if title else "")


def _has_data(ax: Any) -> bool:
    for line in ax.get_lines():
        data = np.asarray(line.get_ydata(), dtype=float) if len(line.get_ydata()) else []
        if line.get_visible() and np.isfinite(data).any() and line.get_label() not in (
                "_guide",) and not getattr(line, "_turbda_guide", False):
            return True
    for collection in ax.collections:
        offsets = collection.get_offsets() if hasattr(collection, "get_offsets") else []
        if len(offsets) or collection.get_paths():
            if collection.get_visible():
                return True
    if ax.images or any(p.get_visible() and p.get_height() != 0 for p in ax.patches
                        if hasattr(p, "get_height")):
        return True
    return False


def _label_problem(label: str, which: str, where: str, unitless: Iterable[str]) -> str | None:
    text = label.strip()
    if not text:
        return f"{where}: the {which} axis has no label"
    # "a / b" (spaced) is a ratio of like quantities: no unit to give.
    if _UNIT.search(text) is None and text not in unitless and " / " not in text:
        return f"{where}: the {which} axis label {text!r} gives no unit in parentheses"
    return None


def _text_boxes(fig: Any, renderer: Any) -> list[tuple[str, Any]]:
    """(what, window extent) of every text a reader sees, legends and colour bars whole."""
    boxes: list[tuple[str, Any]] = []
    if fig._suptitle is not None and _visible_text(fig._suptitle):
        boxes.append(("figure title", fig._suptitle.get_window_extent(renderer)))
    for text in fig.texts:
        if _visible_text(text):
            boxes.append((f"figure text {text.get_text()!r}", text.get_window_extent(renderer)))
    for legend in fig.legends:
        if legend.get_visible():
            boxes.append(("figure legend", legend.get_window_extent(renderer)))
    for index, ax in enumerate(a for a in fig.axes if a.get_visible()):
        where = _describe(ax, index)
        if _is_colorbar(ax):
            boxes.append((f"colour bar of {where}", ax.get_tightbbox(renderer)))
            continue
        for loc in ("center", "left", "right"):
            title = ax.get_title(loc=loc)
            if title:
                artist = {"center": ax.title, "left": ax._left_title,
                          "right": ax._right_title}[loc]
                boxes.append((f"title of {where}", artist.get_window_extent(renderer)))
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if _visible_text(axis.label):
                boxes.append((f"{name} label of {where}", axis.label.get_window_extent(renderer)))
            ticks = [t for t in axis.get_ticklabels(which="both") if _visible_text(t)]
            view = sorted(axis.get_view_interval())
            for tick in ticks:
                position = tick.get_position()[0 if name == "x" else 1]
                if view[0] - 1e-9 * abs(view[1] - view[0]) <= position <= view[1] + 1e-9 * abs(
                        view[1] - view[0]):
                    boxes.append((f"{name} tick label {tick.get_text()!r} of {where}",
                                  tick.get_window_extent(renderer)))
        for text in ax.texts:
            if _visible_text(text):
                boxes.append((f"text {text.get_text()!r} in {where}",
                              text.get_window_extent(renderer)))
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            boxes.append((f"legend of {where}", legend.get_window_extent(renderer)))
    return boxes


def _legend_hides_data(fig: Any, renderer: Any) -> list[str]:
    problems = []
    for index, ax in enumerate(a for a in fig.axes if a.get_visible() and not _is_colorbar(a)):
        legends = [ax.get_legend()] if ax.get_legend() is not None else []
        for legend in legends:
            box = _shrunk(legend.get_window_extent(renderer), 2.0)
            points = []
            for line in ax.get_lines():
                if line.get_visible() and len(line.get_xdata()):
                    xy = np.column_stack([np.asarray(line.get_xdata(), dtype=float),
                                          np.asarray(line.get_ydata(), dtype=float)])
                    points.append(ax.transData.transform(xy[np.isfinite(xy).all(axis=1)]))
            for collection in ax.collections:
                offsets = getattr(collection, "get_offsets", lambda: [])()
                if len(offsets):
                    offsets = np.asarray(offsets, dtype=float)
                    points.append(ax.transData.transform(offsets[np.isfinite(offsets).all(1)]))
            if points:
                xy = np.concatenate([p for p in points if len(p)] or [np.empty((0, 2))])
                inside = ((xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0)
                          & (xy[:, 1] < box.y1))
                if inside.any():
                    problems.append(f"the legend of {_describe(ax, index)} hides "
                                    f"{int(inside.sum())} data point(s)")
    return problems


def figure_problems(fig: Any, unitless: Iterable[str] = UNITLESS_LABELS) -> list[str]:
    """What makes a rendered figure hard to read; empty when nothing does.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    unitless : iterable of str
        Axis labels that may go without a unit (counts, ratios).

    Returns
    -------
    list of str
        One line per problem, naming the panel (by its title) and the texts involved.
    """
    if not hasattr(fig.canvas, "get_renderer"):  # holoviews' figures come without a canvas
        FigureCanvasAgg = require("matplotlib.backends.backend_agg", "figure checks").FigureCanvasAgg
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    unitless = tuple(unitless)
    problems: list[str] = []
    panels = [a for a in fig.axes if a.get_visible()]
    for index, ax in enumerate(panels):
        where = _describe(ax, index)
        if _is_colorbar(ax):
            label = ax.get_ylabel() or ax.get_xlabel() or ax.get_title() or ax.get_title("left")
            if not label.strip():
                problems.append(f"colour bar of {where} has no label with its unit")
            continue
        if not _has_data(ax):
            problems.append(f"{where} has no data")
        for which, label in (("x", ax.get_xlabel()), ("y", ax.get_ylabel())):
            found = _label_problem(label, which, where, unitless)
            if found:
                problems.append(found)
    boxes = _text_boxes(fig, renderer)
    for i, (name_a, box_a) in enumerate(boxes):
        for name_b, box_b in boxes[i + 1:]:
            if _overlap(box_a, box_b):
                problems.append(f"{name_a} overlaps {name_b}")
    problems += _legend_hides_data(fig, renderer)
    return problems
