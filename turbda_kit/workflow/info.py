"""Environment report behind ``turbda info``."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .. import __version__, provenance
from .environment import OMP_WAIT_POLICY, wait_policy_warning


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # a broken optional dependency must not break the report
        return f"not usable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return getattr(mod, "__version__", "installed")


def find_mpiexec() -> str | None:
    """``mpiexec`` next to this Python (the mpich wheel's, also when the venv is not
    activated), else the one on PATH, else None."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("mpiexec")


def mpi_summary() -> str:
    """MPI library version and launch size, queried in a subprocess.

    A subprocess keeps ``MPI_Init`` out of this process (which may be a launcher for
    notebook kernels that must join the MPI world themselves).
    """
    code = "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0].strip())"
    # Run as an MPI singleton: the launcher's PMI variables belong to this process's rank.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"not usable ({err})"
    if out.returncode != 0:
        return f"not usable ({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'error'})"
    launcher = find_mpiexec()
    return (f"{out.stdout.strip()} | launch size {provenance.process_world_size()} | "
            f"mpiexec: {launcher or 'not found (next to Python or on PATH)'}")


def deepspeed_summary() -> str:
    """DeepSpeed version and accelerator, or why it is not usable."""
    if not _cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        return f"{deepspeed.__version__} (accelerator: {get_accelerator().device_name()})"
    except Exception as err:
        return f"not usable ({type(err).__name__}: {err})"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def kernel_summary() -> str:
    """Whether the ``python3`` Jupyter kernel exists, points at this Python, and sets
    ``OMP_WAIT_POLICY`` for its kernels (JupyterLab's kernels get only the spec's env)."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec("python3")
    except Exception as err:
        return f"not usable ({type(err).__name__}: {err})"
    exe = spec.argv[0]
    same = os.path.realpath(shutil.which(exe) or exe) == os.path.realpath(sys.executable)
    note = "this Python" if same else f"{exe} (not this Python: run `make install`)"
    policy = (spec.env or {}).get(OMP_WAIT_POLICY)
    omp = f"{OMP_WAIT_POLICY}={policy}" if policy else (
        f"no {OMP_WAIT_POLICY} in its env: JupyterLab kernels spin-wait; reinstall with "
        "`python -m ipykernel install --sys-prefix --name python3 --env OMP_WAIT_POLICY PASSIVE`")
    return f"python3 -> {note}; {omp}"


def openmp_summary() -> str:
    """This process's OpenMP wait policy, with a warning when it is unset or active."""
    warning = wait_policy_warning()
    return f"WARNING: {warning}" if warning else f"{OMP_WAIT_POLICY}=PASSIVE"


def environment_report() -> str:
    """Multi-line human-readable report of versions, devices, MPI, DeepSpeed, kernel, OpenMP."""
    dev = provenance.device_summary()
    git = provenance.git_revision()
    lines = [
        f"turbda_kit   {__version__} (git {git['revision'] or 'n/a'}{' dirty' if git['dirty'] else ''})",
        f"python       {sys.version.split()[0]} ({sys.executable})",
        f"torch        {_version('torch')}",
        f"numpy        {_version('numpy')}",
        f"xarray       {_version('xarray')}",
        f"papermill    {_version('papermill')}",
        f"devices      {dev['kind']}: {dev['count']} accelerator(s) {', '.join(dev['names'])}; "
        f"{dev['cpu_count']} CPU cores, torch threads {dev['torch_threads']}",
        f"launch       rank {provenance.process_rank()} of {provenance.process_world_size()}"
        f"{', Slurm job ' + os.environ['SLURM_JOB_ID'] if os.environ.get('SLURM_JOB_ID') else ''}",
        f"mpi          {mpi_summary()}",
        f"deepspeed    {deepspeed_summary()}",
        f"kernel       {kernel_summary()}",
        f"openmp       {openmp_summary()}",
    ]
    return "\n".join(lines)
