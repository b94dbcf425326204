"""One EnSF filter on one Lorenz-96 state decomposed across MPI ranks.

Every rank owns a slab of the ring (:func:`turbda_kit.parallel.halo.slab_bounds`),
advances truth and ensemble with halo exchange between Runge–Kutta stages, and analyses
its slab locally (EnSF with elementwise observation operators is local). Truth,
observations and every random draw are generated on the fly from the global index
(:func:`turbda_kit.random_streams.indexed_normal_`), so no problem file is needed and the
analysis is **bit-identical for any number of ranks**. RMSE and spread are global
reductions.

Example (run with ``mpiexec -n 2 python -c ...``)::

    from mpi4py import MPI
    from turbda_kit.experiments.l96_ensf import L96EnSFSettings, run_l96_ensf
    result = run_l96_ensf(L96EnSFSettings(n_global=10_000, n_cycles=5), MPI.COMM_WORLD)
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..device import synchronize
from ..errors import DivergenceError, InputError
from ..filters.ensf import EnSFConfig, ensf_analysis
from ..memory import peak_memory_bytes
from ..models.lorenz96 import L96Workspace, rk4_step_
from ..obs.operators import Arctan, Identity
from ..optional import require
from ..parallel.halo import RingHaloExchange, slab_bounds
from ..progress import progress_bar
from ..random_streams import block_seed, indexed_normal_

__all__ = ["L96EnSFResult", "L96EnSFSettings", "gather_slabs", "run_l96_ensf"]

# Keys of the random streams (first word after the seed).
_TRUTH, _ENSEMBLE, _OBS, _ANALYSIS = 1, 2, 3, 4


@dataclass(frozen=True)
class L96EnSFSettings:
    """A distributed Lorenz-96 + EnSF experiment (defaults: the EnSF paper's setting).

    Attributes
    ----------
    n_global : int
        Ring size (state dimension).
    n_members : int
        Ensemble size.
    n_cycles : int
        Analysis cycles.
    steps_per_cycle : int
        RK4 steps between observations (10 × dt 0.01).
    dt : float
        Time step (model time units).
    forcing : float
        F.
    obs : {"arctan", "identity"}
        Every component observed, through ``arctan(x)`` or directly.
    obs_error_std : float
        Observation error std (obs units).
    spinup_steps : int
        Truth spin-up from ``F + N(0, 1)`` before cycle 0.
    initial_spread : float
        Std of the initial ensemble around the truth.
    ensf : EnSFConfig
        EnSF hyperparameters (500 Euler steps in the paper's setting).
    seed : int
        Root seed.
    align : int
        Slab boundaries fall on multiples of this (see
        :func:`turbda_kit.parallel.halo.slab_bounds`); keep it a multiple of 64.
    """

    n_global: int = 1_000_000
    n_members: int = 20
    n_cycles: int = 150
    steps_per_cycle: int = 10
    dt: float = 0.01
    forcing: float = 8.0
    obs: str = "arctan"
    obs_error_std: float = 0.05
    spinup_steps: int = 1000
    initial_spread: float = 1.0
    ensf: EnSFConfig = field(default_factory=lambda: EnSFConfig(n_steps=500))
    seed: int = 0
    align: int = 256

    def __post_init__(self) -> None:
        for name in ("n_global", "n_members", "n_cycles", "steps_per_cycle"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_members < 2:
            raise InputError(f"n_members must be >= 2 (EnSF needs an ensemble), got {self.n_members}")
        if not self.dt > 0 or not self.obs_error_std > 0:
            raise InputError(f"dt and obs_error_std must be > 0, got {self.dt}, {self.obs_error_std}")
        if self.obs not in ("arctan", "identity"):
            raise InputError(f"obs must be 'arctan' or 'identity', got {self.obs!r}")
        if self.spinup_steps < 0 or self.initial_spread < 0:
            raise InputError("spinup_steps and initial_spread must be >= 0")


@dataclass
class L96EnSFResult:
    """Per-cycle records of one run (identical on every rank) and this rank's final slab.

    Attributes
    ----------
    records : dict of str to ndarray, shape (n_cycles,)
        ``rmse_forecast``, ``rmse_analysis``, ``spread_analysis`` (global), and the wall
        times ``time_forecast_s``, ``time_halo_s``, ``time_analysis_s``, ``time_reduce_s``,
        ``time_total_s`` (maximum over ranks, device-synchronised).
    analysis : Tensor, shape (n_members, stop - start)
        This rank's slab of the final analysis ensemble.
    truth : Tensor, shape (stop - start,)
        This rank's slab of the final truth.
    start, stop : int
        The slab.
    peak_memory_bytes : int
        Peak resident memory of this process (CPU) or peak device allocation (GPU),
        maximum over ranks.
    """

    records: dict[str, np.ndarray]
    analysis: Tensor
    truth: Tensor
    start: int
    stop: int
    peak_memory_bytes: int
    settings: dict[str, Any] = field(default_factory=dict)


def _allreduce(comm, values: list[float], op: str = "sum") -> list[float]:
    if comm is None or comm.Get_size() == 1:
        return values
    MPI = require("mpi4py.MPI", "the distributed Lorenz-96 EnSF")
    buf = np.asarray(values, dtype=np.float64)
    out = np.empty_like(buf)
    comm.Allreduce(buf, out, op=MPI.SUM if op == "sum" else MPI.MAX)
    return out.tolist()


def run_l96_ensf(settings: L96EnSFSettings, comm=None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, show_progress: bool | None = None
                 ) -> L96EnSFResult:
    """Run the distributed Lorenz-96 + EnSF experiment on ``comm``'s ranks.

    Parameters
    ----------
    settings : L96EnSFSettings
    comm : mpi4py communicator, optional
        ``None`` runs on one process.
    device : torch.device or str
        This rank's device (choose with :func:`turbda_kit.device.resolve_device`, which
        maps the local rank to a GPU).
    dtype : torch.dtype
        float32 (default) or float64.
    show_progress : bool, optional
        Default: rank 0 of ``comm`` reports.

    Returns
    -------
    L96EnSFResult
    """
    device = torch.device(device)
    size = 1 if comm is None else comm.Get_size()
    rank = 0 if comm is None else comm.Get_rank()
    n = settings.n_global
    start, stop = slab_bounds(n, size, rank, align=settings.align)
    m = stop - start
    key = settings.seed
    halo = RingHaloExchange(comm)

    # Truth: F + N(0, 1) by global index, spun up onto the attractor.
    truth = torch.empty((1, m), dtype=dtype, device=device)
    indexed_normal_(truth, (key, _TRUTH), offset=start, global_size=n)
    truth.add_(settings.forcing)
    truth_work = L96Workspace.like(truth)
    for _ in range(settings.spinup_steps):
        rk4_step_(truth, truth_work, settings.dt, settings.forcing, halo)

    ensemble = torch.empty((settings.n_members, m), dtype=dtype, device=device)
    indexed_normal_(ensemble, (key, _ENSEMBLE), offset=start, global_size=n)
    ensemble.mul_(settings.initial_spread).add_(truth)
    ens_work = L96Workspace.like(ensemble)
    operator = Arctan((m,)) if settings.obs == "arctan" else Identity((m,))
    obs_noise = torch.empty((m,), dtype=dtype, device=device)

    names = ("rmse_forecast", "rmse_analysis", "spread_analysis", "time_forecast_s",
             "time_halo_s", "time_analysis_s", "time_reduce_s", "time_total_s")
    records = {k: np.full(settings.n_cycles, np.nan) for k in names}
    show = (rank == 0) if show_progress is None else (show_progress and rank == 0)
    bar = progress_bar(settings.n_cycles, desc=f"L96 EnSF n={n:,} ranks={size}", enabled=show)
    for cycle in range(settings.n_cycles):
        synchronize(device)
        t0 = time.perf_counter()
        halo_before = halo.seconds
        for _ in range(settings.steps_per_cycle):
            rk4_step_(truth, truth_work, settings.dt, settings.forcing, halo)
            rk4_step_(ensemble, ens_work, settings.dt, settings.forcing, halo)
        synchronize(device)
        t1 = time.perf_counter()
        halo_s = halo.seconds - halo_before

        indexed_normal_(obs_noise, (key, _OBS, cycle), offset=start, global_size=n)
        obs = operator(truth[0]) + settings.obs_error_std * obs_noise
        forecast_err = float(((ensemble.mean(0) - truth[0]) ** 2).sum())
        ensemble = ensf_analysis(ensemble, obs, operator, settings.obs_error_std,
                                 block_seed(key, _ANALYSIS, cycle), settings.ensf,
                                 global_offset=start, global_size=n)
        synchronize(device)
        t2 = time.perf_counter()

        mean = ensemble.mean(0)
        analysis_err = float(((mean - truth[0]) ** 2).sum())
        variance = float(ensemble.var(0, unbiased=True).sum())
        sums = _allreduce(comm, [forecast_err, analysis_err, variance])
        t3 = time.perf_counter()
        times = _allreduce(comm, [t1 - t0, halo_s, t2 - t1, t3 - t2, t3 - t0], op="max")
        records["rmse_forecast"][cycle] = math.sqrt(sums[0] / n)
        records["rmse_analysis"][cycle] = math.sqrt(sums[1] / n)
        records["spread_analysis"][cycle] = math.sqrt(sums[2] / n)
        for name, value in zip(names[3:], times):
            records[name][cycle] = value
        if not math.isfinite(records["rmse_analysis"][cycle]):
            bar.close()
            raise DivergenceError(f"L96 EnSF diverged at cycle {cycle}: non-finite RMSE")
        bar.set_postfix_str(f"rmse {records['rmse_analysis'][cycle]:.3f}")
        bar.update(1)
    bar.close()
    peak = int(_allreduce(comm, [float(peak_memory_bytes(device))], op="max")[0])
    return L96EnSFResult(records, ensemble, truth[0], start, stop, peak,
                         {k: (repr(v) if k == "ensf" else v)
                          for k, v in dataclasses.asdict(settings).items()})


def gather_slabs(local: Tensor, comm) -> Tensor | None:
    """Concatenate every rank's slab (last dim) on rank 0; other ranks get None."""
    if comm is None or comm.Get_size() == 1:
        return local.detach().cpu().clone()
    parts = comm.gather(local.cpu().numpy(), root=0)
    if comm.Get_rank() != 0:
        return None
    return torch.from_numpy(np.concatenate(parts, axis=-1))
