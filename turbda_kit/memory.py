"""Memory probes: what this process (or its GPU) holds now and at its peak, in bytes.

Every memory figure the kit reports (scaling study, distributed Lorenz-96 EnSF, trainer
metrics, benchmarks) comes from here, so they all mean the same thing:

* **GPU** (``device.type == "cuda"``, which is also ROCm): torch's caching-allocator
  counters, i.e. bytes held by tensors (``memory_allocated`` / ``max_memory_allocated``),
  not the driver's reservation.
* **CPU on Linux**: the resident set of the whole process, ``VmRSS``, and its high-water
  mark ``VmHWM`` from ``/proc/self/status``. :func:`reset_peak_memory` resets the mark by
  writing ``5`` to ``/proc/self/clear_refs``, so one measurement's peak does not carry over
  to the next.
* **CPU elsewhere** (no ``/proc``): the peak from ``getrusage``, over the process's life
  (it cannot be reset), and the current resident set from ``psutil`` when it is installed.

Example
-------
>>> import torch
>>> from turbda_kit.memory import peak_memory_bytes, reset_peak_memory
>>> before = reset_peak_memory(torch.device("cpu"))
>>> block = torch.ones(2 ** 22)                      # 16 MiB
>>> peak_memory_bytes(torch.device("cpu")) - before >= 15 * 2 ** 20
True
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import torch

__all__ = ["current_memory_bytes", "peak_memory_bytes", "peak_memory_method",
           "reset_peak_memory"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
# ``/proc/self/clear_refs``: 5 resets the peak resident set size (Linux >= 4.0).
_RESET_PEAK_RSS = "5"


def _as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes, or None without ``/proc``."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def _rusage_peak_bytes() -> int:
    import resource

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    # ru_maxrss is in bytes on macOS and in KiB on Linux and the BSDs.
    return peak if sys.platform == "darwin" else peak * 1024


def current_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Memory held now: tensor bytes on a GPU, else this process's resident set size.

    Parameters
    ----------
    device : torch.device or str
        A CUDA/ROCm device, or anything else for the process's host memory.

    Returns
    -------
    int
        Bytes; 0 when the platform offers no way to read it.
    """
    device = _as_device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    value = _status_bytes("VmRSS")
    if value is not None:
        return value
    with contextlib.suppress(ImportError):
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    return 0


def reset_peak_memory(device: torch.device | str = "cpu") -> int:
    """Start a new peak measurement; return the memory held now, in bytes.

    GPU: resets torch's peak-allocation counter of ``device``. CPU (Linux): resets the
    kernel's high-water mark of the resident set (``VmHWM``). Where neither is possible
    (no ``/proc``, or ``clear_refs`` not writable), the peak keeps running from the start
    of the process; :func:`peak_memory_method` says which case applies.
    """
    device = _as_device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):
            _CLEAR_REFS.write_text(_RESET_PEAK_RSS)
    return current_memory_bytes(device)


def peak_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Peak memory since the last :func:`reset_peak_memory` (or since the process started).

    Parameters
    ----------
    device : torch.device or str
        A CUDA/ROCm device (peak tensor allocation), or anything else for the process's
        peak resident set size (``VmHWM``; ``getrusage`` without ``/proc``).

    Returns
    -------
    int
        Bytes.
    """
    device = _as_device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    value = _status_bytes("VmHWM")
    return value if value is not None else _rusage_peak_bytes()


def peak_memory_method(device: torch.device | str = "cpu") -> str:
    """How :func:`peak_memory_bytes` measures on ``device`` (for a Dataset's attributes)."""
    device = _as_device(device)
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated (reset per measurement)"
    if _status_bytes("VmHWM") is None:
        return "getrusage ru_maxrss (peak over the process's life)"
    if os.access(_CLEAR_REFS, os.W_OK):
        return "VmHWM (peak resident set, reset per measurement)"
    return "VmHWM (peak resident set over the process's life: clear_refs not writable)"
