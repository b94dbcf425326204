# %% [markdown]
# # 05 — DA cycling: SQG-only, SQG+LETKF, SQG+EnSF
# Runs the cycling engine (`turbda_kit.experiments.cycling`) for a named preset with each
# chosen filter on one shared truth — the nature run of stage 01 when given, else a truth
# run on the fly — and the same observations (every random draw is named by seed, cycle
# and purpose). Writes one Dataset per filter (`cycling_<filter>.nc`: RMSE, spread, CRPS,
# innovations, timings per cycle; rank histogram; settings and provenance in attrs), then
# plots RMSE against time and a field snapshot.

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

# %%
import json
import time
from pathlib import Path

import numpy as np

from turbda_kit.device import resolve_device
from turbda_kit.errors import DivergenceError
from turbda_kit.experiments.presets import build_experiment, get_preset
from turbda_kit.io import open_dataset, write_dataset
from turbda_kit.viz.plots import fields, rmse_vs_time, save

out = Path(out_dir)
run_device = resolve_device(device)
settings = get_preset(preset)
settings = settings.replace(n_cycles=n_cycles, spinup_cycles=spinup_cycles, n_members=n_members)
settings = settings.with_filter_settings("ensf", ensf_settings)
settings = settings.with_filter_settings("letkf", letkf_settings)
truth_trajectory, overrides = None, {}
if nature_run:
    nature = open_dataset(nature_run)
    truth_trajectory = nature["theta"]
    hours = float(nature["time"][1] - nature["time"][0]) / 3600.0
    stride = round(12.0 / hours)
    overrides = {"N": int(nature.sizes["x"])}
    print(f"truth: {nature_run} ({nature.sizes['time']} times every {hours:g} h, stride {stride})")
elif settings.model == "sqg":
    overrides, stride = {"N": N}, 1
else:
    stride = 1
print(settings)

# %%
results, wall, diverged = {}, {}, {}
for name in filters:
    start = time.perf_counter()
    experiment = build_experiment(settings, name, truth_trajectory=truth_trajectory,
                                  truth_stride=stride, seed=seed, device=run_device,
                                  model_overrides=overrides or None, spinup_days=spinup_days,
                                  save_means=True)
    try:
        ds = experiment.run(out_dir=out / f"checkpoint_{name}")
    except DivergenceError as err:  # a filter losing track is a result, not a crash
        diverged[name] = {"cycle": err.cycle, "message": str(err)}
        print(f"{name:>6}: DIVERGED — {err}")
        continue
    write_dataset(ds, out / f"cycling_{name}.nc")
    results[name], wall[name] = ds, time.perf_counter() - start
    print(f"{name:>6}: mean analysis RMSE {ds.attrs['mean_rmse_analysis']:.3f}, spread "
          f"{ds.attrs['mean_spread_analysis']:.3f}, {wall[name]:.1f} s, real-time x"
          f"{ds.attrs['realtime_factor']:.3g}")

summary = {name: {"mean_rmse_analysis": ds.attrs["mean_rmse_analysis"],
                  "mean_spread_analysis": ds.attrs["mean_spread_analysis"],
                  "reported_rmse": settings.reported.get(name), "wall_seconds": wall[name]}
           for name, ds in results.items()}
summary.update({name: {"diverged_at_cycle": d["cycle"], "message": d["message"]}
                for name, d in diverged.items()})
(out / "summary.json").write_text(json.dumps(summary, indent=2))

# %% [markdown]
# ## RMSE against time

# %%
units = "K" if settings.model == "sqg" else ""
plot = rmse_vs_time({name: ds for name, ds in results.items()}, units=units,
                    title=f"{preset}: analysis RMSE")
save(plot, out / "rmse_vs_time")
plot  # noqa: B018

# %% [markdown]
# ## Fields at the last cycle (surface level)

# %%
last = next(iter(results.values()))
if settings.model == "sqg":
    panels = {"truth": last.truth.isel(cycle=-1, z=0).values}
    for name, ds in results.items():
        panels[f"{name} analysis mean"] = ds.analysis_mean.isel(cycle=-1, z=0).values
        panels[f"{name} error"] = (ds.analysis_mean - ds.truth).isel(cycle=-1, z=0).values
    snapshot = fields(panels, units="K")
    save(snapshot, out / "fields_last_cycle", html=False)
    snapshot  # noqa: B018
assert results, f"every filter diverged: {diverged}"
assert all(np.isfinite(ds.rmse_analysis.values).all() for ds in results.values())
