# %% [markdown]
# # Figure — EnSF strong and weak scaling
# Time per cycle and parallel efficiency against the number of MPI ranks, one curve per
# state size, read from the `scaling_<mode>.nc` Datasets of `04_ensf_scaling` (several
# jobs of one mode, e.g. one per node count, are merged with `combine_scaling`). Strong
# scaling: fixed total size, ideal time `T(p0) p0 / p`; weak scaling: fixed size per rank,
# ideal time `T(p0)`. Writes `fig_ensf_scaling.png` / `.html` (one row per mode) and
# `fig_ensf_scaling.json` (the files read and the plotted numbers).

# %% [parameters]
out_dir: str = "."  # where the figure goes (set by `turbda run`)
run_dirs: list = []  # directories holding scaling_strong.nc / scaling_weak.nc, searched with their subdirectories; empty: the parent of out_dir
files: list = []  # extra scaling files (any name; the mode is read from the file)
modes: list = []  # strong and/or weak; empty: every mode found
title: str = ""  # prefix of the panel titles; empty: EnSF and the mode
html: bool = True  # also write the interactive HTML (bokeh)

# %%
from pathlib import Path

import holoviews as hv

from turbda_kit.experiments.results import as_json, default_run_dirs, find_scaling
from turbda_kit.io import write_json
from turbda_kit.viz.plots import save, scaling_figure, show

out = Path(out_dir)
dirs = default_run_dirs(run_dirs, out) if run_dirs or not files else []
studies = find_scaling(dirs, files=files, modes=modes)
for mode, ds in studies.items():
    print(f"{mode}: ranks {ds['ranks'].values.tolist()}, sizes {ds['size'].values.tolist()}, "
          f"{ds.attrs.get('device', '?')}, from {ds.attrs['figure_sources']}")

# %% [markdown]
# ## Numbers plotted
# Time per cycle (s, mean over the cycles after the warm-up) and efficiency, per rank
# count (rows) and size (columns).

# %%
summary = {}
for mode, ds in studies.items():
    print(f"== {mode} scaling: time per cycle (s)")
    print(ds["time_per_cycle_s"].to_pandas().round(4).to_string())
    print("efficiency")
    print(ds["efficiency"].to_pandas().round(3).to_string())
    summary[mode] = {
        "sources": ds.attrs["figure_sources"].split("; "),
        "ranks": ds["ranks"].values.tolist(), "size": ds["size"].values.tolist(),
        "time_per_cycle_s": ds["time_per_cycle_s"].transpose("ranks", "size").values,
        "efficiency": ds["efficiency"].transpose("ranks", "size").values}

# %% [markdown]
# ## The figure

# %%
rows = [scaling_figure(ds, title=f"{title or 'EnSF'} {mode}") for mode, ds in studies.items()]
figure = hv.Layout(rows).cols(2).opts(sublabel_format="", hspace=1.2, backend="matplotlib")
written = save(figure, out / "fig_ensf_scaling", html=html)
write_json(out / "fig_ensf_scaling.json", as_json({"modes": summary, "figures": written}))
print("wrote", *written)
show(figure)
