"""Interactive parallel work from JupyterLab: ipyparallel clusters of MPI engines.

The same kernels that a batch job runs under ``srun``/``mpiexec`` can be driven
interactively: start N engines as one MPI job (locally with ``mpiexec``, inside a Slurm
allocation with ``srun``), then run kit functions on all of them at once.

Example
-------
>>> from turbda_kit.parallel.engines import mpi_engines
>>> with mpi_engines(2) as view:                      # doctest: +SKIP
...     sizes = view.apply_sync(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.Get_size())
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from ..errors import InputError
from ..optional import require
from ..workflow.environment import PROCESS_DEFAULTS


def default_launcher() -> str:
    """``"srun"`` inside a Slurm allocation, else ``"mpiexec"``."""
    return "srun" if os.environ.get("SLURM_JOB_ID") and shutil.which("srun") else "mpiexec"


def launcher_command(launcher: str = "auto") -> list[str]:
    """The command that starts the engines' MPI job (``-n N`` is appended by ipyparallel).

    Parameters
    ----------
    launcher : {"auto", "mpiexec", "srun"} or a path to an MPI launcher
    """
    if launcher == "auto":
        launcher = default_launcher()
    if launcher == "mpiexec":
        local = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, next to Python
        found = str(local) if local.exists() else shutil.which("mpiexec")
        if not found:
            raise InputError("mpiexec not found: install the mpich wheel (pip install mpich) "
                             "or pass launcher='srun' inside a Slurm allocation")
        return [found]
    if launcher == "srun":
        if not shutil.which("srun"):
            raise InputError("srun not found: launcher='srun' works inside a Slurm allocation")
        # One engine per task; engines must not inherit the notebook's CPU binding.
        return ["srun", "--cpu-bind=none" if not os.environ.get("SLURM_CPU_BIND") else "--cpu-bind=cores"]
    if Path(launcher).exists() or shutil.which(launcher):
        return [launcher]
    raise InputError(f"unknown launcher {launcher!r}: use 'auto', 'mpiexec', 'srun' or a path")


def start_mpi_cluster(n_engines: int, launcher: str = "auto", mpi_args: tuple[str, ...] = (),
                      profile_dir: str | os.PathLike | None = None, timeout_s: float = 120.0):
    """Start an ipyparallel controller and ``n_engines`` engines as one MPI job.

    Parameters
    ----------
    n_engines : int
        Number of engines (= MPI ranks), ≥ 1.
    launcher : str
        See :func:`launcher_command`.
    mpi_args : tuple of str
        Extra launcher arguments (e.g. ``("--gpus-per-task=1",)`` for srun).
    profile_dir : path-like, optional
        IPython profile directory (default: a private temporary one under ``$IPYTHONDIR``
        or ``~/.ipython``).
    timeout_s : float
        Seconds to wait for all engines to register.

    Returns
    -------
    (ipyparallel.Cluster, ipyparallel.Client)
        Stop with :func:`stop_mpi_cluster` (quietly), or ``cluster.stop_cluster_sync()``.
    """
    if n_engines < 1:
        raise InputError(f"n_engines must be ≥ 1, got {n_engines}")
    ipp = require("ipyparallel", "MPI engines for JupyterLab")
    from traitlets.config import Config

    config = Config()
    config.MPILauncher.mpi_cmd = launcher_command(launcher)
    config.MPILauncher.mpi_args = list(mpi_args)
    # Engines share cores with this kernel and each other: passive OpenMP waits unless the
    # user chose otherwise (the launcher's environment is added to this process's).
    config.MPIEngineSetLauncher.environment = {
        name: value for name, value in PROCESS_DEFAULTS.items() if not os.environ.get(name)}
    kwargs = {"engines": "mpi", "n": n_engines, "config": config, "log_level": 30}
    if profile_dir is not None:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        kwargs["profile_dir"] = str(profile_dir)
    cluster = ipp.Cluster(**kwargs)
    cluster.start_cluster_sync(n_engines)
    client = cluster.connect_client_sync()
    # interactive=False: no tqdm bar (it would be drawn into the notebook or the log)
    client.wait_for_engines(n_engines, timeout=timeout_s, interactive=False)
    return cluster, client


def stop_mpi_cluster(cluster, client, timeout_s: float = 30.0) -> None:
    """Stop engines and controller quietly.

    The engines are asked to shut down through the client, so that they leave
    ``MPI_Finalize`` together instead of being signalled mid-call. ipyparallel 9's engines
    still end a requested shutdown with status 1 ("Event loop stopped before Future
    completed"), for which the cluster prints each engine's whole log at WARNING level; an
    expected shutdown is not worth ~80 lines, so the cluster's log is kept to errors while
    it stops.
    """
    logger = cluster.log
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.suppress(Exception):  # engines already gone: nothing to ask
            client.shutdown(targets="all", hub=False, block=True)
        client.close()
        # Wait for the engines' launcher process (mpiexec/srun, a psutil.Process) to end.
        processes = [getattr(es, "process", None) for es in getattr(cluster, "engines", {}).values()]
        deadline = time.monotonic() + timeout_s
        while any(_alive(p) for p in processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        cluster.stop_cluster_sync()
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def mpi_engines(n_engines: int, launcher: str = "auto", mpi_args: tuple[str, ...] = (),
                profile_dir: str | os.PathLike | None = None, timeout_s: float = 120.0
                ) -> Iterator:
    """Context manager yielding a DirectView on ``n_engines`` MPI engines, ordered by rank.

    The engines are stopped on exit, also after an error.
    """
    cluster, client = start_mpi_cluster(n_engines, launcher, mpi_args, profile_dir, timeout_s)
    try:
        view = client[:]
        ranks = view.apply_sync(_mpi_rank)
        order = [engine for _, engine in sorted(zip(ranks, client.ids))]
        yield client[order]
    finally:
        stop_mpi_cluster(cluster, client)


def _alive(process) -> bool:
    """Whether a launcher's process (a psutil.Process) still runs (a zombie has ended)."""
    if process is None:
        return False
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _mpi_rank() -> int:
    MPI = require("mpi4py.MPI", "MPI engines")
    return MPI.COMM_WORLD.Get_rank()
