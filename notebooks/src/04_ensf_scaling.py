# %% [markdown]
# # 04 — EnSF scaling study (Lorenz-96)
# Strong scaling (fixed total state size, the number of ranks varies) and weak scaling
# (fixed size per rank) of one EnSF filter on one Lorenz-96 ring decomposed across MPI
# ranks. Every cycle's forecast, halo exchange, analysis and reduction times are
# device-synchronised and kept apart; peak memory is measured per rank.
#
# One launch gives the whole curve: under `mpiexec -n N` / `srun -n N` (through
# `turbda run`), `COMM_WORLD` is split so that the first `p` ranks run each point of the
# sweep while the others sleep. Every point runs with the same resources per rank:
# `threads_per_rank` torch threads, and the EnSF noise prefetch thread on or off
# (`prefetch_noise`, off by default, so the 1-rank baseline gets no extra core).
# Results: `scaling_{mode}.nc` (dims `ranks, size, cycle`), `scaling_summary.json` and
# PNG + HTML plots in `out_dir`; rank 0 writes them. Efficiency is `T(1) / (p T(p))`
# (strong) and `T(1) / T(p)` (weak), without the warm-up cycle; CPU utilisation is the
# CPU time over the cores the ranks were given.
#
# The defaults are tiny (seconds). Realistic runs: `launch/frontier/ensf_scaling.sbatch`.

# %% tags=["parameters"]
out_dir: str = "."  # run directory (set by `turbda run`)
mode: str = "both"  # "strong" (fixed total size), "weak" (fixed size per rank) or "both"
sizes: list = [2048]  # strong: total ring sizes; weak: points per rank (multiples of align)
ranks: list = []  # rank counts to sweep, each at most the launch size; empty: 1, 2, 4, ... and the launch size
n_members: int = 10  # ensemble size (the EnSF paper uses 20)
euler_steps: int = 50  # EnSF reverse-SDE Euler steps (the paper uses 500)
obs: str = "arctan"  # observation operator on every component: "arctan" or "identity"
obs_error_std: float = 0.05  # observation error std (observation units)
n_cycles: int = 3  # analysis cycles per point
warmup_cycles: int = 1  # leading cycles left out of the timings
steps_per_cycle: int = 10  # RK4 steps of dt 0.01 between analyses
spinup_steps: int = 100  # truth spin-up steps before cycle 0 (not timed)
align: int = 256  # slab boundaries fall on multiples of this
seed: int = 0  # root seed (random numbers are drawn by global index)
device: str = "auto"  # "auto" (the node-local rank's GPU if any, else CPU), "cpu" or "cuda"
dtype: str = "float32"  # "float32" or "float64"
threads_per_rank: int = 1  # torch threads per rank, the same for every point
prefetch_noise: bool = False  # EnSF draws the next noise block in a background thread (one more core per rank)
use_engines: bool = False  # Interactive section: run on ipyparallel MPI engines from this kernel
n_engines: int = 2  # MPI engines started when use_engines is true
plots: bool = True  # write PNG + HTML plots

# %%
from pathlib import Path

import numpy as np

from turbda_kit.errors import InputError
from turbda_kit.experiments.efficiency import MODES
from turbda_kit.experiments.scaling import ScalingStudy, engine_kernel, run_scaling
from turbda_kit.experiments.scaling_results import scaling_summary, scaling_table
from turbda_kit.io import write_dataset, write_json
from turbda_kit.parallel.mpi import abort_on_exception, get_comm
from turbda_kit.viz.scaling_plots import save_scaling_plots

comm = get_comm()  # COMM_WORLD when launched by mpiexec/srun, else a serial stand-in
rank, world = comm.Get_rank(), comm.Get_size()
out = Path(out_dir)
modes = list(MODES) if mode == "both" else [mode]
if any(m not in MODES for m in modes):
    raise InputError(f"mode={mode!r}: choose 'strong', 'weak' or 'both'")
if use_engines and world > 1:
    raise InputError("use_engines starts its own MPI engines from a serial kernel: run the "
                     "notebook without mpiexec/srun, or set use_engines to false")
