"""The optimiser and its learning-rate schedule: AdamW with linear warm-up and cosine decay."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch

from .config import TrainConfig

__all__ = ["warmup_cosine", "build_optimizer", "build_scheduler"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
                  ) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio``.

    Parameters
    ----------
    step : int
        Optimiser steps already taken (0 for the first step).
    warmup_steps : int
        The multiplier rises linearly as ``(step + 1) / warmup_steps`` until it reaches 1.
    total_steps : int
        Step at which the cosine reaches ``min_ratio`` (constant afterwards).
    min_ratio : float
        Final multiplier.

    Returns
    -------
    float
        In ``[min_ratio, 1]`` after warm-up, ``(0, 1]`` during it.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: TrainConfig
                    ) -> torch.optim.Optimizer:
    """AdamW with the config's peak ``lr``, ``betas``, decoupled ``weight_decay`` and, when
    ``config.fused_adamw``, the fused implementation."""
    return torch.optim.AdamW(parameters, lr=config.lr, betas=config.betas,
                             weight_decay=config.weight_decay,
                             fused=True if config.fused_adamw else None)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_cosine` as a scheduler stepped once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, warmup_steps=config.warmup_steps,
                                     total_steps=total_steps, min_ratio=config.min_lr_ratio))
