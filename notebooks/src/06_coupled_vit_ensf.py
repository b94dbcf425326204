# %% [markdown]
# # 06 — coupled ViT + EnSF forecasting
# A learned surrogate kept on track by a score-based filter (SC24, Fig. 4). On one shared
# truth (the stage-01 nature run, one state per 12-h cycle) and the same observations,
# runs: `vit_only` (EnSF at step 0, then pure ViT autoregression), `vit_ensf` (EnSF every
# cycle), `vit_ensf_shocks` (with jump noise on the truth), and the physics baselines
# `sqg_letkf`, `sqg_ensf`, `sqg_free`; for sparse networks (`network_preset`) also the
# two-stage EnSF `vit_ensf_twostage` and `sqg_ensf_twostage` — each a preset of the kit's
# experiment builder (`turbda_kit.experiments.coupled`). Writes `coupled_<experiment>.nc`
# (the cycling engine's Dataset, CF-1.8; ViT runs add `surrogate_drift` and the ViT's and
# SQG's 12-h forecast RMSE from the same analyses), `summary.json` and, when
# asked, the ensemble members of every cycle (`coupled_<experiment>_members.nc`), and
# plots RMSE against time.

# %% tags=["parameters"]
out_dir: str = "."  # run directory (set by `turbda run`)
checkpoint: str = ""  # surrogate export; empty means {out_dir}/../03_train_vit/surrogate.pt
nature_run: str = ""  # nature run; empty means {out_dir}/../01_generate_data/nature_sqg.nc
experiments: list = ["vit_only", "vit_ensf", "vit_ensf_shocks", "sqg_letkf", "sqg_ensf", "sqg_free"]  # which runs
n_cycles: int = 6  # analysis cycles (300 in the paper); the nature run must cover them
spinup_cycles: int = 1  # leading cycles left out of the mean scores
n_members: int = 10  # ensemble size (20 in the paper)
shocks: bool = True  # jump noise for the physics baselines too (SC24 reports SQG+LETKF with shocks)
start_index: int = 0  # nature-run time index of cycle 0 (skip the training period, e.g.)
seed: int = 0  # root seed (initial ensemble, observations, filter noise, shocks)
ensf_settings: dict = {}  # EnSFConfig field changes over the presets (all EnSF runs)
vit_ensf_settings: dict = {}  # further EnSF changes for the ViT runs only (their presets hold the tuned VIT_ENSF_SETTINGS)
letkf_settings: dict = {}  # LETKFConfig field changes over the preset (sqg_letkf)
network_preset: str = ""  # observe a preset's network instead of every point, e.g. sqgturb_lgetkf_cv (its SQG runs become that preset)
network_changes: dict = {}  # ObsNetworkSpec field changes over that network, e.g. {n_obs: 256}
skill_leads_hours: list = []  # forecast leads to score from the analyses, e.g. [12, 24, 48, 72]; empty: none
skill_every: int = 5  # cycles between forecast launches (after spin-up)
device: str = "auto"  # "auto", "cpu", "cuda", ...
save_members: str = "none"  # ensemble members of every cycle to coupled_<experiment>_members.nc: none, forecast, analysis or both
members_format: str = "netcdf"  # member files: netcdf (.nc) or zarr (.zarr)
logy: bool = True  # logarithmic RMSE axis (the ViT-only run ends an order of magnitude above the others)

# %%
from pathlib import Path

import numpy as np

from turbda_kit.device import resolve_device
from turbda_kit.errors import InputError
from turbda_kit.experiments import SkillConfig, coupled_experiment, run_comparison, truth_every
from turbda_kit.io import open_dataset
from turbda_kit.surrogate import SurrogateModel
from turbda_kit.viz.plots import rmse_figure, save, show

out = Path(out_dir)
run_device = resolve_device(device)
checkpoint_path = Path(checkpoint) if checkpoint else out.parent / "03_train_vit" / "surrogate.pt"
nature_path = Path(nature_run) if nature_run else out.parent / "01_generate_data" / "nature_sqg.nc"
needs_vit = any(e.startswith("vit") for e in experiments)
if needs_vit and not checkpoint_path.exists():
    raise InputError(f"no surrogate at {checkpoint_path}: run 03_train_vit or pass checkpoint=")
nature = open_dataset(nature_path)
stride = truth_every(nature, cycle_hours=12.0)
truth = nature["theta"].isel(time=slice(start_index, None)).values.astype(np.float32)
surrogate = SurrogateModel.from_files(checkpoint_path, device=run_device) if needs_vit else None
skill = (SkillConfig.from_hours(skill_leads_hours, 12.0, every=skill_every)
         if skill_leads_hours else None)
print(f"truth: {nature_path} {truth.shape}, {stride} per cycle; surrogate: "
      f"{checkpoint_path if needs_vit else '-'}; network: {network_preset or 'every point'}")

# %%
comparison = run_comparison(
    experiments, lambda kind: coupled_experiment(
        kind, truth, surrogate=surrogate, n_cycles=n_cycles, n_members=n_members,
        spinup_cycles=spinup_cycles, shocks=shocks, truth_stride=stride, seed=seed,
        device=run_device, ensf_settings=ensf_settings,
        letkf_settings=letkf_settings, vit_ensf_settings=vit_ensf_settings,
        network_preset=network_preset or None, network_changes=network_changes, skill=skill),
    out, prefix="coupled", save_members=save_members, members_format=members_format)
results = comparison.results

# %% [markdown]
# ## RMSE against time (the layout of SC24 Fig. 4)

# %%
plot = rmse_figure(results, title="coupled ViT + EnSF: analysis RMSE against time", logy=logy)
save(plot, out / "coupled_rmse_vs_time")
show(plot)
