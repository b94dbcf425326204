"""Strong- and weak-scaling study of the distributed Lorenz-96 + EnSF experiment.

One MPI job of ``N`` ranks measures the whole curve: for every rank count ``p`` in the
sweep (``p <= N``), ``COMM_WORLD`` is split so that the first ``p`` ranks run
:func:`turbda_kit.experiments.l96_ensf.run_l96_ensf` while the others wait in a *sleeping*
barrier (they poll and sleep instead of spinning, so they do not steal cores from the
ranks being timed). Each cycle's forecast, halo exchange, analysis and reduction times
are device-synchronised maxima over the running ranks; peak memory is measured per point
(the high-water mark is reset before each one).

* **Strong scaling**: the total state size is fixed (``sizes`` are ring sizes) and the
  ranks vary; efficiency ``E(p) = p0 T(p0) / (p T(p))``, i.e. ``T(1) / (p T(1))`` when the
  sweep starts at one rank.
* **Weak scaling**: the size per rank is fixed (``sizes`` are slab sizes, the ring has
  ``size * p`` points); efficiency ``E(p) = T(p0) / T(p)``.

``T(p)`` is the mean wall time per cycle with the first ``warmup_cycles`` cycles left out.
Results are an :class:`xarray.Dataset` with dims ``(ranks, size, cycle)``; Datasets of
several jobs (e.g. one per Frontier node count) are merged with :func:`combine_scaling`,
which recomputes the efficiency against the smallest rank count.

Because random numbers are drawn by global index, the analysis of a given ring size is
bit-identical for any rank count; the Dataset records an exact, split-independent
fingerprint of every final analysis (:func:`analysis_fingerprint`) so a strong-scaling
study checks this for free.

Example (``mpiexec -n 2 python -c ...``)::

    from turbda_kit.experiments.scaling import ScalingStudy, run_scaling
    ds = run_scaling(ScalingStudy(mode="strong", sizes=(4096,), ranks=(1, 2)))
    print(ds["efficiency"].values)

Command line (merge the Datasets of several jobs, optionally with plots)::

    python -m turbda_kit.experiments.scaling combine -o all.nc nodes-*/scaling_strong.nc
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import re
import resource
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..device import resolve_device, synchronize
from ..errors import InputError
from ..filters.ensf import EnSFConfig
from ..parallel.halo import slab_bounds
from ..parallel.mpi import get_comm
from ..random_streams import DEFAULT_BLOCK_SIZE
from .l96_ensf import L96EnSFSettings, run_l96_ensf

__all__ = [
    "MODES",
    "ScalingStudy",
    "analysis_fingerprint",
    "combine_scaling",
    "efficiency",
    "engine_kernel",
    "first_ranks",
    "node_local_rank",
    "peak_memory_bytes",
    "reset_peak_memory",
    "run_scaling",
    "save_scaling_plots",
    "sleeping_barrier",
    "summarize",
]

MODES = ("strong", "weak")
# Per-cycle wall times recorded by run_l96_ensf (maximum over ranks), in the order
# forecast, halo, analysis, reduce, total.
_COMPONENTS = ("forecast", "halo", "analysis", "reduce", "total")
_SCORES = ("rmse_forecast", "rmse_analysis", "spread_analysis")
# Study fields that must agree before Datasets of several jobs can be combined.
_COMPARABLE = ("mode", "n_members", "euler_steps", "obs", "obs_error_std", "n_cycles",
               "warmup_cycles", "steps_per_cycle", "spinup_steps", "seed", "align",
               "block_size", "dtype")
# A Mersenne prime: fingerprint terms (< 2**31) times weights (< 2**31) fit in int64.
_FINGERPRINT_PRIME = 2 ** 31 - 1


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
                     "block_size"):
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
                                             block_size=self.block_size),
            seed=self.seed, align=self.align)

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
# Pure functions


def efficiency(times: np.ndarray, ranks: Sequence[int], mode: str) -> np.ndarray:
    """Parallel efficiency from wall times per cycle.

    Parameters
    ----------
    times : array, shape (n_ranks, ...)
        Time per cycle (s) for each rank count along axis 0 (any trailing dims, e.g. size).
        NaN marks a point that was not run.
    ranks : sequence of int, length n_ranks
        The rank counts, increasing.
    mode : {"strong", "weak"}

    Returns
    -------
    ndarray, shape of ``times``
        Strong: ``p0 T(p0) / (p T(p))``; weak: ``T(p0) / T(p)``, where ``p0`` is the
        smallest rank count with a finite time (per trailing index). With ``p0 = 1`` these
        are ``T(1) / (p T(p))`` and ``T(1) / T(p)``. 1 is perfect scaling.
    """
    if mode not in MODES:
        raise InputError(f"mode={mode!r}: choose one of {MODES}")
    t = np.asarray(times, dtype=np.float64)
    p = np.asarray(ranks, dtype=np.float64)
    if t.ndim < 1 or p.shape != (t.shape[0],):
        raise InputError(f"times of shape {t.shape} and {len(p)} rank counts: axis 0 of times "
                         f"must have one entry per rank count")
    if np.any(np.diff(p) <= 0):
        raise InputError(f"ranks={list(np.asarray(ranks))} must be strictly increasing")
    finite = np.isfinite(t) & (t > 0)
    first = np.argmax(finite, axis=0)                  # index of p0 per trailing entry
    base_t = np.take_along_axis(t, first[None], axis=0)[0]
    base_p = p[first]
    p_full = p.reshape((-1,) + (1,) * (t.ndim - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        eff = base_t / t if mode == "weak" else (base_p * base_t) / (p_full * t)
    return np.where(finite, eff, np.nan)


def analysis_fingerprint(local: Tensor, offset: int, n_global: int, comm: Any | None = None,
                         chunk: int = 2 ** 22) -> int:
    """Exact fingerprint of a distributed ensemble, independent of how it is split.

    Every value's bit pattern (as 32-bit words) ``u`` at global word position ``i`` (member
    by member, then along the ring) contributes ``(u mod P) (i mod (P - 1) + 1) mod P``
    with ``P = 2**31 - 1``; the integer sum modulo ``P`` is exact, so it does not depend
    on the order of summation or on the number of ranks. Equal fingerprints mean the
    ensembles are equal up to a ~1e-9 chance collision.

    Parameters
    ----------
    local : Tensor, shape (member, m)
        This rank's slab ``[offset, offset + m)`` of the global ``(member, n_global)`` array.
    offset : int
        Global index of the slab's first point.
    n_global : int
        Ring size.
    comm : communicator, optional
        Ranks holding the other slabs (None: ``local`` is the whole array).
    chunk : int
        Words per integer temporary (bounds memory to a few ``8 * chunk`` bytes).

    Returns
    -------
    int
        In ``[0, P)``, identical on every rank of ``comm``.
    """
    if local.dim() != 2:
        raise InputError(f"local has shape {tuple(local.shape)}; expected (member, m)")
    if local.element_size() % 4:
        raise InputError(f"fingerprints need 32- or 64-bit values, got {local.dtype}")
    words = local.detach().contiguous().view(torch.int32)       # (member, m * w)
    per_value = local.element_size() // 4
    row_words = n_global * per_value
    total = 0
    for member in range(words.shape[0]):
        base = member * row_words + offset * per_value
        row = words[member]
        for a in range(0, row.numel(), chunk):
            u = row[a:a + chunk].to(torch.int64).bitwise_and_(0xFFFFFFFF).remainder_(
                _FINGERPRINT_PRIME)
            weight = torch.arange(base + a, base + a + u.numel(), dtype=torch.int64,
                                  device=u.device).remainder_(_FINGERPRINT_PRIME - 1).add_(1)
            total += int(u.mul_(weight).remainder_(_FINGERPRINT_PRIME).sum())
    total %= _FINGERPRINT_PRIME
    if comm is not None and comm.Get_size() > 1:
        total = int(comm.allreduce(total)) % _FINGERPRINT_PRIME
    return total


# ---------------------------------------------------------------------------------------
# Memory and communicator helpers


def reset_peak_memory(device: torch.device) -> int:
    """Reset this process's memory high-water mark; return current use in bytes.

    GPU: torch's peak-allocation counter. CPU (Linux): the kernel's peak resident set
    size (``VmHWM``), reset by writing 5 to ``/proc/self/clear_refs``.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    return _proc_status_bytes("VmRSS") or 0


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory since :func:`reset_peak_memory`: device allocation (GPU) or ``VmHWM`` (CPU).

    Falls back to ``getrusage`` (peak over the process's life) where ``/proc`` is missing.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    value = _proc_status_bytes("VmHWM")
    if value is None:
        value = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return value


def _proc_status_bytes(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def sleeping_barrier(comm: Any, poll_seconds: float = 0.002) -> None:
    """A barrier whose waiting ranks sleep between polls instead of spinning.

    MPICH's blocking barrier busy-waits, which on a node with as many ranks as cores
    steals CPU from the ranks being timed.
    """
    if comm is None or comm.Get_size() == 1:
        return
    if not hasattr(comm, "Ibarrier"):
        comm.barrier()
        return
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll_seconds)


@contextlib.contextmanager
def first_ranks(comm: Any, p: int) -> Iterator[Any | None]:
    """Communicator of ranks ``0 .. p-1`` of ``comm`` (``None`` on the others); freed on exit.

    Collective over ``comm``. With a one-process communicator and ``p = 1``, ``comm``
    itself is yielded.
    """
    size = comm.Get_size()
    if not 1 <= p <= size:
        raise InputError(f"p={p}: need 1 <= p <= {size} (the communicator's size)")
    if size == 1:
        yield comm
        return
    from mpi4py import MPI

    rank = comm.Get_rank()
    sub = comm.Split(0 if rank < p else MPI.UNDEFINED, rank)
    try:
        yield None if sub == MPI.COMM_NULL else sub
    finally:
        if sub != MPI.COMM_NULL:
            sub.Free()


def node_local_rank(comm: Any | None) -> int:
    """Rank of this process among the ranks of ``comm`` on the same node (0 when serial)."""
    if comm is None or comm.Get_size() == 1 or not hasattr(comm, "Split_type"):
        return 0
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return int(local.Get_rank())
    finally:
        local.Free()


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    named = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(dtype, str) and dtype in named:
        return named[dtype]
    raise InputError(f"dtype={dtype!r}: use 'float32' or 'float64'")


# ---------------------------------------------------------------------------------------
# Driver


def _run_point(study: ScalingStudy, n_global: int, sub: Any, device: torch.device,
               dtype: torch.dtype, show_progress: bool | None) -> dict[str, Any]:
    """Run one point on the ranks of ``sub``; the record is complete on ``sub``'s rank 0."""
    gc.collect()
    baseline = reset_peak_memory(device)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    result = run_l96_ensf(study.experiment(n_global), sub, device, dtype, show_progress)
    synchronize(device)
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    peak = peak_memory_bytes(device)
    fingerprint = analysis_fingerprint(result.analysis, result.start, n_global, sub)
    if sub.Get_size() > 1:
        from mpi4py import MPI

        peak = int(sub.allreduce(peak, op=MPI.MAX))
        baseline = int(sub.allreduce(baseline, op=MPI.MAX))
        wall = float(sub.allreduce(wall, op=MPI.MAX))
        cpu = float(sub.allreduce(cpu, op=MPI.SUM))
    record = {name: result.records[name] for name in _SCORES}
    record.update({f"time_{c}_s": result.records[f"time_{c}_s"] for c in _COMPONENTS})
    record.update(n_global=n_global, peak_memory_bytes=peak, baseline_memory_bytes=baseline,
                  fingerprint=fingerprint, point_wall_s=wall, point_cpu_s=cpu)
    del result
    return record


def run_scaling(study: ScalingStudy, comm: Any | None = None,
                device: torch.device | str = "auto", dtype: torch.dtype | str = torch.float32,
                show_progress: bool | None = None, log: bool = True):
    """Run every point of ``study`` on sub-communicators of ``comm``; return the Dataset.

    Collective over ``comm``. For each size and each rank count ``p`` the first ``p``
    ranks run :func:`~turbda_kit.experiments.l96_ensf.run_l96_ensf`; the others sleep in
    :func:`sleeping_barrier`.

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
        Print one line per point on rank 0.

    Returns
    -------
    xarray.Dataset
        On every rank (see :func:`summarize` for the derived variables). Dims ``ranks``,
        ``size``, ``cycle``; per-cycle ``rmse_forecast``, ``rmse_analysis``,
        ``spread_analysis`` and ``time_{forecast,halo,analysis,reduce,total}_s``; per point
        ``n_global``, ``peak_memory_bytes``, ``baseline_memory_bytes`` (max over ranks),
        ``point_wall_s`` (max over ranks), ``point_cpu_s`` (sum over ranks),
        ``fingerprint``; study settings and provenance in ``attrs``.

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
    records: dict[tuple[int, int], dict[str, Any]] = {}
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
                rec = records[(p, size)]
                timed = rec["time_total_s"][study.warmup_cycles:]
                print(f"[scaling] {study.mode}: size {size:,} (ring {n_global:,}), {p} rank(s): "
                      f"{np.mean(timed):.3f} s/cycle, final RMSE {rec['rmse_analysis'][-1]:.3f}, "
                      f"peak {rec['peak_memory_bytes'] / 2**20:.0f} MiB per rank", flush=True)
    if world > 1:
        records = comm.bcast(records if rank == 0 else None, root=0)
    return summarize(_assemble(study, records, device, dtype, world))


def _assemble(study: ScalingStudy, records: Mapping[tuple[int, int], dict[str, Any]],
              device: torch.device, dtype: torch.dtype, world: int):
    import xarray as xr

    from .. import provenance

    ranks, sizes = list(study.ranks), list(study.sizes)
    shape = (len(ranks), len(sizes))

    def grid(key: str, per_cycle: bool, fill: float = np.nan, kind=np.float64) -> np.ndarray:
        out = np.full(shape + ((study.n_cycles,) if per_cycle else ()), fill, dtype=kind)
        for (p, size), rec in records.items():
            out[ranks.index(p), sizes.index(size)] = rec[key]
        return out

    cycle_dims = ("ranks", "size", "cycle")
    data: dict[str, Any] = {}
    for name in _SCORES:
        data[name] = (cycle_dims, grid(name, True), {
            "units": "1", "long_name": name.replace("_", " ") + " (global, Lorenz-96 units)"})
    for c in _COMPONENTS:
        data[f"time_{c}_s"] = (cycle_dims, grid(f"time_{c}_s", True), {
            "units": "s", "long_name": f"{c} wall time per cycle, max over ranks"})
    data["n_global"] = (("ranks", "size"), grid("n_global", False, 0, np.int64),
                        {"units": "1", "long_name": "ring size (state dimension)"})
    data["peak_memory_bytes"] = (("ranks", "size"), grid("peak_memory_bytes", False, 0, np.int64),
                                 {"units": "bytes", "long_name": "peak memory per rank, max over "
                                  "ranks (CPU: peak RSS; GPU: peak device allocation)"})
    data["baseline_memory_bytes"] = (("ranks", "size"),
                                     grid("baseline_memory_bytes", False, 0, np.int64),
                                     {"units": "bytes", "long_name": "memory in use before the "
                                      "point started, max over ranks"})
    data["point_wall_s"] = (("ranks", "size"), grid("point_wall_s", False), {
        "units": "s", "long_name": "wall time of the whole point (spin-up and all cycles), max "
        "over ranks"})
    data["point_cpu_s"] = (("ranks", "size"), grid("point_cpu_s", False), {
        "units": "s", "long_name": "CPU time of the whole point (all threads), summed over ranks"})
    data["fingerprint"] = (("ranks", "size"), grid("fingerprint", False, -1, np.int64),
                           {"long_name": "exact split-independent fingerprint of the final "
                            "analysis ensemble (analysis_fingerprint)"})
    size_meaning = "total ring size" if study.mode == "strong" else "points per rank"
    coords = {"ranks": ("ranks", np.asarray(ranks, dtype=np.int64), {"long_name": "MPI ranks"}),
              "size": ("size", np.asarray(sizes, dtype=np.int64), {"long_name": size_meaning}),
              "cycle": ("cycle", np.arange(study.n_cycles), {"long_name": "analysis cycle"})}
    attrs: dict[str, Any] = {
        "title": f"EnSF Lorenz-96 {study.mode}-scaling study",
        "device": str(device), "device_type": device.type, "dtype": str(dtype).split(".")[-1],
        "job_ranks": world, "threads_per_rank": torch.get_num_threads(),
        "peak_memory_method": ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                               else "VmHWM (reset per point)"),
    }
    for key, value in dataclasses.asdict(study).items():
        if key not in ("sizes", "ranks"):
            attrs[key] = value
    attrs.update(provenance.as_attrs(provenance.collect()))
    return xr.Dataset(data, coords=coords, attrs=attrs)


def summarize(ds):
    """Add (or refresh) the per-point summaries of a scaling Dataset.

    Adds ``time_per_cycle_s`` and ``{forecast,halo,analysis,reduce}_per_cycle_s`` (means
    over the cycles after ``attrs["warmup_cycles"]``) and ``efficiency`` from
    ``time_per_cycle_s`` (:func:`efficiency`, baseline the smallest rank count). With
    ``point_cpu_s`` present, also ``efficiency_cpu`` (the same formula with CPU seconds per
    rank of the whole point as ``T``: insensitive to other users' load) and
    ``cpu_utilisation`` (CPU time over ranks x threads x wall time).

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`run_scaling` or :func:`combine_scaling`.

    Returns
    -------
    xarray.Dataset
        A new Dataset.
    """
    warmup = int(ds.attrs.get("warmup_cycles", 1))
    timed = ds.isel(cycle=slice(warmup, None))
    out = ds.copy()
    for c in _COMPONENTS:
        name = "time_per_cycle_s" if c == "total" else f"{c}_per_cycle_s"
        out[name] = timed[f"time_{c}_s"].mean("cycle", skipna=False)
        out[name].attrs = {"units": "s", "long_name": f"mean {c} wall time per cycle "
                           f"(cycles {warmup}..{ds.sizes['cycle'] - 1})"}
    times = out["time_per_cycle_s"].transpose("ranks", ...)
    eff = efficiency(times.values, ds["ranks"].values, ds.attrs["mode"])
    rule = "p0 T(p0) / (p T(p))" if ds.attrs["mode"] == "strong" else "T(p0) / T(p)"
    out["efficiency"] = (times.dims, eff, {
        "units": "1", "long_name": f"{ds.attrs['mode']}-scaling efficiency {rule}, p0 = smallest "
        "rank count run"})
    if "point_cpu_s" in ds:
        # On a shared machine a rank may get less than its cores; CPU seconds per rank play
        # the role of T(p) in a measure that time-sharing does not distort (busy-waiting in
        # MPI counts as used, so it is, if anything, pessimistic).
        threads = float(ds.attrs.get("threads_per_rank", 1))
        per_rank = (ds["point_cpu_s"] / ds["ranks"]).transpose("ranks", ...)
        out["efficiency_cpu"] = (per_rank.dims, efficiency(per_rank.values, ds["ranks"].values,
                                                           ds.attrs["mode"]), {
            "units": "1", "long_name": f"{rule} with T = CPU seconds per rank of the whole point"})
        out["cpu_utilisation"] = ds["point_cpu_s"] / (ds["ranks"] * threads * ds["point_wall_s"])
        out["cpu_utilisation"].attrs = {
            "units": "1", "long_name": "CPU time / (ranks x threads x wall time): the share of "
            "its cores the job got (< 1 on a busy shared machine)"}
    return out


def combine_scaling(datasets: Sequence[Any]):
    """Merge scaling Datasets of several jobs (e.g. one per node count) into one.

    Parameters
    ----------
    datasets : sequence of xarray.Dataset or path-like
        Outputs of :func:`run_scaling` (paths are opened with
        :func:`turbda_kit.io.open_dataset`), of the same mode and experiment settings.
        Their sizes may differ (missing points become NaN); a rank count may appear in one
        Dataset only.

    Returns
    -------
    xarray.Dataset
        Sorted by ``ranks`` and ``size``, with :func:`summarize` recomputed (efficiency
        against the smallest rank count of the merged sweep).

    Raises
    ------
    InputError
        Empty input, mixed modes or settings, or a rank count in two Datasets.
    """
    import xarray as xr

    from ..io import open_dataset

    if not datasets:
        raise InputError("combine_scaling needs at least one Dataset or path")
    loaded, names = [], []
    for item in datasets:
        if isinstance(item, (str, os.PathLike)):
            with open_dataset(item) as opened:
                loaded.append(opened.load())
            names.append(str(item))
        else:
            loaded.append(item)
            names.append(f"dataset {len(names)}")
    first = loaded[0].attrs
    for name, ds in zip(names[1:], loaded[1:]):
        different = [k for k in _COMPARABLE if str(ds.attrs.get(k)) != str(first.get(k))]
        if different:
            detail = ", ".join(f"{k}: {first.get(k)!r} vs {ds.attrs.get(k)!r}" for k in different)
            raise InputError(f"cannot combine {names[0]} and {name}: different settings ({detail})")
    seen: dict[int, str] = {}
    for name, ds in zip(names, loaded):
        for p in ds["ranks"].values.tolist():
            if p in seen:
                raise InputError(f"rank count {p} appears in both {seen[p]} and {name}: drop one "
                                 "(combine_scaling does not average repeated runs)")
            seen[p] = name
    derived = ["efficiency", "efficiency_cpu", "cpu_utilisation", "time_per_cycle_s"] + [
        f"{c}_per_cycle_s" for c in _COMPONENTS[:-1]]
    parts = [ds.drop_vars([v for v in derived if v in ds]) for ds in loaded]
    merged = xr.concat(parts, dim="ranks", join="outer", combine_attrs="override",
                       fill_value={"n_global": 0, "peak_memory_bytes": 0,
                                   "baseline_memory_bytes": 0, "fingerprint": -1})
    merged = merged.sortby("ranks").sortby("size")
    merged.attrs["job_ranks"] = max(int(ds.attrs.get("job_ranks", 0)) for ds in loaded)
    merged.attrs["combined_from"] = "; ".join(names)
    return summarize(merged)


# ---------------------------------------------------------------------------------------
# Interactive (ipyparallel) and plots


def engine_kernel(study: ScalingStudy, device: str = "auto", dtype: str = "float32",
                  threads: int | None = None):
    """What each ipyparallel MPI engine runs: :func:`run_scaling` on ``MPI.COMM_WORLD``.

    Use with :func:`turbda_kit.parallel.engines.mpi_engines`::

        with mpi_engines(2) as view:
            ds = view.apply_sync(engine_kernel, study)[0]

    Parameters
    ----------
    study : ScalingStudy
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``.
    dtype : {"float32", "float64"}
    threads : int, optional
        torch intra-op threads per engine (default: leave torch's setting).

    Returns
    -------
    xarray.Dataset on the engine of rank 0, None on the others.
    """
    from mpi4py import MPI

    from ..parallel.mpi import abort_on_exception

    comm = MPI.COMM_WORLD
    # Input errors are raised identically on every engine before any collective, so they
    # come back to the notebook; a failure mid-run aborts the engines instead of hanging.
    study.check(comm.Get_size())
    _as_dtype(dtype)
    if threads:
        torch.set_num_threads(int(threads))
    with abort_on_exception(comm):
        ds = run_scaling(study, comm, device, dtype, show_progress=False, log=False)
    return ds if comm.Get_rank() == 0 else None


def save_scaling_plots(ds, out_dir: str | os.PathLike, prefix: str | None = None,
                       html: bool = True) -> list[Path]:
    """Write the scaling curves and RMSE per cycle as PNG (+ HTML) into ``out_dir``.

    Files: ``{prefix}_time.*`` (time per cycle vs ranks, one curve per size),
    ``{prefix}_efficiency.*`` and ``{prefix}_rmse.*`` (analysis RMSE per cycle at the
    largest rank count, one curve per size). ``prefix`` defaults to ``scaling_{mode}``.

    Returns
    -------
    list of Path
        The files written.
    """
    import holoviews as hv

    from ..viz.plots import save, scaling

    prefix = prefix or f"scaling_{ds.attrs['mode']}"
    out = Path(out_dir)
    written: list[Path] = []
    label = "total size" if ds.attrs["mode"] == "strong" else "size per rank"
    title = f"{ds.attrs['mode']} scaling ({label})"
    written += save(scaling(ds, y="time_per_cycle_s", by="size", title=title),
                    out / f"{prefix}_time", html=html)
    written += save(scaling(ds, y="efficiency", by="size", title=f"{title}: efficiency"),
                    out / f"{prefix}_efficiency", html=html)
    largest = ds.isel(ranks=-1)
    curves = [hv.Curve((ds["cycle"].values, largest["rmse_analysis"].sel(size=s).values),
                       "cycle", "analysis RMSE", label=f"size={int(s)}")
              for s in ds["size"].values]
    rmse_plot = hv.Overlay(curves).opts(
        title=f"analysis RMSE per cycle, {int(largest['ranks'])} rank(s)")
    written += save(rmse_plot, out / f"{prefix}_rmse", html=html)
    return written


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m turbda_kit.experiments.scaling",
        description="Tools for EnSF scaling Datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("combine", help="merge the Datasets of several jobs")
    merge.add_argument("inputs", nargs="+", help="scaling_*.nc files (same mode and settings)")
    merge.add_argument("-o", "--out", required=True, help="output .nc file")
    merge.add_argument("--plots", action="store_true", help="also write PNG/HTML plots beside it")
    args = parser.parse_args(argv)
    from ..io import write_dataset

    try:
        ds = combine_scaling(args.inputs)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_dataset(ds, args.out)
    table = ds["time_per_cycle_s"].to_pandas()
    print(f"wrote {args.out}: {ds.attrs['mode']} scaling, ranks {ds['ranks'].values.tolist()}, "
          f"sizes {ds['size'].values.tolist()}\ntime per cycle (s):\n{table}\n"
          f"efficiency:\n{ds['efficiency'].to_pandas()}")
    if args.plots:
        for path in save_scaling_plots(ds, Path(args.out).parent,
                                       prefix=Path(args.out).stem):
            print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
