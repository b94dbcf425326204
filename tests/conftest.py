"""Shared test configuration: markers, device parametrisation, subprocess helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# OpenMP threads that spin while waiting make torch 10-20x slower in wall time when the
# machine is oversubscribed (MPI ranks, notebook kernels and pytest on 2 cores); must be
# set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA/ROCm GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def available_devices() -> list[str]:
    """'cpu', plus 'cuda' when a GPU is visible (use with pytest.mark.parametrize)."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def one_thread():
    """One torch thread for the test (deterministic reductions; the machine is shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=available_devices())
def device(request) -> torch.device:
    """Each available device in turn."""
    return torch.device(request.param)


def mpiexec_path() -> str:
    """The mpiexec next to this Python (the mpich wheel's), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        pytest.skip("mpiexec not found (install the mpich wheel)")
    return found


def run_mpi(n: int, args: list[str], timeout: float = 300, env: dict | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n n python ARGS`` and return the completed process (text output)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}:{full_env.get('PATH', '')}"
    return subprocess.run([mpiexec_path(), "-n", str(n), sys.executable, *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd)
