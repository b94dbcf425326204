"""Every figure the kit draws is readable: it has data, axes labelled with units, no text
box over another and no legend over data (:func:`turbda_kit.viz.checks.figure_problems`,
on the matplotlib figure the PNG is made of).

Each figure is built from small result files made by the real writers (the helpers of
``test_plots.py``), as the figure notebooks build them.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from test_plots import make_run, make_scaling_dirs, make_training_dir

from turbda_kit.experiments.results import (
    find_scaling,
    find_training_runs,
    grid_km,
    throughput_table,
)
from turbda_kit.viz import plots
from turbda_kit.viz.checks import figure_problems

matplotlib.use("Agg")
SQG_ATTRS = {"model": "sqg", "model_settings": str({"N": 8, "L": 2.0e7, "H": 1.0e4})}


def assert_readable(figure) -> None:
    import matplotlib.pyplot as plt

    rendered = plots.render(figure)
    try:
        problems = figure_problems(rendered)
    finally:
        plt.close(rendered)
    assert problems == [], "\n".join(problems)


@pytest.fixture(scope="module")
def coupled_runs():
    """The six runs of SC24 Fig. 4 on the toy model, long enough for the running mean."""
    weights = {"vit_only": None, "vit_ensf": 0.7, "vit_ensf_shocks": 0.68, "sqg_letkf": 0.4,
               "sqg_ensf": 0.5, "sqg_free": None}
    return {name: make_run(name, weight, n_cycles=64, attrs=SQG_ATTRS)
            for name, weight in weights.items()}


@pytest.fixture(scope="module")
def scaling_studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    make_scaling_dirs(root)
    return find_scaling([root])


def test_rmse_against_time(coupled_runs):
    figure = plots.rmse_figure(coupled_runs, logy=True)
    assert_readable(figure)
    short = {"letkf": make_run("letkf", 0.4, attrs=SQG_ATTRS), "free": make_run("free", None)}
    assert_readable(plots.rmse_figure(short))
    assert_readable(plots.rmse_vs_time(short, title="05: analysis RMSE"))


def test_spread_skill_and_rank_histograms(coupled_runs):
    runs = {k: coupled_runs[k] for k in ("vit_ensf", "sqg_letkf", "sqg_ensf")}
    assert_readable(plots.spread_skill_figure(runs))
    assert_readable(plots.rank_histograms(runs))


def test_field_snapshots(coupled_runs):
    rows = {}
    for name in ("vit_ensf", "vit_only"):
        at = coupled_runs[name].isel(cycle=-1, z=0)
        rows[f"{plots.run_style(name)[0]}, 768 h, surface (z = 0 km)"] = {
            "truth": at.truth.values, "forecast mean": at.forecast_mean.values,
            "analysis mean": at.analysis_mean.values,
            "analysis error": (at.analysis_mean - at.truth).values}
    x_km, y_km = grid_km(coupled_runs["vit_ensf"])
    assert x_km is not None
    assert_readable(plots.field_panels(rows, x_km=x_km, y_km=y_km))


def test_notebook_field_figures():
    """01's snapshot, 02's preprocessing panels and 03's prediction against truth."""
    rng = np.random.default_rng(0)
    km = np.arange(16) * 1250.0
    theta = rng.standard_normal((2, 16, 16)).cumsum(axis=-1)
    assert_readable(plots.fields({"surface (z = 0), t = 120 h": theta[0],
                                  "lid (z = H), t = 120 h": theta[1]}, x_km=km, y_km=km,
                                 units="K"))
    names = ("sqg_0", "sqg_10000")
    panels = {f"{plots.level_title(n)}, first step": 290 + theta[j] for j, n in enumerate(names)}
    panels.update({f"{plots.level_title(n)}, train climatology": 290 + 0.5 * theta[j]
                   for j, n in enumerate(names)})
    assert_readable(plots.fields(panels, x_km=km, y_km=km))
    sample = {f"{plots.level_title(n)}, normalised input": theta[j] for j, n in enumerate(names)}
    sample.update({f"{plots.level_title(n)}, target - input": 0.1 * theta[j]
                   for j, n in enumerate(names)})
    assert_readable(plots.fields(sample, x_km=km, y_km=km, units="1"))
    truth = {"truth +12 h (K)": theta[0], "ViT +12 h (K)": theta[0] + 0.3}
    error = {"ViT - truth +12 h (K)": 0.3 + 0.01 * theta[1]}
    # 03 composes two calls with `+`: the kit's layout defaults keep that readable too.
    assert_readable((plots.fields(truth, x_km=km, y_km=km)
                     + plots.fields(error, x_km=km, y_km=km, units="error (K)",
                                    symmetric=True)).cols(3))


