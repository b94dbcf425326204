"""Scaling plots: time with its ideal, wall and CPU efficiency, CPU utilisation, RMSE."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from turbda_kit.errors import InputError
from turbda_kit.experiments.scaling import ScalingStudy, run_scaling
from turbda_kit.experiments.scaling_results import summarize
from turbda_kit.viz import scaling_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def strong() -> xr.Dataset:
    """A real one-rank study relabelled as 1, 2 and 4 ranks with speed-ups 1, 1.6, 2."""
    one = run_scaling(ScalingStudy(mode="strong", sizes=(256, 512), n_members=4, euler_steps=3,
                                   n_cycles=2, warmup_cycles=1, spinup_steps=5,
                                   steps_per_cycle=2), None, "cpu", show_progress=False,
                      log=False)
    parts = []
    for p, speedup in ((1, 1.0), (2, 1.6), (4, 2.0)):
        part = one.assign_coords(ranks=[p])
        for c in ("forecast", "halo", "analysis", "reduce", "total"):
            part[f"time_{c}_s"] = part[f"time_{c}_s"] / speedup
        part["cores_available_per_rank"] = part["cores_available_per_rank"] * 0 + 4 / p
        parts.append(part)
    return summarize(xr.concat(parts, "ranks").assign_attrs(cores_per_rank=2))


def _curves(overlay):
    return [e for e in overlay if type(e).__name__ == "Curve"]


def test_time_panel_draws_the_ideal_of_each_mode(strong):
    t = strong["time_per_cycle_s"].sel(size=256).values
    curve, _, ideal = list(scaling_plots.time_panel(strong))[:3]
    np.testing.assert_allclose(curve.dimension_values(1), t)
    np.testing.assert_allclose(ideal.dimension_values(1), t[0] / np.array([1, 2, 4]))
    weak = summarize(strong.assign_attrs(mode="weak"))
    _, _, flat = list(scaling_plots.time_panel(weak))[:3]
    np.testing.assert_allclose(flat.dimension_values(1), [t[0]] * 3)


def test_efficiency_panel_shows_wall_and_cpu_time(strong):
    labels = [c.label for c in _curves(scaling_plots.efficiency_panel(strong, "EnSF strong"))]
    assert labels == ["256 points", "256 points, CPU time", "512 points", "512 points, CPU time"]
    wall = _curves(scaling_plots.efficiency_panel(strong))[0]
    np.testing.assert_allclose(wall.dimension_values(1), [1.0, 0.8, 0.5])


def test_utilisation_panel_marks_oversubscribed_points(strong):
    # 4 ranks x 2 cores on 4 CPUs: one CPU per rank for ranks that keep two busy
    assert strong["oversubscribed"].sel(size=256).values.tolist() == [False, False, True]
    panel = scaling_plots.utilisation_panel(strong)
    marks = [e for e in panel if e.label == "oversubscribed"]
    assert len(marks) == 2                                   # one per size
    np.testing.assert_allclose(marks[0].dimension_values(0), [4.0])
    with pytest.raises(InputError, match="cpu_utilisation"):
        scaling_plots.utilisation_panel(strong.drop_vars("cpu_utilisation"))


def test_overview_and_files(strong, tmp_path):
    assert len(scaling_plots.scaling_overview(strong)) == 3
    assert len(scaling_plots.scaling_overview(strong.drop_vars("cpu_utilisation"))) == 2
    written = scaling_plots.save_scaling_plots(strong, tmp_path, html=False)
    assert [p.name for p in written] == ["scaling_strong.png", "scaling_strong_rmse.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in written)
    with pytest.raises(InputError, match="not a scaling Dataset"):
        scaling_plots.scaling_overview(strong.assign_attrs(mode="diagonal"))
