# %% [markdown]
# # 06 — coupled ViT + EnSF forecasting
# A learned surrogate kept on track by a score-based filter (SC24, Fig. 4). On one shared
# truth (the stage-01 nature run, 12-hourly) and the same observations, runs:
# `vit_only` (EnSF at step 0, then pure ViT autoregression), `vit_ensf` (EnSF every
# cycle), `vit_ensf_shocks` (with jump noise on the truth), and the physics baselines
# `sqg_letkf`, `sqg_ensf`, `sqg_free`. Writes `coupled_<experiment>.nc` (the cycling
# engine's Dataset; ViT runs add `surrogate_drift`) and plots RMSE against time.

# %% tags=["parameters"]
out_dir: str = "."  # run directory (set by `turbda run`)
checkpoint: str = ""  # surrogate export; empty means {out_dir}/../03_train_vit/surrogate.pt
nature_run: str = ""  # 12-hourly nature run; empty means {out_dir}/../01_generate_data/nature_sqg.nc
experiments: list = ["vit_only", "vit_ensf", "vit_ensf_shocks", "sqg_letkf", "sqg_ensf", "sqg_free"]  # which runs
n_cycles: int = 6  # analysis cycles (300 in the paper); the nature run must cover them
spinup_cycles: int = 1  # leading cycles left out of the mean scores
n_members: int = 10  # ensemble size (20 in the paper)
shocks: bool = True  # jump noise for the physics baselines too (SC24 reports SQG+LETKF with shocks)
start_index: int = 0  # nature-run time index of cycle 0 (skip the training period, e.g.)
seed: int = 0  # root seed (initial ensemble, observations, filter noise, shocks)
ensf_settings: dict = {}  # EnSFConfig field changes over the preset (all EnSF runs)
vit_ensf_settings: dict = None  # EnSF changes for the ViT runs only; None: the kit default VIT_ENSF_SETTINGS
letkf_settings: dict = {}  # LETKFConfig field changes over the preset (sqg_letkf)
device: str = "auto"  # "auto", "cpu", "cuda", ...

# %%
import json
import time
from pathlib import Path

import numpy as np

from turbda_kit.device import resolve_device
from turbda_kit.errors import InputError
from turbda_kit.experiments.coupled import REPORTED_SC24, run_coupled
from turbda_kit.experiments.presets import get_preset
from turbda_kit.experiments.surrogate_model import SurrogateModel
from turbda_kit.io import open_dataset, write_dataset
from turbda_kit.viz.plots import rmse_vs_time, save

out = Path(out_dir)
run_device = resolve_device(device)
checkpoint_path = Path(checkpoint) if checkpoint else out.parent / "03_train_vit" / "surrogate.pt"
nature_path = Path(nature_run) if nature_run else out.parent / "01_generate_data" / "nature_sqg.nc"
needs_vit = any(e.startswith("vit") for e in experiments)
if needs_vit and not checkpoint_path.exists():
    raise InputError(f"no surrogate at {checkpoint_path}: run 03_train_vit or pass checkpoint=")
nature = open_dataset(nature_path)
hours = float(nature["time"][1] - nature["time"][0]) / 3600.0
if abs(hours - 12.0) > 1e-6:
    raise InputError(f"the coupled experiments cycle every 12 h; {nature_path} is {hours:g}-hourly")
truth = nature["theta"].isel(time=slice(start_index, None)).values.astype(np.float32)
surrogate = SurrogateModel.from_files(checkpoint_path, device=run_device) if needs_vit else None
preset = get_preset("yin2024_sqg_shocks").with_filter_settings("ensf", ensf_settings)
preset = preset.with_filter_settings("letkf", letkf_settings)
print(f"truth: {nature_path} {truth.shape}; surrogate: {checkpoint_path if needs_vit else '-'}")

# %%
results, summary = {}, {}
for kind in experiments:
    start = time.perf_counter()
    ds = run_coupled(kind, truth, surrogate=surrogate, preset=preset, n_cycles=n_cycles,
                     n_members=n_members, vit_ensf_settings=vit_ensf_settings,
                     spinup_cycles=spinup_cycles, shocks=shocks, seed=seed, device=run_device,
                     out_dir=out / f"checkpoint_{kind}")
    write_dataset(ds, out / f"coupled_{kind}.nc")
    results[kind] = ds
    summary[kind] = {"mean_rmse_analysis": ds.attrs["mean_rmse_analysis"],
                     "reported_sc24": REPORTED_SC24.get(kind),
                     "wall_seconds": time.perf_counter() - start}
    drift = (f", drift {float(ds.surrogate_drift.mean()):.2f} K" if "surrogate_drift" in ds else "")
    print(f"{kind:>16}: mean RMSE {ds.attrs['mean_rmse_analysis']:.2f} K (SC24: "
          f"{REPORTED_SC24.get(kind, '-')}){drift}")
(out / "summary.json").write_text(json.dumps(summary, indent=2))

# %% [markdown]
# ## RMSE against time (the layout of SC24 Fig. 4)

# %%
plot = rmse_vs_time(results, title="coupled ViT + EnSF: analysis RMSE")
save(plot, out / "coupled_rmse_vs_time")
plot  # noqa: B018