@pytest.mark.parametrize("top_ms", [0.5, 0.6, 0.8, 1.0])
def test_weak_scaling_title_clears_a_tick_at_the_top(scaling_studies, top_ms):
    """The weak panel's time axis ends at 1.15x the slowest cycle; where that lands on a
    tick, its label sticks out above the axes (it once overlapped the title in CI, the
    fixture's times being real timings)."""
    from turbda_kit.experiments.scaling import summarize

    ds = scaling_studies["weak"].copy()
    slowest = float(np.nanmax(ds["time_per_cycle_s"].values))
    for component in ("forecast", "halo", "analysis", "reduce", "total"):
        ds[f"time_{component}_s"] = ds[f"time_{component}_s"] * (top_ms / 1.15e3 / slowest)
    assert_readable(plots.scaling_figure(summarize(ds), title="EnSF weak"))


def test_scaling_figures(scaling_studies):
    for mode, ds in scaling_studies.items():
        assert_readable(plots.scaling_figure(ds, title=f"EnSF {mode}"))
        for y in ("time_per_cycle_s", "efficiency"):
            assert_readable(plots.scaling(ds, y=y, by="size", title=f"{mode} scaling"))
        assert_readable(plots.scaling_rmse(ds))
    # The quickstart's case: one rank count, so one point per size.
    one = scaling_studies["strong"].isel(ranks=[0])
    assert_readable(plots.scaling(one, y="time_per_cycle_s", by="size", title="strong"))
    assert_readable(plots.scaling_figure(one))


def test_throughput(tmp_path):
    make_training_dir(tmp_path / "single", "none", 1, [3.0, 30.1])
    make_training_dir(tmp_path / "ddp", "ddp", 2, [3.0, 56.2], style="stage")
    make_training_dir(tmp_path / "zero1", "deepspeed", 2, [3.0, 55.6])
    make_training_dir(tmp_path / "fsdp", "fsdp", 2, [3.0, 48.4])
    table = throughput_table(find_training_runs([tmp_path]))
    assert_readable(plots.throughput_figure(table))


def test_the_checks_find_what_makes_a_figure_unreadable():
    import matplotlib.pyplot as plt

    fig, (left, right, empty) = plt.subplots(1, 3, figsize=(6, 2))
    left.plot([0, 1, 2], [0, 1, 2], label="a curve")
    left.set_xlabel("time (h)")
    left.set_ylabel("RMSE")
    left.legend(loc="center")                       # over the curve's middle point
    left.set_title("a title long enough to run into the title of the next panel")
    right.plot([0, 1], [1, 0])
    right.set_title("the next panel")
    right.set_xlabel("time (h)")
    right.set_ylabel("error (K)")
    image = empty.imshow(np.zeros((2, 2)))
    image.remove()
    fig.colorbar(plt.cm.ScalarMappable(), ax=empty)
    problems = "\n".join(figure_problems(fig))
    plt.close(fig)
    assert "y axis label 'RMSE' gives no unit" in problems
    assert "panel 3 has no data" in problems and "panel 3: the x axis has no label" in problems
    assert "colour bar of panel 4 has no label" in problems
    assert "title of panel 1 'a title long enough" in problems and \
        "overlaps title of panel 2 'the next panel'" in problems
    assert "the legend of panel 1" in problems and "hides 1 data point" in problems
