"""Holoviews plot builders: xarray in, a plot out (:mod:`turbda_kit.viz.plots`), and
readability checks of the figures they make (:mod:`turbda_kit.viz.checks`).

In notebooks plots are interactive bokeh plots with inline resources (:func:`show`);
PNGs come from matplotlib (:func:`render`, :func:`save`). Holoviews is imported on first
use, not with this package.
"""

from .checks import figure_problems
from .plots import (
    PALETTE,
    RUN_LINES,
    RUN_STYLES,
    axis_label,
    climatological_spread,
    field_panels,
    fields,
    figure_styles,
    init_notebook,
    level_title,
    observation_error_level,
    rank_histogram,
    rank_histograms,
    render,
    rmse_figure,
    rmse_vs_time,
    run_line,
    run_style,
    save,
    scaling,
    scaling_figure,
    scaling_rmse,
    show,
    spread_ratio_vs_time,
    spread_rmse_vs_time,
    spread_skill,
    spread_skill_figure,
    throughput,
    throughput_figure,
)

__all__ = [
    "PALETTE",
    "RUN_LINES",
    "RUN_STYLES",
    "axis_label",
    "climatological_spread",
    "field_panels",
    "fields",
    "figure_problems",
    "figure_styles",
    "init_notebook",
    "level_title",
    "observation_error_level",
    "rank_histogram",
    "rank_histograms",
    "render",
    "rmse_figure",
    "rmse_vs_time",
    "run_line",
    "run_style",
    "save",
    "scaling",
    "scaling_figure",
    "scaling_rmse",
    "show",
    "spread_ratio_vs_time",
    "spread_rmse_vs_time",
    "spread_skill",
    "spread_skill_figure",
    "throughput",
    "throughput_figure",
]
