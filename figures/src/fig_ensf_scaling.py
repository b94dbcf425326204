# %% [markdown]
# # Figure — EnSF strong and weak scaling
# Time per cycle, parallel efficiency (wall time solid, CPU time dashed) and CPU
# utilisation against the number of MPI ranks, one curve per state size, read from the
# `scaling_<mode>.nc` Datasets of `04_ensf_scaling` or `bench_ensf_scaling.py` (several
# jobs of one mode, e.g. one per node count, are merged with `combine_scaling`). Strong
# scaling: fixed total size, ideal time `T(p0) p0 / p`; weak scaling: fixed size per rank,
# ideal time `T(p0)`. CPU utilisation is CPU time / (wall x ranks x cores per rank); red
# crosses mark points whose ranks had fewer CPUs than the cores they keep busy. Writes
# `fig_ensf_scaling.png` / `.html` (one row per mode), `fig_ensf_scaling_<mode>.png` /
# `.html` (one mode each) and `fig_ensf_scaling.json` (the files read and the plotted
# numbers).

# %% tags=["parameters"]
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
from turbda_kit.viz.plots import save, show
from turbda_kit.viz.scaling_plots import scaling_overview

out = Path(out_dir)
dirs = default_run_dirs(run_dirs, out) if run_dirs or not files else []
studies = find_scaling(dirs, files=files, modes=modes)
for mode, ds in studies.items():
    print(f"{mode}: ranks {ds['ranks'].values.tolist()}, sizes {ds['size'].values.tolist()}, "
          f"{ds.attrs.get('device', '?')}, from {ds.attrs['figure_sources']}")

# %% [markdown]
# ## Numbers plotted
# Time per cycle (s, mean over the cycles after the warm-up), efficiency and CPU
# utilisation, per rank count (rows) and size (columns), with the resources of each rank.

# %%
summary = {}
plotted = ["time_per_cycle_s", "efficiency", "efficiency_cpu", "cpu_utilisation"]
for mode, ds in studies.items():
    print(f"== {mode} scaling: {ds.attrs.get('threads_per_rank')} thread(s) per rank, noise "
          f"prefetch {ds.attrs.get('prefetch_noise', 'unknown')}, "
          f"{ds.attrs.get('cores_per_rank')} core(s) per rank")
    summary[mode] = {"sources": ds.attrs["figure_sources"].split("; "),
                     "ranks": ds["ranks"].values.tolist(), "size": ds["size"].values.tolist(),
                     "threads_per_rank": ds.attrs.get("threads_per_rank"),
                     "prefetch_noise": ds.attrs.get("prefetch_noise"),
                     "cores_per_rank": ds.attrs.get("cores_per_rank")}
    for name in (n for n in plotted if n in ds):
        print(name)
        print(ds[name].to_pandas().round(4).to_string())
        summary[mode][name] = ds[name].transpose("ranks", "size").values

# %% [markdown]
# ## The figure

# %%
rows = {mode: scaling_overview(ds, title=f"{title or 'EnSF'} {mode}")
        for mode, ds in studies.items()}
written = []
for mode, row in rows.items():
    written += save(row, out / f"fig_ensf_scaling_{mode}", html=html)
columns = max(len(row) for row in rows.values())
figure = hv.Layout([panel for row in rows.values() for panel in row]).cols(columns).opts(
    sublabel_format="", fig_inches=(5 * columns, 4 * len(rows)), backend="matplotlib")
written = save(figure, out / "fig_ensf_scaling", html=html) + written
write_json(out / "fig_ensf_scaling.json", as_json({"modes": summary, "figures": written}))
print("wrote", *written)
figure  # noqa: B018
show(figure)
