"""Provenance: what produced a result (code, environment, machine, launch).

Stored in ``run.json`` by the notebook runner and in the ``attrs`` of every Dataset the
kit writes, so any number can be traced to the code and settings that made it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .progress import process_rank

_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")


def utc_now() -> str:
    """Current UTC time as ISO-8601 with a ``Z`` suffix, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def process_world_size() -> int:
    """Number of processes in this launch, read from the launcher's environment (1 if none)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 1


def git_revision(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Git commit of the kit's source tree and whether it had uncommitted changes.

    Returns ``{"revision": None, "dirty": None}`` outside a git checkout.
    """
    root = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10, check=True).stdout
        return {"revision": rev, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}


def device_summary() -> dict[str, Any]:
    """Accelerators torch can see: kind (cpu/cuda/rocm), count and names."""
    import torch

    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        kind = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        info.update(kind=kind, count=torch.cuda.device_count(),
                    names=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
    else:
        info.update(kind="cpu", count=0, names=[])
    return info


def collect(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A provenance record of this process.

    Parameters
    ----------
    extra : dict, optional
        Merged in last (e.g. parameters).

    Returns
    -------
    dict
        JSON-serialisable: kit version, git revision and dirty flag, Python, torch and
        numpy versions, host, device summary, launcher rank/size, Slurm job id, time.
    """
    import numpy
    import torch

    record: dict[str, Any] = {
        "turbda_kit_version": __version__,
        "git": git_revision(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device_summary(),
        "rank": process_rank(),
        "world_size": process_world_size(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "created_utc": utc_now(),
    }
    if extra:
        record.update(extra)
    return record


def as_attrs(record: dict[str, Any], prefix: str = "provenance_") -> dict[str, str | int | float]:
    """Flatten a provenance record into netCDF-safe attributes (strings and numbers)."""
    flat: dict[str, str | int | float] = {}

    def visit(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{key}_{k}", v)
        elif isinstance(value, bool) or value is None:
            flat[key] = str(value)
        elif isinstance(value, (int, float, str)):
            flat[key] = value
        else:
            flat[key] = str(value)

    for k, v in record.items():
        visit(f"{prefix}{k}", v)
    return flat
