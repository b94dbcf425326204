"""Strong- and weak-scaling study of the distributed Lorenz-96 + EnSF experiment (the driver).

One MPI job of ``N`` ranks measures the whole curve: for every rank count ``p`` in the
sweep (``p <= N``), ``COMM_WORLD`` is split so that the first ``p`` ranks run
:func:`turbda_kit.experiments.l96_ensf.run_l96_ensf` while the others wait in a *sleeping*
barrier (:func:`turbda_kit.parallel.mpi.sleeping_barrier`: they poll and sleep instead of
spinning, so they do not steal cores from the ranks being timed). Each cycle's forecast,
halo exchange, analysis and reduction times are device-synchronised maxima over the
running ranks; peak memory per rank is measured per point (:mod:`turbda_kit.memory`).

Every point runs with the same resources per rank: ``threads_per_rank`` torch threads and
the EnSF noise prefetch on or off (off by default), so the 1-rank baseline does not get
more cores than each rank of the larger runs. The harness records the cores a rank keeps
busy, the CPUs each rank could have on its node, the process CPU time, and flags points
that were oversubscribed.

* **Strong scaling**: the total state size is fixed (``sizes`` are ring sizes).
* **Weak scaling**: the size per rank is fixed (``sizes`` are slab sizes, the ring has
  ``size * p`` points).

Efficiency maths: :mod:`turbda_kit.experiments.efficiency`. The Dataset, merging of several
jobs and the JSON summary: :mod:`turbda_kit.experiments.scaling_results`. Plots:
:mod:`turbda_kit.viz.scaling_plots`. Command line: ``benchmarks/bench_ensf_scaling.py``.

Because random numbers are drawn by global index, the analysis of a given ring size is
bit-identical for any rank count; the Dataset records an exact, split-independent
fingerprint of every final analysis
(:func:`turbda_kit.parallel.fingerprint.analysis_fingerprint`), so a strong-scaling study
checks this for free.

Example (``mpiexec -n 2 python -c ...``)::

    from turbda_kit.experiments.scaling import ScalingStudy, run_scaling
    ds = run_scaling(ScalingStudy(mode="strong", sizes=(4096,), ranks=(1, 2)))
    print(ds["efficiency"].values, ds["cpu_utilisation"].values)
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..device import resolve_device, synchronize
from ..errors import InputError
from ..filters.ensf import EnSFConfig
from ..memory import peak_memory_bytes, peak_memory_method, reset_peak_memory
from ..optional import require
from ..parallel.fingerprint import analysis_fingerprint
from ..parallel.halo import slab_bounds
from ..parallel.mpi import (
    abort_on_exception,
    first_ranks,
    get_comm,
    node_layout,
    node_local_rank,
    sleeping_barrier,
)
from ..random_streams import DEFAULT_BLOCK_SIZE
from .efficiency import MODES, cores_per_rank
from .l96_ensf import L96EnSFSettings, run_l96_ensf
from .scaling_results import COMPONENTS, SCORES, assemble_scaling, combine_scaling, summarize

# combine_scaling and summarize are part of the study's public face here too (readers of
# scaling results import them with the study); they live in scaling_results.
__all__ = ["MODES", "ScalingStudy", "combine_scaling", "engine_kernel", "run_scaling",
           "summarize"]


@dataclass(frozen=True)
class ScalingStudy:
    """What to sweep and the experiment run at every point (EnSF paper setting by default).

    Attributes
    ----------
    mode : {"strong", "weak"}
        Strong: ``sizes`` are total ring sizes. Weak: ``sizes`` are points per rank.
    sizes : tuple of int
        State sizes (see ``mode``); sorted on construction.
    ranks : tuple of int
        Rank counts to sweep, each at most the job's number of ranks; sorted.
    n_members : int
        Ensemble size (>= 2).
    euler_steps : int
        Euler-Maruyama steps of the EnSF reverse SDE (500 in the paper; the stiff arctan
        likelihood needs >= ~200 for a paper-like RMSE).
    obs : {"arctan", "identity"}
        Observation operator applied to every component.
    obs_error_std : float
        Observation error std (observation units), > 0.
    n_cycles : int
        Analysis cycles per point; must exceed ``warmup_cycles``.
    warmup_cycles : int
        Leading cycles left out of the per-cycle times (allocation, page faults, caches).
    steps_per_cycle : int
        RK4 steps of dt = 0.01 between analyses.
    spinup_steps : int
        Truth spin-up steps before cycle 0 (not timed).
    seed : int
        Root seed (same for every point, so equal sizes give equal experiments).
    align : int
        Slab boundaries fall on multiples of this (keep a multiple of 64; see
        :func:`turbda_kit.parallel.halo.slab_bounds`).
    block_size : int
        Values per independently seeded random block of the EnSF noise.
    threads_per_rank : int
        torch intra-op threads of every rank, set for the duration of the study (the
        same for the baseline and the larger rank counts).
    prefetch_noise : bool
        Let the EnSF draw its next random block in a background thread (CPU). Off by
        default: on, each rank keeps ``threads_per_rank + 1`` cores busy, and a 1-rank
        baseline on a node with idle cores gets more than the ranks of a full node. The
        harness counts it either way (``attrs["cores_per_rank"]``); results are
        bit-identical on or off.
    """

    mode: str = "strong"
    sizes: tuple[int, ...] = (4096,)
    ranks: tuple[int, ...] = (1,)
    n_members: int = 20
    euler_steps: int = 100
    obs: str = "arctan"
    obs_error_std: float = 0.05
    n_cycles: int = 3
    warmup_cycles: int = 1
    steps_per_cycle: int = 10
    spinup_steps: int = 100
    seed: int = 0
    align: int = 256
    block_size: int = DEFAULT_BLOCK_SIZE
    threads_per_rank: int = 1
    prefetch_noise: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode={self.mode!r}: choose one of {MODES}")
        for name in ("sizes", "ranks"):
            values = getattr(self, name)
            if isinstance(values, (int, np.integer)):
                values = (values,)
            try:
                values = tuple(sorted(int(v) for v in values))
            except (TypeError, ValueError) as err:
                raise InputError(f"{name}={values!r}: give a list of positive integers") from err
            if not values or values[0] < 1:
                raise InputError(f"{name}={list(values)}: give a non-empty list of integers >= 1")
            if len(set(values)) != len(values):
                raise InputError(f"{name}={list(values)} has repeated entries")
            object.__setattr__(self, name, values)
        for name in ("n_members", "euler_steps", "n_cycles", "steps_per_cycle", "align",
                     "block_size", "threads_per_rank"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name}={getattr(self, name)} must be >= 1")
        if self.n_members < 2:
            raise InputError(f"n_members={self.n_members}: EnSF needs an ensemble of >= 2")
        if not 0 <= self.warmup_cycles < self.n_cycles:
            raise InputError(f"warmup_cycles={self.warmup_cycles} with n_cycles={self.n_cycles}: "
                             f"need 0 <= warmup_cycles < n_cycles (at least one timed cycle)")
        if self.spinup_steps < 0:
            raise InputError(f"spinup_steps={self.spinup_steps} must be >= 0")
        if self.obs not in ("arctan", "identity"):
            raise InputError(f"obs={self.obs!r}: choose 'arctan' or 'identity'")
        if not self.obs_error_std > 0:
            raise InputError(f"obs_error_std={self.obs_error_std} must be > 0")
        if not isinstance(self.prefetch_noise, (bool, np.bool_)):
            raise InputError(f"prefetch_noise={self.prefetch_noise!r}: give true or false")
        object.__setattr__(self, "prefetch_noise", bool(self.prefetch_noise))
        if self.mode == "weak":
            bad = [s for s in self.sizes if s % self.align]
            if bad:
                raise InputError(f"sizes={list(self.sizes)} in weak mode: {bad} not a multiple of "
                                 f"align={self.align}; weak scaling keeps every rank's slab at "
                                 f"exactly `size` points, which needs size % align == 0")

    def global_size(self, size: int, ranks: int) -> int:
        """Ring size of the point ``(size, ranks)``: ``size`` (strong) or ``size * ranks`` (weak)."""
        return size if self.mode == "strong" else size * ranks

    def experiment(self, n_global: int) -> L96EnSFSettings:
        """The :class:`L96EnSFSettings` run at a point with a ring of ``n_global`` points."""
        return L96EnSFSettings(
            n_global=n_global, n_members=self.n_members, n_cycles=self.n_cycles,
            steps_per_cycle=self.steps_per_cycle, obs=self.obs,
            obs_error_std=self.obs_error_std, spinup_steps=self.spinup_steps,
            ensf=EnSFConfig.bao2024_lorenz96(n_steps=self.euler_steps,
                                             block_size=self.block_size,
                                             prefetch_noise=self.prefetch_noise),
            seed=self.seed, align=self.align)

    def cores_per_rank(self, device_type: str = "cpu") -> int:
        """Cores each rank keeps busy on ``device_type`` (threads, plus the prefetch thread)."""
        return cores_per_rank(self.threads_per_rank, self.prefetch_noise, device_type)

    def check(self, world_size: int) -> None:
        """Raise :class:`InputError` unless every point fits a job of ``world_size`` ranks.

        Pure and identical on every rank (no communication), so all ranks raise together
        before any collective starts.
        """
        too_many = [p for p in self.ranks if p > world_size]
        if too_many:
            raise InputError(f"ranks={list(self.ranks)}: {too_many} exceed the job's {world_size} "
                             f"MPI rank(s); launch with more ranks (mpiexec -n "
                             f"{max(self.ranks)}) or drop them")
        for size in self.sizes:
            for p in self.ranks:
                n_global = self.global_size(size, p)
                try:
                    slab_bounds(n_global, p, 0, align=self.align)
                except InputError as err:
                    raise InputError(f"sizes entry {size} ({self.mode} scaling) is too small for "
                                     f"{p} ranks: {err}") from None


# ---------------------------------------------------------------------------------------
# Driver


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    named = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(dtype, str) and dtype in named:
        return named[dtype]
    raise InputError(f"dtype={dtype!r}: use 'float32' or 'float64'")


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads; restore the previous number after."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_point(study: ScalingStudy, n_global: int, sub: Any, device: torch.device,
               dtype: torch.dtype, show_progress: bool | None) -> dict[str, Any]:
    """Run one point on the ranks of ``sub``; the record is complete on ``sub``'s rank 0."""
    layout = node_layout(sub)
    gc.collect()
    baseline = reset_peak_memory(device)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    result = run_l96_ensf(study.experiment(n_global), sub, device, dtype, show_progress)
    synchronize(device)
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    peak = peak_memory_bytes(device)
    fingerprint = analysis_fingerprint(result.analysis, result.start, n_global, sub)
    available = layout.cpus_per_rank
    if sub.Get_size() > 1:
        MPI = require("mpi4py.MPI", "the scaling study")
        peak = int(sub.allreduce(peak, op=MPI.MAX))
        baseline = int(sub.allreduce(baseline, op=MPI.MAX))
        wall = float(sub.allreduce(wall, op=MPI.MAX))
        cpu = float(sub.allreduce(cpu, op=MPI.SUM))
        available = float(sub.allreduce(available, op=MPI.MIN))
    record = {name: result.records[name] for name in SCORES}
    record.update({f"time_{c}_s": result.records[f"time_{c}_s"] for c in COMPONENTS})
    record.update(n_global=n_global, peak_memory_bytes=peak, baseline_memory_bytes=baseline,
                  fingerprint=fingerprint, point_wall_s=wall, point_cpu_s=cpu,
                  cores_available_per_rank=available)
    del result
    return record


