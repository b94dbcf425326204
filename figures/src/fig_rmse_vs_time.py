# %% [markdown]
# # Figure — RMSE against time (the layout of SC24 Fig. 4)
# Analysis (or forecast) RMSE in K against model time for the coupled ViT + EnSF runs and
# their physics baselines, read from saved results only: `coupled_<run>.nc`
# (`06_coupled_vit_ensf`) and `cycling_<filter>.nc` (`05_da_cycling`). Two grey lines give
# the scale: the observation error (an analysis that copied the observations of every
# point would score it) and the climatological spread of the truth (a run that has
# forgotten the truth scores about that). Long runs are drawn as a running mean (bold)
# over the per-cycle values (thin): shock cycles make the per-cycle curves a band. Writes
# `fig_rmse_vs_time.png` (matplotlib), `fig_rmse_vs_time.html` (bokeh, self-contained) and
# `fig_rmse_vs_time.json` (the files read and each run's mean RMSE beside the reported one).
#
# Runs are found by name in `run_dirs` (each searched with its subdirectories, so a
# pipeline directory works); `files` adds result files, each `PATH` or `LABEL=PATH`.

# %% tags=["parameters"]
out_dir: str = "."  # where the figure goes (set by `turbda run`)
run_dirs: list = []  # directories holding coupled_*.nc / cycling_*.nc, searched with their subdirectories; empty: the parent of out_dir (a pipeline directory)
files: list = []  # extra result files: paths, each optionally prefixed by a label and an equals sign
runs: list = []  # run names to draw, in order (vit_only, vit_ensf, vit_ensf_shocks, sqg_letkf, sqg_ensf, sqg_free, letkf, ensf, free); empty: every run found
variable: str = "rmse_analysis"  # rmse_analysis or rmse_forecast
logy: bool = False  # logarithmic RMSE axis
smooth_cycles: int = -1  # bold running mean over this many cycles; -1: 10 for runs of 60 cycles or more, else none; 0: none
reference_lines: bool = True  # draw the observation error and the climatological spread
climatology_K: float = -1.0  # the climatological spread line's level; -1: from the runs' saved truth (runs of ten days or more)
title: str = ""  # figure title; empty: a default one
html: bool = True  # also write the interactive HTML (bokeh)

# %%
import math
from pathlib import Path

import numpy as np

from turbda_kit.errors import InputError
from turbda_kit.experiments.results import (
    as_json,
    default_run_dirs,
    find_runs,
    load_runs,
    spinup_cycles,
)
from turbda_kit.io import write_json
from turbda_kit.viz.plots import (
    climatological_spread,
    observation_error_level,
    rmse_figure,
    run_style,
    save,
    show,
)

if variable not in ("rmse_analysis", "rmse_forecast"):
    raise InputError(f"variable={variable!r}: choose rmse_analysis or rmse_forecast")
out = Path(out_dir)
dirs = default_run_dirs(run_dirs, out) if run_dirs or not files else []
paths = find_runs(dirs, files=files, runs=runs)
results = load_runs(paths, require=(variable, "time_hours"))
for name, path in paths.items():
    print(f"{name:>18}: {path}")

# %% [markdown]
# ## Mean RMSE after spin-up, beside the value the paper reports

# %%
summary = {}
for name, ds in results.items():
    scored = ds[variable].values[spinup_cycles(ds):]
    reported = ds.attrs.get("reported_rmse_sc24", ds.attrs.get("reported_rmse", math.nan))
    summary[name] = {"label": run_style(name, ds.attrs)[0], "file": str(paths[name]),
                     f"mean_{variable}_K": float(np.nanmean(scored)),
                     "reported_K": float(reported), "cycles": int(ds.sizes["cycle"]),
                     "hours": float(ds["time_hours"].values[-1])}
    print(f"{summary[name]['label']:>22}: mean {float(np.nanmean(scored)):.3f} K over "
          f"{scored.size} cycles (reported: {float(reported):.3g} K)")
levels = {"observation_error_K": next((v for v in map(observation_error_level, results.values())
                                       if v is not None), None),
          "climatological_spread_K": climatology_K if climatology_K >= 0 else next(
              (v for v in map(climatological_spread, results.values()) if v is not None), None)}
print(f"observation error {levels['observation_error_K']} K, climatological spread of the "
      f"truth {levels['climatological_spread_K']} K")

# %% [markdown]
# ## The figure

# %%
figure = rmse_figure(results, variable=variable, units="K", title=title or None, logy=logy,
                     smooth_cycles=None if smooth_cycles < 0 else smooth_cycles,
                     reference_lines=reference_lines,
                     climatological=levels["climatological_spread_K"])
written = save(figure, out / "fig_rmse_vs_time", html=html)
write_json(out / "fig_rmse_vs_time.json",
           as_json({"variable": variable, "runs": summary, "reference_levels": levels,
                    "figures": written}))
print("wrote", *written)
show(figure)
