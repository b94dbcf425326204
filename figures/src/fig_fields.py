# %% [markdown]
# # Figure — truth, forecast, analysis and error snapshots
# For each chosen run and cycle, one row of panels of one level (surface `z = 0` by
# default): the truth, the forecast ensemble mean, the analysis ensemble mean and the
# analysis error (analysis mean − truth), in K, on axes in km. The fields (temperature
# anomalies) share one diverging colour range, symmetric about zero, so they compare
# across rows; each error panel has its own symmetric range (its 99th percentile of
# |error|), so a 1 K error shows as clearly as a 30 K one, and its colour bar gives the
# scale. Read from
# saved results only (`coupled_<run>.nc`, `cycling_<filter>.nc`, written with the ensemble
# means). Writes `fig_fields.png` / `.html` and `fig_fields.json`.
#
# Runs are found by name in `run_dirs` (each searched with its subdirectories, so a
# pipeline directory works); `files` adds result files, each `PATH` or `LABEL=PATH`.

# %% tags=["parameters"]
out_dir: str = "."  # where the figure goes (set by `turbda run`)
run_dirs: list = []  # directories holding coupled_*.nc / cycling_*.nc, searched with their subdirectories; empty: the parent of out_dir
files: list = []  # extra result files: paths, each optionally prefixed by a label and an equals sign
runs: list = []  # run names, one row block each (e.g. vit_ensf, sqg_letkf); empty: every run found
cycles: list = [-1]  # cycle numbers as stored (1 is the first analysis); negative counts from the end
level: int = 0  # vertical level index: 0 is the surface, 1 the lid
forecast_error: bool = False  # add a panel with the forecast error
html: bool = True  # also write the interactive HTML (bokeh)

# %%
from pathlib import Path

import numpy as np

from turbda_kit.errors import InputError
from turbda_kit.experiments.results import (
    MEANS_VARIABLES,
    as_json,
    default_run_dirs,
    find_runs,
    grid_km,
    load_runs,
    select_cycles,
)
from turbda_kit.io import write_json
from turbda_kit.viz.plots import field_panels, run_style, save, show

out = Path(out_dir)
dirs = default_run_dirs(run_dirs, out) if run_dirs or not files else []
paths = find_runs(dirs, files=files, runs=runs)
results = load_runs(paths, require=MEANS_VARIABLES)
if not cycles:
    raise InputError("cycles is empty: give at least one cycle number (e.g. [-1], the last)")
for name, ds in results.items():
    if "z" not in ds["truth"].dims or ds["truth"].ndim != 4:
        raise InputError(f"run {name!r} ({paths[name]}) holds states of dims "
                         f"{ds['truth'].dims[1:]}: this figure draws 2-D levels of SQG runs "
                         "(cycle, z, y, x)")
    if not 0 <= level < ds.sizes["z"]:
        raise InputError(f"level={level}: run {name!r} has levels 0..{ds.sizes['z'] - 1}")
    print(f"{name:>18}: {paths[name]} (cycles {int(ds.cycle[0])}..{int(ds.cycle[-1])})")

# %% [markdown]
# ## Panels

# %%
rows, summary = {}, {}
for name, ds in results.items():
    label = run_style(name, ds.attrs)[0]
    where = "surface" if level == 0 else "lid"
    if ds["z"].attrs.get("units") == "m":
        where += f" (z = {float(ds['z'].values[level]) / 1e3:g} km)"
    for cycle in select_cycles(ds, cycles):
        at = ds.sel(cycle=cycle).isel(z=level)
        truth = at["truth"].values
        row = {"truth": truth, "forecast mean": at["forecast_mean"].values,
               "analysis mean": at["analysis_mean"].values,
               "analysis error": at["analysis_mean"].values - truth}
        if forecast_error:
            row["forecast error"] = at["forecast_mean"].values - truth
        hours = float(at["time_hours"]) if "time_hours" in at else float(cycle)
        title = f"{label}, {hours:g} h, {where}"
        rows[title] = row
        summary[title] = {"run": name, "file": str(paths[name]), "cycle": cycle, "hours": hours,
                          "analysis_rmse_K": float(np.sqrt(np.mean(row["analysis error"] ** 2))),
                          "forecast_rmse_K": float(np.sqrt(np.mean(
                              (row["forecast mean"] - truth) ** 2)))}
        print(f"{title}: level-{level} RMSE analysis {summary[title]['analysis_rmse_K']:.3f} K, "
              f"forecast {summary[title]['forecast_rmse_K']:.3f} K")

# %% [markdown]
# ## The figure

# %%
grids = {(ds.sizes["y"], ds.sizes["x"]) for ds in results.values()}
# Axes in km need one grid for all rows; runs at several resolutions are drawn in grid points.
x_km, y_km = grid_km(next(iter(results.values()))) if len(grids) == 1 else (None, None)
figure = field_panels(rows, x_km=x_km, y_km=y_km, units="K")
written = save(figure, out / "fig_fields", html=html)
write_json(out / "fig_fields.json", as_json({"level": level, "panels": summary,
                                             "figures": written}))
print("wrote", *written)
show(figure)
