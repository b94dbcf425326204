# %% [markdown]
# # 00 — kit check
# Confirms the environment (versions, devices, MPI) and writes a tiny Dataset with
# provenance into the run directory: the smallest stage of the quickstart pipeline.

# %% tags=["parameters"]
out_dir: str = "."  # run directory (set by `turbda run`)
n_values: int = 8  # length of the demo array written to check.nc
seed: int = 0  # seed of the demo array's torch.Generator

# %%
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from turbda_kit import provenance
from turbda_kit.cf import CONVENTIONS
from turbda_kit.io import write_dataset
from turbda_kit.workflow import environment_report

print(environment_report())

# %%
generator = torch.Generator().manual_seed(seed)
values = torch.randn(n_values, generator=generator, dtype=torch.float64)
ds = xr.Dataset({"value": ("i", values.numpy(), {"long_name": "standard normal draws", "units": "1"})},
                coords={"i": ("i", np.arange(n_values), {"long_name": "draw index", "units": "1"})},
                attrs={"Conventions": CONVENTIONS, "title": "turbda_kit kit check",
                       **provenance.as_attrs(provenance.collect({"seed": seed}))})
path = write_dataset(ds, Path(out_dir) / "check.nc")
print(f"wrote {path}: mean {float(ds.value.mean()):+.4f}")
