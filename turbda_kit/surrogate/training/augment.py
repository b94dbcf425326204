"""Data augmentation for training: random periodic shifts along x.

Why a shift along x is a valid SQG sample. The SQG domain is doubly periodic, and its
forcing (a zonal jet relaxed towards a profile in ``y`` only), drag and diffusion do not
depend on ``x``. So if ``theta(t)`` is a solution, ``theta(t)`` rolled by any number of
grid points along x is one too, and it is as likely under the flow's statistics
(statistically homogeneous along x). Rolling an input and *every* target of its rollout by
the same amount therefore gives a pair the model must also forecast. It is not valid
along y (the jet breaks that symmetry) or for data that is not periodic in x.

The shifts are a pure function of ``(seed, epoch, global micro-batch)``: a generator
keyed on them draws one shift per sample of the global batch and each rank takes its
slice. A step sees the same shifts on 1 or 8 ranks, and a resumed run, which restarts at
a stored micro-batch, draws the same shifts as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["x_shifts", "shift_along_x"]

_STREAM = 0x5817F7   # keeps these draws apart from other streams keyed on the same seed


def x_shifts(seed: int, epoch: int, micro_batch: int, global_batch: int, n_x: int) -> Tensor:
    """Shifts (grid points, in ``[0, n_x)``) for the samples of one global micro-batch.

    Parameters
    ----------
    seed, epoch, micro_batch : int
        The run's seed, the epoch and the micro-batch's index within the epoch.
    global_batch : int
        Samples in the global micro-batch (batch size times ranks).
    n_x : int
        Grid points along x.

    Returns
    -------
    Tensor, shape (global_batch,), int64
    """
    key = np.random.SeedSequence([seed, epoch, micro_batch, _STREAM]).generate_state(
        1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(key))
    return torch.randint(0, n_x, (global_batch,), generator=generator)


def shift_along_x(fields: Tensor, shifts: Tensor) -> Tensor:
    """Roll each sample periodically along its last axis (x) by its own shift.

    Parameters
    ----------
    fields : Tensor, shape (B, ..., N)
        Samples; ``(B, V, N, N)`` inputs or ``(B, k, V, N, N)`` rollout targets.
    shifts : Tensor, shape (B,), integer
        Grid points per sample; ``out[b, ..., j] = fields[b, ..., (j - shifts[b]) % N]``,
        what :func:`torch.roll` does with a positive shift.

    Returns
    -------
    Tensor
        Same shape, dtype and device.
    """
    n = fields.shape[-1]
    index = (torch.arange(n, device=fields.device) - shifts.to(fields.device)[:, None]) % n
    index = index.reshape(fields.shape[0], *(1,) * (fields.ndim - 2), n).expand(fields.shape)
    return torch.gather(fields, -1, index)
