# %% [markdown]
# # 05 — DA cycling: SQG-only, SQG+LETKF, SQG+EnSF
# Runs the cycling engine (`turbda_kit.experiments.cycling`) for a named preset with each
# chosen filter on one shared truth — the nature run of stage 01 when given, else a truth
# run on the fly — and the same observations (every random draw is named by seed, cycle
# and purpose). Writes one Dataset per filter (`cycling_<filter>.nc`: RMSE, spread, CRPS,
# innovations, timings per cycle; rank histogram; forecast RMSE by lead time and the
# persistence, climatology and observations-only baselines; settings and provenance in
# attrs) and `summary.json`, then plots RMSE against time and a field snapshot. The
# observation network (`obs_network`: how many points, surface only, arctan fraction,
# fixed or drawn every cycle) is a parameter like the filters' settings.

# %% tags=["parameters"]
out_dir: str = "."  # run directory (set by `turbda run`)
preset: str = "bao2024_sqg_linear"  # bao2024_sqg_linear, bao2024_sqg_arctan, yin2024_sqg_shocks, bao2024_sqg_sparse_mixed, sqgturb_lgetkf_cv, sakov2008, hoteit2015
filters: list = ["free", "letkf", "ensf"]  # filters to run: any of free, letkf, ensf, ensf_twostage
n_cycles: int = 8  # analysis cycles (the presets' full length is 300 for SQG)
spinup_cycles: int = 2  # leading cycles left out of the mean scores
n_members: int = 10  # ensemble size (20 in the papers)
N: int = 16  # SQG grid (64 in the papers); ignored when a nature run is given
nature_run: str = ""  # path of a stage-01 nature run (nature_sqg.nc); empty: truth run on the fly
spinup_days: float = 20.0  # on-the-fly SQG truth: spin-up before cycle 0, days
seed: int = 0  # root seed of initial ensemble, observations and filter noise
ensf_settings: dict = {}  # EnSFConfig field changes over the preset, e.g. a tuned likelihood_weight
letkf_settings: dict = {}  # LETKFConfig field changes over the preset, e.g. localization_radius
twostage_settings: dict = {}  # TwoStageEnSFConfig field changes, e.g. {"localization_radius": 1.5e6, "ridge": 0.01}
obs_network: dict = {}  # ObsNetworkSpec field changes, e.g. {"n_obs": 1024, "resample": "every_cycle", "levels": [0], "arctan_fraction": 0.5, "arctan_error_std": 0.01}
forecast_leads_hours: list = [12, 24]  # forecast skill: leads (multiples of the 12-h cycle); [] for none
forecast_every: int = 2  # launch a forecast from the analysis mean every this many cycles after spin-up
device: str = "auto"  # "auto", "cpu", "cuda", ...
save_members: str = "none"  # ensemble members of every cycle to cycling_<filter>_members.nc: none, forecast, analysis or both
members_format: str = "netcdf"  # member files: netcdf (.nc) or zarr (.zarr)

# %%
from pathlib import Path

from turbda_kit.device import resolve_device
from turbda_kit.experiments import (
    SkillConfig,
    build_experiment,
    get_preset,
    model_setup,
    run_comparison,
    truth_every,
)
from turbda_kit.io import open_dataset
from turbda_kit.viz.plots import fields, rmse_vs_time, save

out = Path(out_dir)
run_device = resolve_device(device)
settings = get_preset(preset).replace(n_cycles=n_cycles, spinup_cycles=spinup_cycles,
                                      n_members=n_members)
settings = settings.with_filter_settings("ensf", ensf_settings)
settings = settings.with_filter_settings("letkf", letkf_settings)
settings = settings.with_filter_settings("ensf_twostage", twostage_settings)
settings = settings.with_network(obs_network)
truth, stride, overrides = None, 1, {"N": N} if settings.model == "sqg" else None
if nature_run:
    nature = open_dataset(nature_run)
    truth, stride = nature["theta"], truth_every(nature, settings.cycle_seconds / 3600.0)
    overrides = {"N": int(nature.sizes["x"])}
    print(f"truth: {nature_run} ({nature.sizes['time']} times, {stride} per cycle)")
skill = None
if forecast_leads_hours:
    setup = model_setup(settings, overrides)
    cycle_hours = setup.steps_per_cycle * setup.model.dt * setup.model.time_unit_seconds / 3600
    skill = SkillConfig.from_hours(forecast_leads_hours, cycle_hours, every=forecast_every)
print(settings)

# %%
comparison = run_comparison(
    filters, lambda name: build_experiment(
        settings, name, truth_trajectory=truth, truth_stride=stride, seed=seed,
        device=run_device, model_overrides=overrides, spinup_days=spinup_days,
        save_means=True, skill=skill),
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
# ## Forecast skill and baselines
# Forecast RMSE by lead (launched from the analysis mean), persistence on the same
# launches, the truth's climatology over the scored cycles and, where every point is
# observed linearly, the observations themselves; the free run is the `free` filter.

# %%
for name, entry in comparison.summary().items():
    scores = {key: value for key, value in entry.items()
              if key.endswith(("_by_lead_hours", "climatology_rmse", "obs_only_rmse"))}
    print(f"{name:>14}: analysis {entry.get('mean_rmse_analysis', float('nan')):.3f}  {scores}")

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
