"""The training loss: MSE of a forecast, or of an autoregressive rollout, against targets."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["rollout_loss"]


def rollout_loss(forward: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, targets: Tensor,
                 leads: Tensor) -> Tensor:
    """Mean squared error of a forecast, or of an autoregressive rollout, against targets.

    Parameters
    ----------
    forward : callable
        ``forward(fields (B, V, N, N), leads (B,)) -> (B, V, N, N)``, normalised units.
    inputs : Tensor, shape (B, V, N, N)
        Initial states.
    targets : Tensor, shape (B, V, N, N) or (B, k, V, N, N)
        The state one lead later, or the states 1..k leads later.
    leads : Tensor, shape (B,)
        Lead time per sample, hours.

    Returns
    -------
    Tensor, 0-d, float32
        With k targets, the mean over the k steps of each step's MSE, each step forecast
        from the previous forecast (gradients flow through the whole rollout). One
        target gives the plain one-step MSE.

    Notes
    -----
    Training on rollouts penalises the growth of errors that a one-step loss never sees:
    a model trained on one step can be accurate at 12 h and still drift away over many
    steps.
    """
    if targets.ndim == inputs.ndim:
        return F.mse_loss(forward(inputs, leads).float(), targets)
    state, total = inputs, None
    for j in range(targets.shape[1]):
        state = forward(state, leads).float()
        loss = F.mse_loss(state, targets[:, j])
        total = loss if total is None else total + loss
    return total / targets.shape[1]
