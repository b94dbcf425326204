# %% [markdown]
# # Figure — spread against skill, and rank histograms
# Is each ensemble's spread an honest estimate of its error? Per run, read from saved
# results (`coupled_<run>.nc`, `cycling_<filter>.nc`):
#
# * ensemble spread against RMSE, one point per cycle, with the 1:1 line (points below it:
#   an over-confident ensemble);
# * spread / RMSE against time, one curve per run, with the value `sqrt(m / (m + 1))` of a
#   reliable ensemble of `m` members;
# * the rank histogram of the truth within the analysis ensemble (after spin-up), with the
#   flat histogram of a reliable ensemble.
#
# The table gives `spread / RMSE` (root-mean-square over cycles) and the same ratio times
# `sqrt((m + 1) / m)`, which is 1 in expectation for a reliable ensemble of `m` members,
# and the rank histogram's χ² per degree of freedom and outlier ratio (share of the two
# extreme ranks over its expected value `2 / (m + 1)`). Writes `fig_spread_skill.png` /
# `.html`, `fig_rank_histograms.png` / `.html` and `fig_spread_skill.json`.
#
# Runs are found by name in `run_dirs` (each searched with its subdirectories, so a
# pipeline directory works); `files` adds result files, each `PATH` or `LABEL=PATH`.

# %% tags=["parameters"]
out_dir: str = "."  # where the figure goes (set by `turbda run`)
run_dirs: list = []  # directories holding coupled_*.nc / cycling_*.nc, searched with their subdirectories; empty: the parent of out_dir
files: list = []  # extra result files: paths, each optionally prefixed by a label and an equals sign
runs: list = []  # run names to draw, in order; empty: every run found
kind: str = "analysis"  # analysis or forecast (rank histograms are of the analysis)
skip_spinup: bool = True  # leave out each run's spin-up cycles from the scatter and the table
html: bool = True  # also write the interactive HTML (bokeh)

# %%
from pathlib import Path

from turbda_kit.errors import InputError
from turbda_kit.experiments.results import (
    as_json,
    default_run_dirs,
    find_runs,
    load_runs,
    rank_histogram_summary,
    spread_skill_summary,
)
from turbda_kit.io import write_json
from turbda_kit.viz.plots import rank_histograms, run_style, save, show, spread_skill_figure

if kind not in ("analysis", "forecast"):
    raise InputError(f"kind={kind!r}: choose analysis or forecast")
out = Path(out_dir)
dirs = default_run_dirs(run_dirs, out) if run_dirs or not files else []
paths = find_runs(dirs, files=files, runs=runs)
results = load_runs(paths, require=(f"rmse_{kind}", f"spread_{kind}", "rank_histogram",
                                    "time_hours"))
for name, path in paths.items():
    print(f"{name:>18}: {path}")

# %% [markdown]
# ## Scores

# %%
summary = {}
print(f"{'run':>24} {'RMSE':>7} {'spread':>7} {'ratio':>6} {'corr.':>6} {'chi2/dof':>9} "
      f"{'outliers':>8}")
for name, ds in results.items():
    label = run_style(name, ds.attrs)[0]
    scores = spread_skill_summary(ds, kind, skip_spinup)
    ranks = rank_histogram_summary(ds["rank_histogram"].values)
    summary[name] = {"label": label, "file": str(paths[name]), "kind": kind, **scores,
                     "rank_histogram": ds["rank_histogram"].values, **{
                         f"rank_{k}": v for k, v in ranks.items()}}
    print(f"{label:>24} {scores['rmse']:7.3f} {scores['spread']:7.3f} {scores['ratio']:6.2f} "
          f"{scores['ratio_corrected']:6.2f} {ranks['chi2_per_dof']:9.3g} "
          f"{ranks['outlier_ratio']:8.2f}")

# %% [markdown]
# ## Spread against RMSE

# %%
figure = spread_skill_figure(results, kind=kind, skip_spinup=skip_spinup)
written = save(figure, out / "fig_spread_skill", html=html)
print("wrote", *written)
show(figure)

# %% [markdown]
# ## Rank histograms (analysis, after spin-up)

# %%
histograms = rank_histograms(results)
written += save(histograms, out / "fig_rank_histograms", html=html)
write_json(out / "fig_spread_skill.json", as_json({"runs": summary, "figures": written}))
print("wrote", *written[-2 if html else -1:])
show(histograms)
