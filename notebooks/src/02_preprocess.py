# %% [markdown]
# # 02 — preprocess: nature run → training shards
# Reads the SQG nature run day by day (optionally through chunk files first, the split
# stage) and writes the training / validation / test shards in the ClimaX layout (`{split}/{day}_{shard}.npz`, `normalize_mean.npz`,
# `normalize_std.npz`, `{split}/climatology.npz`, `y.npy`, `x.npy`, and `lat.npy`/`lon.npy` for the seed's loader) or one zarr store,
# with statistics from the training days only. Launched with `mpiexec`/`srun`, every rank
# takes a share of the days (and chunks); the result is bit-identical to a serial run.
# Re-running into the same directory resumes an interrupted run.

# %% tags=["parameters"]
out_dir: str = "."  # run directory (set by `turbda run`)
nature_run: str = ""  # nature run (.nc or .zarr); empty means {out_dir}/../01_generate_data/nature_sqg.nc
synthetic_if_missing: bool = False  # demo only: write a small synthetic nature run if the file is missing
start_train_day: int = 0  # first training day (days since the start of output)
start_val_day: int = 4  # first validation day
start_test_day: int = 5  # first test day
end_day: int = 6  # end of the test days (exclusive)
steps_per_file: int = 4  # output times per chunk file of the split stage
via_chunks: bool = False  # run the split stage (chunk files) before sharding; off reads days directly
workers: int = 2  # threads per rank writing shards and computing statistics (the output does not depend on it)
num_shards: int = 2  # shards per day (must divide the output times per day)
fmt: str = "npz"  # "npz" (ClimaX layout) or "zarr" (one chunked store)
shards_dir: str = "shards"  # output root, relative to out_dir unless absolute

# %%
from pathlib import Path

import numpy as np

from turbda_kit.data import ForecastSamples, open_shards, preprocess
from turbda_kit.errors import InputError
from turbda_kit.io import write_dataset
from turbda_kit.parallel.mpi import get_comm
from turbda_kit.testing import synthetic_nature_run

comm = get_comm()  # COMM_WORLD when launched by mpiexec/srun, else a serial stand-in
rank, size = comm.Get_rank(), comm.Get_size()
out = Path(out_dir)
source = Path(nature_run) if nature_run else out / ".." / "01_generate_data" / "nature_sqg.nc"
root = Path(shards_dir) if Path(shards_dir).is_absolute() else out / shards_dir
print(f"rank {rank} of {size}; nature run: {source}; output: {root}")

# %%
if not source.exists():
    if not synthetic_if_missing:
        raise InputError(f"nature run {source} not found: run 01_generate_data first, pass "
                         "-p nature_run PATH, or -p synthetic_if_missing true for a demo")
    source = out / "nature_sqg_synthetic.nc"
    if rank == 0 and not source.exists():
        # Layout-only stand-in (a random walk), clearly named: not an SQG solution.
        write_dataset(synthetic_nature_run(end_day + 1, 4, 16, seed=0), source)
        print(f"wrote a SYNTHETIC nature run (random walk, not SQG): {source}")
    comm.barrier()

# %%
summary = preprocess(source, root, start_train_day, start_val_day, start_test_day, end_day,
                     steps_per_file=steps_per_file, num_shards=num_shards, fmt=fmt, comm=comm,
                     via_chunks=via_chunks, workers=workers)
if rank == 0:
    print(summary)

# %% [markdown]
# ## What was written
# Statistics (training days only), shards per split, and a few fields.

# %%
if rank == 0:
    catalog = open_shards(root)
    norm = catalog.normaliser
    print(f"format {catalog.fmt}, variables {catalog.variables}, grid {catalog.grid_shape}, "
          f"{catalog.hours_per_step} h per step")
    for name, mean, std in zip(norm.variables, norm.mean, norm.std):
        print(f"  {name:>12}: mean {mean:9.4f} K, std {std:8.4f} K")
    for split in ("train", "val", "test"):
        refs = catalog.shards(split)
        print(f"  {split:>5}: {len(refs)} shards of {refs[0].steps} steps, "
              f"days {refs[0].day}..{refs[-1].day}")

# %%
if rank == 0:
    from turbda_kit.viz.plots import fields, level_title, save

    first = catalog.load(catalog.shards("train")[0])
    x_km, y_km = (None, None) if catalog.x is None else (catalog.x / 1e3, catalog.y / 1e3)
    panels = {f"{level_title(name)}, first step": first[0, j]
              for j, name in enumerate(catalog.variables)}
    panels.update({f"{level_title(name)}, train climatology": clim
                   for name, clim in zip(catalog.variables, catalog.climatology("train"))})
    written = save(fields(panels, x_km=x_km, y_km=y_km), out / "preprocess_fields", html=False)
    print("wrote", *written)

# %%
if rank == 0:
    samples = ForecastSamples(root, "val", lead_steps=1)
    x, y, lead = samples[0]
    print(f"{len(samples)} validation samples; one: input {tuple(x.shape)}, target "
          f"{tuple(y.shape)}, lead {float(lead)} h; normalised input mean "
          f"{float(x.mean()):+.3f}, std {float(x.std()):.3f}")
    panels = {f"{level_title(name)}, normalised input": x[j].numpy()
              for j, name in enumerate(samples.variables)}
    panels.update({f"{level_title(name)}, target - input": (y[j] - x[j]).numpy()
                   for j, name in enumerate(samples.variables)})
    written = save(fields(panels, x_km=x_km, y_km=y_km, units="1"), out / "preprocess_sample",
                   html=False)
    print("wrote", *written)
    assert np.isfinite(x.numpy()).all()

# %%
# Ranks leave together: a kernel that finished early waits in MPI_Finalize while rank 0
# still plots, and can be killed at kernel shutdown, which ends the whole MPI job.
comm.barrier()
print(f"rank {rank}: done")