def _log_point(study: ScalingStudy, record: dict[str, Any], size: int, p: int,
               cores: int) -> None:
    timed = record["time_total_s"][study.warmup_cycles:]
    used = record["point_cpu_s"] / (record["point_wall_s"] * p * cores)
    print(f"[scaling] {study.mode}: size {size:,} (ring {record['n_global']:,}), {p} rank(s) x "
          f"{cores} core(s): {np.mean(timed):.3f} s/cycle, CPU utilisation {used:.2f}, final "
          f"RMSE {record['rmse_analysis'][-1]:.3f}, peak "
          f"{record['peak_memory_bytes'] / 2**20:.0f} MiB per rank", flush=True)
    if record["cores_available_per_rank"] < cores:
        print(f"[scaling] warning: each rank keeps {cores} core(s) busy but only "
              f"{record['cores_available_per_rank']:g} CPU(s) per rank are available on its node: "
              "this point measures sharing, not scaling (lower threads_per_rank, turn "
              "prefetch_noise off, or use fewer ranks per node)", flush=True)


def run_scaling(study: ScalingStudy, comm: Any | None = None,
                device: torch.device | str = "auto", dtype: torch.dtype | str = torch.float32,
                show_progress: bool | None = None, log: bool = True):
    """Run every point of ``study`` on sub-communicators of ``comm``; return the Dataset.

    Collective over ``comm``. For each size and each rank count ``p`` the first ``p``
    ranks run :func:`~turbda_kit.experiments.l96_ensf.run_l96_ensf` with
    ``study.threads_per_rank`` torch threads each; the others sleep in
    :func:`~turbda_kit.parallel.mpi.sleeping_barrier`.

    Parameters
    ----------
    study : ScalingStudy
        Checked against ``comm``'s size (:meth:`ScalingStudy.check`) before anything runs,
        identically on every rank.
    comm : communicator, optional
        Default :func:`turbda_kit.parallel.mpi.get_comm` (COMM_WORLD under a launcher,
        else one process).
    device : torch.device or str
        ``"auto"`` picks the GPU of this rank's node-local rank, else the CPU.
    dtype : torch.dtype or {"float32", "float64"}
    show_progress : bool, optional
        Per-cycle progress of each point (default: rank 0, plain lines off a TTY).
    log : bool
        Print one line per point on rank 0 (and a warning for oversubscribed points).

    Returns
    -------
    xarray.Dataset
        On every rank, with the derived variables of
        :func:`~turbda_kit.experiments.scaling_results.summarize`. Dims ``ranks``,
        ``size``, ``cycle``; per-cycle ``rmse_forecast``, ``rmse_analysis``,
        ``spread_analysis`` and ``time_{forecast,halo,analysis,reduce,total}_s``; per point
        ``n_global``, ``peak_memory_bytes``, ``baseline_memory_bytes`` (max over ranks),
        ``point_wall_s`` (max over ranks), ``point_cpu_s`` (sum over ranks),
        ``cores_available_per_rank`` (min over nodes), ``fingerprint``; study settings,
        ``cores_per_rank``, device and provenance in ``attrs``.

    Raises
    ------
    InputError
        A rank count above the job's size, sizes too small for the decomposition, bad
        device or dtype (raised on every rank before any communication).
    """
    comm = get_comm(comm)
    rank, world = comm.Get_rank(), comm.Get_size()
    study.check(world)
    dtype = _as_dtype(dtype)
    device = resolve_device(device, node_local_rank(comm))
    cores = study.cores_per_rank(device.type)
    records: dict[tuple[int, int], dict[str, Any]] = {}
    with _torch_threads(study.threads_per_rank):
        for size in study.sizes:
            for p in study.ranks:
                n_global = study.global_size(size, p)
                with first_ranks(comm, p) as sub:
                    if sub is not None:
                        record = _run_point(study, n_global, sub, device, dtype, show_progress)
                        if rank == 0:
                            records[(p, size)] = record
                sleeping_barrier(comm)
                if log and rank == 0:
                    _log_point(study, records[(p, size)], size, p, cores)
        threads_used = torch.get_num_threads()
    if world > 1:
        records = comm.bcast(records if rank == 0 else None, root=0)
    attrs = {"device": str(device), "device_type": device.type,
             "dtype": str(dtype).split(".")[-1], "job_ranks": world,
             "torch_threads": threads_used, "cores_per_rank": cores,
             "peak_memory_method": peak_memory_method(device)}
    return summarize(assemble_scaling(study, records, attrs))


def engine_kernel(study: ScalingStudy, device: str = "auto", dtype: str = "float32"):
    """What each ipyparallel MPI engine runs: :func:`run_scaling` on ``MPI.COMM_WORLD``.

    Use with :func:`turbda_kit.parallel.engines.mpi_engines`::

        with mpi_engines(2) as view:
            ds = view.apply_sync(engine_kernel, study)[0]

    Parameters
    ----------
    study : ScalingStudy
        Its ``threads_per_rank`` sets the torch threads of every engine during the run.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``.
    dtype : {"float32", "float64"}

    Returns
    -------
    xarray.Dataset on the engine of rank 0, None on the others.
    """
    MPI = require("mpi4py.MPI", "the scaling study")
    comm = MPI.COMM_WORLD
    # Input errors are raised identically on every engine before any collective, so they
    # come back to the notebook; a failure mid-run aborts the engines instead of hanging.
    study.check(comm.Get_size())
    _as_dtype(dtype)
    with abort_on_exception(comm):
        ds = run_scaling(study, comm, device, dtype, show_progress=False, log=False)
    return ds if comm.Get_rank() == 0 else None