job_ranks = n_engines if use_engines else world
sweep = ranks or sorted({2 ** k for k in range(job_ranks.bit_length()) if 2 ** k <= job_ranks}
                        | {job_ranks})
studies = {m: ScalingStudy(mode=m, sizes=tuple(sizes), ranks=tuple(sweep), n_members=n_members,
                           euler_steps=euler_steps, obs=obs, obs_error_std=obs_error_std,
                           n_cycles=n_cycles, warmup_cycles=warmup_cycles,
                           steps_per_cycle=steps_per_cycle, spinup_steps=spinup_steps,
                           align=align, seed=seed, threads_per_rank=threads_per_rank,
                           prefetch_noise=prefetch_noise)
           for m in modes}
for study in studies.values():
    study.check(job_ranks)  # every rank raises the same InputError before any communication
print(f"rank {rank} of {world}: sweep ranks {sweep}, sizes {sizes}, modes {modes}, "
      f"{threads_per_rank} torch thread(s) per rank, noise prefetch {prefetch_noise}")

# %% [markdown]
# ## Run (batch: serial, or every rank of an `mpiexec`/`srun` launch)

# %%
datasets = {}
if not use_engines:
    with abort_on_exception(comm):  # a failing rank ends the job instead of leaving others waiting
        for m, study in studies.items():
            datasets[m] = run_scaling(study, comm, device=device, dtype=dtype)

# %% [markdown]
# ## Interactive: the same kernel on ipyparallel MPI engines
# In JupyterLab (a serial kernel, e.g. on a login or compute node inside a Slurm
# allocation), start a cluster of MPI engines and run the scaling kernel on all of them:
#
# ```python
# from turbda_kit.parallel.engines import mpi_engines
# with mpi_engines(4) as view:                  # mpiexec locally, srun inside an allocation
#     ds = view.apply_sync(engine_kernel, study)[0]   # engine of rank 0 returns the Dataset
# ```
# With `use_engines = True` this notebook does exactly that for each mode.

# %%
if use_engines:
    import tempfile

    from turbda_kit.parallel.engines import mpi_engines

    with tempfile.TemporaryDirectory(prefix="turbda-ipp-") as profile, \
            mpi_engines(n_engines, profile_dir=profile) as view:
        print(f"{len(view)} MPI engines up")
        for m, study in studies.items():
            datasets[m] = view.apply_sync(engine_kernel, study, device, dtype)[0]

# %% [markdown]
# ## Results
# Per point: time per cycle (mean without warm-up) and its parts, efficiency, CPU
# utilisation, peak memory per rank, final RMSE. `efficiency_cpu` uses CPU seconds per rank
# instead of wall time; `cpu_utilisation` is CPU time over (wall time x ranks x cores per
# rank): below 1 when ranks waited or other jobs took the cores. `oversubscribed` marks
# points whose ranks had fewer CPUs than the cores they keep busy.
# For strong scaling the final analyses of a size must be bit-identical for every rank
# count (random numbers are drawn by global index): the fingerprints check it.

# %%
if rank == 0:
    for m, ds in datasets.items():
        path = write_dataset(ds, out / f"scaling_{m}.nc")
        print(f"\n== {m} scaling -> {path}")
        print(scaling_table(ds).round(4).to_string())
        if m == "strong":
            same = {int(s): bool(np.unique(ds["fingerprint"].sel(size=s).values).size == 1)
                    for s in ds["size"].values}
            print(f"final analysis bit-identical across rank counts: {same}")
            assert all(same.values()), "strong scaling: analyses differ between rank counts"
    if datasets:
        summary = scaling_summary(datasets, command=f"04_ensf_scaling on {job_ranks} rank(s)")
        print("wrote", write_json(out / "scaling_summary.json", summary))

# %% [markdown]
# ## Plots
# RMSE per cycle (largest rank count) and the scaling curves, as PNG (matplotlib) and
# self-contained HTML (bokeh).

# %%
if rank == 0 and plots:
    for ds in datasets.values():
        for path in save_scaling_plots(ds, out):
            print("wrote", path)

# %%
# Ranks leave together (rank 0 writes files while the others would already be finalising).
comm.barrier()
print(f"rank {rank}: done")
