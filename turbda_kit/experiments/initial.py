"""Initial ensembles for cycling experiments."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["ensemble_around_truth", "ensemble_from_climatology"]


def ensemble_around_truth(truth_state: Tensor, n_members: int, std: float,
                          generator: torch.Generator) -> Tensor:
    """Truth plus independent Gaussian perturbations.

    Parameters
    ----------
    truth_state : Tensor, shape (*state_shape)
    n_members : int
        Ensemble size, ≥ 1.
    std : float
        Perturbation standard deviation (state units), ≥ 0.
    generator : torch.Generator
        On the device of ``truth_state``.

    Returns
    -------
    Tensor, shape (n_members, *state_shape)
    """
    if n_members < 1:
        raise InputError(f"n_members must be ≥ 1, got {n_members}")
    if std < 0:
        raise InputError(f"std must be ≥ 0, got {std}")
    noise = torch.empty((n_members, *truth_state.shape), dtype=truth_state.dtype,
                        device=truth_state.device).normal_(generator=generator)
    return truth_state.unsqueeze(0) + std * noise


def ensemble_from_climatology(trajectory, n_members: int, generator: torch.Generator,
                              exclude: range | None = None, dtype: torch.dtype = torch.float32,
                              device: torch.device | str = "cpu") -> Tensor:
    """Members drawn without replacement from the states of a long run.

    Parameters
    ----------
    trajectory : array-like, shape (n_times, *state_shape)
        A climatology (e.g. a nature run's ``theta``); xarray and numpy are accepted.
    n_members : int
        Ensemble size (≤ available times).
    generator : torch.Generator
        A CPU generator choosing the times.
    exclude : range, optional
        Time indices not to draw (e.g. the experiment's own period).
    """
    available = [i for i in range(len(trajectory)) if exclude is None or i not in exclude]
    if n_members > len(available):
        raise InputError(f"cannot draw {n_members} members from {len(available)} times")
    picks = torch.randperm(len(available), generator=generator)[:n_members].tolist()
    states = []
    for p in sorted(picks):
        state = trajectory[available[p]]
        if not isinstance(state, torch.Tensor):
            state = torch.as_tensor(np.asarray(getattr(state, "values", state)))
        states.append(state.to(dtype=dtype))
    return torch.stack(states).to(device)
