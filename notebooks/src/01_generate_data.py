# %% [markdown]
# # 01 — generate data: the SQG nature run
# Spins the surface quasi-geostrophic (SQG) model up from seeded noise and a warm blob on
# the lid, then stores the "truth" — boundary potential temperature `theta` (K) at the
# surface and the lid, dims `(time, z, y, x)` — every `output_interval_hours` into
# `nature_sqg.nc` (or `.zarr`). The physics is the coupled-experiment setting
# (`bao2024_sqg64`: L = 20 Rossby radii, U = 30 m/s, 10-day relaxation, 8th-order
# hyperdiffusion); on other grids `dt` and the hyperdiffusion time scale are scaled by
# 64/N. `sqgturb_compat=True` runs J. Whitaker's sqgturb algorithm instead (advection
# 2.25x too strong when dealiased, as in the SC24 paper's nature runs; `docs/models.md`).
# Re-running into the same `out_dir` resumes an interrupted run and returns a finished
# one as is.

# %% tags=["parameters"]
out_dir: str = "."  # run directory (set by `turbda run`)
model: str = "sqg"  # forecast model of the nature run (only "sqg" so far)
N: int = 32  # grid points per side: 64 is bao2024_sqg64, 128 and 256 the ViT-scaling presets
days: int = 8  # length of the stored run, days (outputs at 0, dt_out, ..., days)
output_interval_hours: float = 12.0  # time between stored states, hours
spinup_days: float = 50.0  # integration before the first stored state, days
seed: int = 0  # seed of the initial noise (torch.Generator on the CPU)
fmt: str = "nc"  # output format: "nc" (netCDF4) or "zarr"
device: str = "auto"  # "auto" (GPU when visible), "cpu", "cuda", "cuda:1", ...
sqgturb_compat: bool = False  # True: sqgturb's dynamics (as the paper's data); False: corrected

# %%
import time
from pathlib import Path

import numpy as np

from turbda_kit.data import sqg_nature_run, time_seconds
from turbda_kit.device import resolve_device
from turbda_kit.errors import InputError
from turbda_kit.io import open_dataset
from turbda_kit.models.sqg import bao2024_at_resolution
from turbda_kit.viz.plots import fields, save, show

if model != "sqg":
    raise InputError(f"model = {model!r}: only 'sqg' is available in this notebook")
params = bao2024_at_resolution(N).replace(sqgturb_compat=sqgturb_compat)
run_device = resolve_device(device)
out = Path(out_dir)
path = out / f"nature_sqg.{fmt}"
print(f"{params}\ndevice: {run_device}; output: {path}")

# %%
start = time.perf_counter()
sqg_nature_run(params, days=days, output_interval_s=output_interval_hours * 3600.0,
               path=path, seed=seed, spinup_days=spinup_days, fmt=fmt, device=run_device)
print(f"nature run done in {time.perf_counter() - start:.1f} s")

# %% [markdown]
# ## What was written

# %%
ds = open_dataset(path)
print(ds)
theta = ds["theta"]
print(f"theta: {theta.shape[0]} times, range {float(theta.min()):.1f} .. "
      f"{float(theta.max()):.1f} K, complete = {ds.attrs['complete']}")

# %% [markdown]
# ## The last snapshot at both boundaries

# %%
last = theta.isel(time=-1)
x_km, y_km = ds["x"].values / 1e3, ds["y"].values / 1e3
hours = float(time_seconds(ds)[-1]) / 3600.0  # time decodes to dates from a nominal 2000-01-01
plot = fields({f"surface (z = 0), t = {hours:.0f} h": last.sel(z=0.0).values,
               f"lid (z = H), t = {hours:.0f} h": last.isel(z=1).values},
              x_km=x_km, y_km=y_km, units="theta (K)")
written = save(plot, out / "nature_sqg_snapshot", png=True, html=False)
print("wrote", *written)
assert bool(np.isfinite(theta.values).all())
show(plot)
