"""Training hyperparameters: :class:`TrainConfig`, its presets, and the DeepSpeed config.

A ViT preset (``configs/vit/<name>.yaml``) may carry a ``train:`` section of training
defaults. :meth:`TrainConfig.from_preset` reads it with overrides where ``None`` always
means "the preset's value"; :func:`load_train_config` applies overrides literally.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import InputError
from ...parallel import distributed as pdist
from ..config import read_config_file
from ..matmul import MATMUL_BACKENDS

__all__ = ["TrainConfig", "load_train_config", "build_deepspeed_config", "DS_CONFIG_PATH",
           "PRECISIONS", "TORCH_STRATEGIES"]

DS_CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "ds_config.json"
"""The shipped DeepSpeed config (the paper's ZeRO knobs)."""

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_STRATEGIES = ("none", "ddp", "fsdp")
"""Strategies whose checkpoints (torch.distributed.checkpoint) load into each other."""


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters and the distribution strategy.

    Parameters
    ----------
    strategy : {"none", "ddp", "fsdp", "deepspeed"}
        How the model is distributed.
    sharding : str
        FSDP sharding: ``"FULL_SHARD"``, ``"SHARD_GRAD_OP"``, ``"HYBRID_SHARD"``, ``"NO_SHARD"``.
    zero_stage : int
        DeepSpeed ZeRO stage, 0-3.
    ds_config : str or None
        DeepSpeed JSON config; ``None`` uses the shipped ``configs/ds_config.json``.
    precision : {"fp32", "bf16", "fp16"}
        Compute precision (autocast / FSDP policy / DeepSpeed). ``fp16`` needs a GPU.
    batch_size : int
        Samples per rank per micro-batch.
    grad_accum_steps : int
        Micro-batches per optimiser step.
    lr : float
        Peak learning rate of AdamW.
    min_lr_ratio : float
        Final learning rate of the cosine decay, as a fraction of ``lr``.
    betas : tuple of float
        AdamW betas.
    weight_decay : float
        AdamW decoupled weight decay.
    warmup_steps : int
        Linear warm-up length in optimiser steps.
    max_steps : int or None
        Optimiser steps to train (the cosine ends there); ``None`` to use ``max_epochs``.
    max_epochs : int or None
        Passes over the training data (``None``: until ``max_steps``).
    grad_clip : float or None
        Maximum global gradient norm; ``None`` or 0 disables clipping.
    log_every : int
        Optimiser steps between training-metric rows.
    eval_every : int
        Steps between validations (0: at the end of each epoch only).
    checkpoint_every : int
        Steps between checkpoints (0: only the final one and the best).
    keep_checkpoints : int
        Periodic checkpoints kept besides the best one.
    patience : int or None
        Early stopping after this many validations without improvement of ``min_delta``.
    min_delta : float
        Improvement of the validation loss that resets the patience.
    activation_checkpointing : bool
        Recompute block activations during backward.
    compile : bool
        ``torch.compile`` the transformer blocks.
    seed : int
        Seeds the initial weights (same on all ranks), the data order, the augmentation
        and, offset by the rank, dropout.
    shuffle : bool
        Shuffle the training samples every epoch.
    num_workers : int
        DataLoader worker processes.
    augment_x_shift : bool
        Roll every training sample (input and all its targets alike) by a random number of
        grid points along x (the last axis), drawn from a generator keyed on
        ``(seed, epoch, micro-batch)``. Valid for data that is periodic and statistically
        homogeneous along x, such as SQG (see :mod:`turbda_kit.surrogate.training.augment`).
    matmul_backend : {"default", "onednn"}
        Kernels of the ViT's float32 CPU linear layers (:mod:`turbda_kit.surrogate.matmul`):
        ``"onednn"`` was 1.46x faster per step than the default BLAS on an AMD EPYC
        (``docs/vit.md``); results equal the default's to round-off, not bitwise. Other
        devices and precisions always use the default.
    fused_adamw : bool
        ``torch.optim.AdamW(fused=True)``: one kernel per step instead of a loop over
        parameters (4x faster optimiser step on CPU; differs from the loop by ~1 ulp).
    """

    strategy: str = "none"
    sharding: str = "FULL_SHARD"
    zero_stage: int = 1
    ds_config: str | None = None
    precision: str = "fp32"
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 5e-4
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-5
    warmup_steps: int = 0
    max_steps: int | None = 1000
    max_epochs: int | None = None
    grad_clip: float | None = 1.0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    patience: int | None = None
    min_delta: float = 0.0
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    augment_x_shift: bool = False
    matmul_backend: str = "default"
    fused_adamw: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        pdist.check_strategy(self.strategy, self.sharding, self.zero_stage)
        if self.precision not in PRECISIONS:
            raise InputError(f"precision={self.precision!r} unknown: choose one of {PRECISIONS}")
        for name, minimum in (("batch_size", 1), ("grad_accum_steps", 1), ("warmup_steps", 0),
                              ("log_every", 1), ("eval_every", 0), ("checkpoint_every", 0),
                              ("keep_checkpoints", 1), ("num_workers", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InputError(f"{name}={value!r} must be an integer >= {minimum}")
        for name in ("max_steps", "max_epochs", "patience"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise InputError(f"{name}={value!r} must be None or an integer >= 1")
        if self.max_steps is None and self.max_epochs is None:
            raise InputError("max_steps and max_epochs are both None: set at least one")
        if not (self.lr > 0):
            raise InputError(f"lr={self.lr!r} must be > 0")
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            raise InputError(f"min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise InputError(f"betas={self.betas!r} must be two numbers in [0, 1)")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise InputError(f"grad_clip={self.grad_clip!r} must be None or >= 0")
        if self.matmul_backend not in MATMUL_BACKENDS:
            raise InputError(f"matmul_backend={self.matmul_backend!r} unknown: choose one of "
                             f"{list(MATMUL_BACKENDS)}")
        for name in ("activation_checkpointing", "compile", "shuffle", "augment_x_shift",
                     "fused_adamw"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name}={getattr(self, name)!r} must be true or false")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping, rejecting unknown keys with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown train config keys {unknown}: known keys are "
                             f"{sorted(known)}")
        return cls(**values)

    @classmethod
    def from_preset(cls, name_or_path: str | os.PathLike, *, world_size: int = 1,
                    **overrides: Any) -> TrainConfig:
        """The ``train:`` section of a ViT preset, with overrides; ``None`` keeps the preset's.

        Parameters
        ----------
        name_or_path : str or path-like
            A ViT preset name (``tiny``, ``sqg_64_cpu``, ...) or a YAML file.
        world_size : int
            Processes of the launch; decides ``strategy`` when it is not given.
        **overrides
            Any :class:`TrainConfig` field. ``None`` (or leaving it out) means the preset's
            value, and the dataclass default where the preset has none. Two rules follow
            from the launch and from what is given:

            * ``strategy=None`` is ``"none"`` on one process, else the preset's strategy
              (``"ddp"`` when the preset says ``"none"``);
            * ``max_epochs`` given without ``max_steps`` trains by epochs: the preset's
              ``max_steps`` is dropped.

        Returns
        -------
        TrainConfig

        Examples
        --------
        >>> TrainConfig.from_preset("tiny", lr=None, max_steps=20).max_steps
        20
        """
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise InputError(f"world_size={world_size!r} must be an integer >= 1")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"unknown train config keys {unknown}: known keys are "
                             f"{sorted(known)}")
        values = dict(read_config_file(name_or_path).get("train") or {})
        given = {k: v for k, v in overrides.items() if v is not None}
        if "max_epochs" in given and "max_steps" not in given:
            values["max_steps"] = None
        values.update(given)
        if "strategy" not in given:
            preset = values.get("strategy", "none")
            values["strategy"] = ("none" if world_size == 1
                                  else preset if preset != "none" else "ddp")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def load_train_config(name_or_path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The ``train:`` section of a ViT preset or YAML file, with overrides applied as given.

    See :meth:`TrainConfig.from_preset` for overrides where ``None`` keeps the preset's.
    """
    values = dict(read_config_file(name_or_path).get("train") or {})
    values.update(overrides)
    return TrainConfig.from_dict(values)


def build_deepspeed_config(train_config: TrainConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed config: the JSON file's knobs plus batch, ZeRO stage, precision, clipping.

    Parameters
    ----------
    train_config : TrainConfig
    world_size : int

    Returns
    -------
    dict
        Ready for ``deepspeed.initialize(config=...)``; the optimiser and scheduler are
        clients (torch AdamW + LambdaLR), so any in the file are removed.
    """
    path = Path(train_config.ds_config) if train_config.ds_config else DS_CONFIG_PATH
    if not path.exists():
        raise InputError(f"DeepSpeed config {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"DeepSpeed config {path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise InputError(f"DeepSpeed config {path} must hold a JSON object")
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    config["train_micro_batch_size_per_gpu"] = train_config.batch_size
    config["gradient_accumulation_steps"] = train_config.grad_accum_steps
    config["train_batch_size"] = (train_config.batch_size * train_config.grad_accum_steps
                                  * world_size)
    config.setdefault("zero_optimization", {})["stage"] = train_config.zero_stage
    config["gradient_clipping"] = float(train_config.grad_clip or 0.0)
    config["bf16"] = {"enabled": train_config.precision == "bf16"}
    config["fp16"] = {"enabled": train_config.precision == "fp16"}
    config.setdefault("zero_allow_untested_optimizer", True)
    config.setdefault("zero_force_ds_cpu_optimizer", False)
    return config
