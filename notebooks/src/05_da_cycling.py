# %% [markdown]
# # 05 — DA cycling: SQG-only, SQG+LETKF, SQG+EnSF
# Runs the cycling engine (`turbda_kit.experiments.cycling`) for a named preset with each
# chosen filter on one shared truth — the nature run of stage 01 when given, else a truth
# run on the fly — and the same observations (every random draw is named by seed, cycle
# and purpose). Writes one Dataset per filter (`cycling_<filter>.nc`: RMSE, spread, CRPS,
# innovations, timings per cycle; rank histogram; settings and provenance in attrs) and
# `summary.json`, then plots RMSE against time and a field snapshot.

# %% tags=["parameters"]
out_dir: str = "."  # run directory (set by `turbda run`)
preset: str = "bao2024_sqg_linear"  # bao2024_sqg_linear, bao2024_sqg_arctan, yin2024_sqg_shocks, sakov2008, hoteit2015
filters: list = ["free", "letkf", "ensf"]  # filters to run: any of free, letkf, ensf
n_cycles: int = 8  # analysis cycles (the presets' full length is 300 for SQG)
spinup_cycles: int = 2  # leading cycles left out of the mean scores
n_members: int = 10  # ensemble size (20 in the papers)
N: int = 16  # SQG grid (64 in the papers); ignored when a nature run is given
nature_run: str = ""  # path of a stage-01 nature run (nature_sqg.nc); empty: truth run on the fly
spinup_days: float = 20.0  # on-the-fly SQG truth: spin-up before cycle 0, days
seed: int = 0  # root seed of initial ensemble, observations and filter noise
ensf_settings: dict = {}  # EnSFConfig field changes over the preset, e.g. a tuned likelihood_weight
letkf_settings: dict = {}  # LETKFConfig field changes over the preset, e.g. localization_radius
device: str = "auto"  # "auto", "cpu", "cuda", ...
save_members: str = "none"  # ensemble members of every cycle to cycling_<filter>_members.nc: none, forecast, analysis or both
members_format: str = "netcdf"  # member files: netcdf (.nc) or zarr (.zarr)

# %%
from pathlib import Path

from turbda_kit.device import resolve_device
from turbda_kit.experiments import build_experiment, get_preset, run_comparison, truth_every
from turbda_kit.io import open_dataset
from turbda_kit.viz.plots import fields, rmse_vs_time, save

out = Path(out_dir)
run_device = resolve_device(device)
settings = get_preset(preset).replace(n_cycles=n_cycles, spinup_cycles=spinup_cycles,
                                      n_members=n_members)
settings = settings.with_filter_settings("ensf", ensf_settings)
settings = settings.with_filter_settings("letkf", letkf_settings)
truth, stride, overrides = None, 1, {"N": N} if settings.model == "sqg" else None
if nature_run:
    nature = open_dataset(nature_run)
    truth, stride = nature["theta"], truth_every(nature, settings.cycle_seconds / 3600.0)
    overrides = {"N": int(nature.sizes["x"])}
    print(f"truth: {nature_run} ({nature.sizes['time']} times, {stride} per cycle)")
print(settings)

# %%
comparison = run_comparison(
    filters, lambda name: build_experiment(
        settings, name, truth_trajectory=truth, truth_stride=stride, seed=seed,
        device=run_device, model_overrides=overrides, spinup_days=spinup_days,
        save_means=True),
    out, prefix="cycling", save_members=save_members, members_format=members_format)
results = comparison.results
assert results, f"every filter diverged: {comparison.diverged}"

# %% [markdown]
# ## RMSE against time

# %%
units = "K" if settings.model == "sqg" else ""
plot = rmse_vs_time(results, units=units, title=f"{preset}: analysis RMSE")
save(plot, out / "rmse_vs_time")
plot  # noqa: B018

# %% [markdown]
# ## Fields at the last cycle (surface level)

# %%
if settings.model == "sqg":
    last = {name: ds.isel(cycle=-1, z=0) for name, ds in results.items()}
    panels = {"truth": next(iter(last.values())).truth.values}
    for name, ds in last.items():
        panels[f"{name} analysis mean"] = ds.analysis_mean.values
        panels[f"{name} error"] = (ds.analysis_mean - ds.truth).values
    snapshot = fields(panels, units="K")
    save(snapshot, out / "fields_last_cycle", html=False)
    snapshot  # noqa: B018
