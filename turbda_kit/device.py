"""Device selection for workflows (library functions take the device of their inputs)."""

from __future__ import annotations

import os

import torch

from .errors import InputError


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int | None = None
                   ) -> torch.device:
    """Turn a user's device choice into a :class:`torch.device`.

    Parameters
    ----------
    spec : str, torch.device or None
        ``"auto"``/``None`` picks a GPU (CUDA or ROCm, both appear as ``cuda`` in torch)
        when one is visible, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` are taken
        as given.
    local_rank : int or None
        Under a parallel launch, the node-local rank used to choose among several GPUs
        (defaults to ``LOCAL_RANK``/``SLURM_LOCALID`` from the environment).

    Returns
    -------
    torch.device
    """
    if isinstance(spec, torch.device):
        return spec
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            if local_rank is None:
                local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise InputError(f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {spec!r} asked for but no GPU is visible: use 'cpu' or 'auto'")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (for honest timings); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
