"""Validation: MSE (normalised) and RMSE per variable, optionally in K, over all ranks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset

from ...parallel import distributed as pdist
from ..config import ViTConfig
from .batches import validation_batches
from .strategies import Strategy

__all__ = ["Denormalise", "evaluate"]

Denormalise = Sequence[float] | Callable[[Tensor], Tensor]
"""Per-variable standard deviations (K), or a map from normalised fields to K."""


@torch.no_grad()
def evaluate(strategy: Strategy, data: Dataset, config: ViTConfig, batch_size: int,
             env: pdist.DistEnv, device: torch.device, denormalise: Denormalise | None
             ) -> dict[str, float]:
    """Validation metrics of the strategy's model on ``data`` (collective).

    Parameters
    ----------
    strategy : Strategy
        The wrapped model (put in eval mode here).
    data : Dataset
        Items ``(input, target, lead)``; a rollout target ``(k, V, N, N)`` is scored over
        its ``k`` autoregressive steps, every step's error pooled, as in ``rollout_loss``.
    config : ViTConfig
        Variables and grid.
    batch_size : int
        Samples per forward.
    env : DistEnv
    device : torch.device
    denormalise : sequence of float, callable or None
        See :data:`Denormalise`; adds ``val_rmse_<var>_K``.

    Returns
    -------
    dict
        ``val_loss`` (mean MSE over variables, normalised), ``val_rmse_<var>`` and, with
        ``denormalise``, ``val_rmse_<var>_K``; identical on every rank.
    """
    strategy.eval()
    n_vars, n = config.n_vars, config.img_size
    sums = torch.zeros(2 * n_vars + 1, dtype=torch.float64, device=device)
    batches = validation_batches(data, batch_size, env)
    while True:
        batch = next(batches, None)
        more = torch.tensor([0.0 if batch is None else 1.0], device=device)
        if pdist.is_distributed():
            # Sharded models need every rank in every forward: ranks that ran out of samples
            # run a zero-weight dummy batch until all are done.
            dist.all_reduce(more, op=dist.ReduceOp.MAX)
        if more.item() == 0:
            break
        weight = 1.0
        if batch is None:
            batch = (torch.zeros(1, n_vars, n, n), torch.zeros(1, n_vars, n, n), torch.zeros(1))
            weight = 0.0
        inputs, targets, leads = (t.to(device, non_blocking=True) for t in batch)
        if targets.ndim == inputs.ndim:
            targets = targets[:, None]
        pred = inputs
        for j in range(targets.shape[1]):
            pred = strategy.forward(pred, leads).float()
            truth = targets[:, j]
            sq = (pred - truth).square().sum(dim=(0, 2, 3), dtype=torch.float64)
            if callable(denormalise):
                sq_phys = (denormalise(pred) - denormalise(truth)).square().sum(
                    dim=(0, 2, 3), dtype=torch.float64)
            else:
                sq_phys = sq
            sums[:n_vars] += weight * sq
            sums[n_vars:2 * n_vars] += weight * sq_phys
            sums[-1] += weight * inputs.shape[0] * n * n
    if pdist.is_distributed():
        dist.all_reduce(sums)
    count = sums[-1].clamp_min(1.0)
    mse = sums[:n_vars] / count
    rmse_phys = (sums[n_vars:2 * n_vars] / count).sqrt()
    if denormalise is not None and not callable(denormalise):
        rmse_phys = rmse_phys * torch.as_tensor(list(denormalise), dtype=torch.float64,
                                                device=device)
    metrics = {"val_loss": float(mse.mean())}
    for name, rmse in zip(config.variables, mse.sqrt().tolist()):
        metrics[f"val_rmse_{name}"] = rmse
    if denormalise is not None:
        for name, rmse in zip(config.variables, rmse_phys.tolist()):
            metrics[f"val_rmse_{name}_K"] = rmse
    return metrics
