"""Training loop of the ViT surrogate; the distribution strategy is a parameter.

One loop serves four strategies (``TrainConfig.strategy``):

* ``"none"`` — one process;
* ``"ddp"`` — :class:`torch.nn.parallel.DistributedDataParallel`;
* ``"fsdp"`` — FSDP1 with ``FULL_SHARD``, ``SHARD_GRAD_OP`` or ``HYBRID_SHARD``
  (``TrainConfig.sharding``), bf16 mixed-precision policy when ``precision="bf16"``;
* ``"deepspeed"`` — ``deepspeed.initialize`` with ``configs/ds_config.json`` (ZeRO stage
  ``TrainConfig.zero_stage`` in 0-3) and a client torch AdamW.

Data: any map-style or iterable :class:`torch.utils.data.Dataset` yielding
``(input (V, N, N) float32, target (V, N, N), lead_time_hours)`` normalised samples
(``set_epoch(epoch)`` is called when the dataset has it). For a map-style dataset each
global batch is a contiguous block of a per-epoch permutation (seeded by ``seed`` and the
epoch), split across ranks, so the samples of a step do not depend on the number of ranks
and resuming at a micro-batch is exact. An iterable dataset is read whole by every rank,
which keeps its slice of each global batch, unless it has a ``world_size`` attribute
(:class:`turbda_kit.data.shards.ForecastShards`): then it is taken as already split by
rank and each rank batches its own stream.

Outputs in ``out_dir``: ``metrics.csv`` and ``scalars.jsonl`` (TensorBoard-style
``{"step", "tag", "value", "wall_time"}`` lines: the ``tensorboard`` package is not part of
our stack), ``checkpoints/step_XXXXXXXX/`` (resumable; ``latest.json`` and ``best.json``
point at them) and ``export/vit_last.pt`` / ``export/vit_best.pt`` (consolidated weights +
config, see :func:`turbda_kit.surrogate.vit.load_surrogate`).

Checkpoint formats: ``torch.distributed.checkpoint`` (sharded where FSDP shards; FQN keys,
so none/ddp/fsdp checkpoints load into each other) for the torch strategies, DeepSpeed's
own ``save_checkpoint`` for ``deepspeed``. Every checkpoint also holds each rank's RNG
state and the data position; a resumed run gives the same losses as an uninterrupted one.
Resuming needs the same world size, batch size and gradient accumulation.

Example
-------
>>> from turbda_kit.surrogate.config import load_vit_config
>>> from turbda_kit.surrogate.trainer import TrainConfig, train
>>> result = train(load_vit_config("tiny"), TrainConfig(max_steps=100), dataset,
...                "runs/vit_tiny", val_data=val_dataset)      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..errors import InputError
from ..io import atomic_path, write_json
from ..parallel import distributed as pd
from ..progress import progress_bar
from .config import ViTConfig, read_config_file
from .flops import achieved_tflops
from .vit import Block, ViT, load_surrogate, save_surrogate

__all__ = ["TrainConfig", "TrainResult", "train", "warmup_cosine", "check_dataset", "rollout_loss",
           "build_deepspeed_config", "load_train_config", "DS_CONFIG_PATH"]

DS_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "ds_config.json"
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TORCH_FAMILY = ("none", "ddp", "fsdp")


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
        Seeds the initial weights (same on all ranks), the data order and, offset by the
        rank, dropout.
    shuffle : bool
        Shuffle the training samples every epoch.
    num_workers : int
        DataLoader worker processes.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        pd.check_strategy(self.strategy, self.sharding, self.zero_stage)
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

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def load_train_config(name_or_path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The ``train:`` section of a ViT preset or YAML file, with overrides."""
    values = dict(read_config_file(name_or_path).get("train") or {})
    values.update(overrides)
    return TrainConfig.from_dict(values)


@dataclass
class TrainResult:
    """What a training run did (identical on every rank).

    Attributes
    ----------
    step, epoch : int
        Optimiser steps done and epochs started.
    step_losses : dict of int to float
        Mean training loss (over ranks and micro-batches, normalised units) of each step
        run in this call.
    history : list of dict
        All metric rows (also in ``metrics.csv``), including those of resumed runs.
    best_val_loss : float or None
        Lowest validation loss (mean MSE over variables, normalised units).
    best_step : int or None
        Step of ``best_val_loss``.
    stopped_early : bool
        Whether early stopping ended the run.
    last_checkpoint, best_checkpoint : str or None
        Checkpoint directories.
    export_path, best_export_path : str or None
        Consolidated inference files.
    model : nn.Module or None
        The trained, still wrapped model (DDP/FSDP module or DeepSpeed engine).
    predict : callable or None
        ``predict(fields (B, V, N, N), lead_time_hours (B,)) -> (B, V, N, N)`` float32
        forecast of the trained model in eval mode, with the run's precision; collective
        for sharded strategies (call on every rank).
    """

    step: int = 0
    epoch: int = 0
    step_losses: dict[int, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    export_path: str | None = None
    best_export_path: str | None = None
    model: Any = field(default=None, repr=False, compare=False)
    predict: Callable[[Tensor, Tensor], Tensor] | None = field(default=None, repr=False,
                                                               compare=False)


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


def check_dataset(data: Dataset, config: ViTConfig, name: str = "train_data",
                  min_samples: int = 1) -> None:
    """Check that ``data`` yields samples this model can learn from; raise InputError if not.

    Parameters
    ----------
    data : Dataset
        Map-style or iterable; items are ``(input, target, lead_time_hours)``.
    config : ViTConfig
        The model the data must match (variables, grid).
    name : str
        Parameter name used in messages.
    min_samples : int
        A map-style dataset must hold at least this many samples (one global batch).
    """
    expected = (config.n_vars, config.img_size, config.img_size)
    variables = getattr(data, "variables", None)
    if variables is not None and tuple(variables) != config.variables:
        raise InputError(f"{name} has variables {tuple(variables)} but the model config "
                         f"expects {config.variables}")
    if isinstance(data, IterableDataset):
        try:
            item = next(iter(data))
        except StopIteration:
            raise InputError(f"{name} is empty") from None
    else:
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            raise InputError(f"{name} must be a map-style Dataset with __len__ or an "
                             "IterableDataset") from None
        if n < min_samples:
            raise InputError(f"{name} has {n} samples, fewer than one global batch "
                             f"({min_samples}): lower batch_size or add data")
        item = data[0]
    if not isinstance(item, tuple | list) or len(item) != 3:
        raise InputError(f"{name} items must be (input, target, lead_time_hours) tuples, got "
                         f"{type(item).__name__}")
    for label, value in (("input", item[0]), ("target", item[1])):
        shape = tuple(getattr(value, "shape", ()))
        # A target may also be a rollout: (steps, vars, N, N), see rollout_loss.
        rollout = label == "target" and len(shape) == 4 and shape[1:] == expected and shape[0]
        if shape != expected and not rollout:
            raise InputError(f"{name} {label} has shape {shape} but the model config "
                             f"{config.name or ''} expects (vars, N, N) = {expected}"
                             + (" or, for a rollout target, (steps, vars, N, N)"
                                if label == "target" else ""))
    lead = item[2]
    if not (isinstance(lead, int | float) or (isinstance(lead, Tensor) and lead.numel() == 1)):
        raise InputError(f"{name} lead time must be a number of hours, got {lead!r}")


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
    config = json.loads(path.read_text())
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


# ----------------------------------------------------------------------------- data plan


class _IndexBatches:
    """Batch sampler: this rank's share of global micro-batches ``start, start+1, ...``."""

    def __init__(self, order: Tensor, batch_size: int, world_size: int, rank: int, start: int):
        self.order, self.batch_size = order, batch_size
        self.world_size, self.rank, self.start = world_size, rank, start
        self.n_batches = len(order) // (batch_size * world_size)

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world_size
        for micro in range(self.start, self.n_batches):
            begin = micro * global_batch + self.rank * self.batch_size
            yield self.order[begin:begin + self.batch_size].tolist()

    def __len__(self) -> int:
        return max(self.n_batches - self.start, 0)


def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> Tensor:
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def _iterable_batches(data: IterableDataset, batch_size: int, world_size: int, rank: int,
                      start: int) -> Iterator[list[Any]]:
    # Every rank reads the whole stream and keeps its slice of each global batch, so the
    # partition does not depend on how the dataset itself is sharded.
    global_batch = batch_size * world_size
    buffer: list[Any] = []
    micro = 0
    for item in data:
        buffer.append(item)
        if len(buffer) == global_batch:
            if micro >= start:
                yield buffer[rank * batch_size:(rank + 1) * batch_size]
            micro += 1
            buffer = []


def _collate(items: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor]:
    inputs = torch.stack([torch.as_tensor(item[0], dtype=torch.float32) for item in items])
    targets = torch.stack([torch.as_tensor(item[1], dtype=torch.float32) for item in items])
    leads = torch.tensor([float(item[2]) for item in items], dtype=torch.float32)
    return inputs, targets, leads


def _sharded_by_rank(data: Dataset) -> bool:
    """An iterable dataset exposing ``world_size`` (e.g. ``turbda_kit.data.shards.
    ForecastShards``) already gives each rank its own samples."""
    return isinstance(data, IterableDataset) and hasattr(data, "world_size")


def _train_batches(data: Dataset, tc: TrainConfig, env: pd.DistEnv, epoch: int, start: int,
                   pin: bool) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    if isinstance(data, IterableDataset):
        world, rank = (1, 0) if _sharded_by_rank(data) else (env.world_size, env.rank)
        for items in _iterable_batches(data, tc.batch_size, world, rank, start):
            yield _collate(items)
        return
    sampler = _IndexBatches(_epoch_order(len(data), tc.seed, epoch, tc.shuffle), tc.batch_size,
                            env.world_size, env.rank, start)
    # A private generator keeps the DataLoader from drawing on the global RNG (dropout's),
    # which would make a resumed run differ from an uninterrupted one.
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=_collate,
                        num_workers=tc.num_workers, pin_memory=pin,
                        generator=torch.Generator().manual_seed(tc.seed))
    yield from loader


def _micro_batches_per_epoch(data: Dataset, tc: TrainConfig, world_size: int) -> int | None:
    if isinstance(data, IterableDataset):
        return None
    return len(data) // (tc.batch_size * world_size)


# ----------------------------------------------------------------------------- runners


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns that it assumes a single process when no group is up: that is the intent.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _dcp_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Flat "param_groups.<fqn>.lr" keys: a fresh FSDP rank's nested param_groups list does
    # not always match the saved one's structure (torch 2.13), the flat form always does.
    return StateDictOptions(flatten_optimizer_state_dict=True)


class _TorchRunner:
    """Model + optimiser + scheduler for the none/ddp/fsdp strategies."""

    def __init__(self, model: ViT, tc: TrainConfig, env: pd.DistEnv, device: torch.device,
                 total_steps: int):
        self.tc, self.env, self.device = tc, env, device
        dtype = _DTYPES[tc.precision]
        self.model = pd.parallelize(
            model, tc.strategy, device=device, env=env, sharding=tc.sharding,
            param_dtype=dtype if tc.strategy == "fsdp" else None, block_types=(Block,),
            activation_checkpointing=tc.activation_checkpointing, compile=tc.compile)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=tc.betas,
                                           weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, functools.partial(warmup_cosine, warmup_steps=tc.warmup_steps,
                                              total_steps=total_steps,
                                              min_ratio=tc.min_lr_ratio))
        # FSDP casts through its mixed-precision policy; the others autocast.
        use_autocast = tc.precision != "fp32" and tc.strategy != "fsdp"
        self.autocast = functools.partial(torch.autocast, device.type, dtype=dtype,
                                          enabled=use_autocast)
        if tc.strategy == "fsdp":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.scaler = ShardedGradScaler(device.type, enabled=tc.precision == "fp16")
        else:
            self.scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def forward(self, inputs: Tensor, leads: Tensor) -> Tensor:
        with self.autocast():
            return self.model(inputs, leads)

    def micro_step(self, inputs: Tensor, targets: Tensor, leads: Tensor, last: bool) -> Tensor:
        sync = last or self.tc.strategy == "none"
        context = contextlib.nullcontext() if sync else self.model.no_sync()
        with context:
            loss = rollout_loss(self.forward, inputs, targets, leads)
            self.scaler.scale(loss / self.tc.grad_accum_steps).backward()
        return loss.detach()

    def optimizer_step(self) -> float | None:
        norm = None
        if self.tc.grad_clip:
            self.scaler.unscale_(self.optimizer)
            if self.tc.strategy == "fsdp":
                norm = self.model.clip_grad_norm_(self.tc.grad_clip)
            else:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(norm) if norm is not None else None

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer,
                                                  options=_dcp_options())
        with _quiet_single_process():
            dcp.save({"model": model_state, "optim": optim_state},
                     checkpoint_id=directory / "dcp")
        if self.env.is_main:
            torch.save({"scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict()}, directory / "extras.pt")

    def load(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if not (directory / "dcp").exists():
            raise InputError(f"{directory} holds no torch.distributed.checkpoint data (was it "
                             "written by the deepspeed strategy?)")
        model_state, optim_state = get_state_dict(self.model, self.optimizer,
                                                  options=_dcp_options())
        state = {"model": model_state, "optim": optim_state}
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=directory / "dcp")
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=_dcp_options())
        extras = torch.load(directory / "extras.pt", weights_only=True)
        self.scheduler.load_state_dict(extras["scheduler"])
        if extras.get("scaler"):
            self.scaler.load_state_dict(extras["scaler"])

    def full_state_dict(self) -> dict[str, Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Offloading (rank-0-only gather into CPU memory) is what big GPU models need; on
        # CPU ranks FSDP1's offload path crashes (SIGSEGV, torch 2.13) and is pointless.
        offload = self.device.type == "cuda"
        state = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=offload))
        return state if self.env.is_main else None


class _DeepSpeedRunner:
    """A DeepSpeed engine (ZeRO 0-3) around the model, a client AdamW and LambdaLR."""

    def __init__(self, model: ViT, tc: TrainConfig, env: pd.DistEnv, device: torch.device,
                 total_steps: int):
        self.tc, self.env, self.device = tc, env, device
        pd.parallelize(model, "deepspeed", device=device, block_types=(Block,),
                       activation_checkpointing=tc.activation_checkpointing, compile=tc.compile)
        optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas,
                                      weight_decay=tc.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(warmup_cosine, warmup_steps=tc.warmup_steps,
                                         total_steps=total_steps, min_ratio=tc.min_lr_ratio))
        self.engine = pd.deepspeed_initialize(model, optimizer, scheduler,
                                              build_deepspeed_config(tc, env.world_size))
        self.input_dtype = _DTYPES[tc.precision] if tc.precision != "fp32" else torch.float32

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def forward(self, inputs: Tensor, leads: Tensor) -> Tensor:
        return self.engine(inputs.to(self.input_dtype), leads.to(self.input_dtype))

    def micro_step(self, inputs: Tensor, targets: Tensor, leads: Tensor, last: bool) -> Tensor:
        loss = rollout_loss(self.forward, inputs, targets, leads)
        self.engine.backward(loss)  # scales by 1/grad_accum itself
        self.engine.step()          # optimiser + scheduler step at the accumulation boundary
        return loss.detach()

    def optimizer_step(self) -> float | None:
        norm = getattr(self.engine, "get_global_grad_norm", lambda: None)()
        return float(norm) if norm is not None else None

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)

    def load(self, directory: Path) -> None:
        if not (directory / "deepspeed").exists():
            raise InputError(f"{directory} holds no DeepSpeed checkpoint (was it written by a "
                             "torch strategy?)")
        path, _ = self.engine.load_checkpoint(str(directory / "deepspeed"), tag="state",
                                              load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise InputError(f"DeepSpeed could not load the checkpoint in {directory}")

    def full_state_dict(self) -> dict[str, Tensor] | None:
        module = self.engine.module
        if self.tc.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                state = ({k: v.detach().float().cpu().clone()
                          for k, v in module.state_dict().items()} if self.env.is_main else None)
            return state
        return ({k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
                if self.env.is_main else None)


# ----------------------------------------------------------------------------- evaluation


def _local_val_batches(data: Dataset, batch_size: int, env: pd.DistEnv
                       ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    if isinstance(data, IterableDataset):
        world, rank = (1, 0) if _sharded_by_rank(data) else (env.world_size, env.rank)
        buffer = []
        for i, item in enumerate(data):
            if i % world == rank:
                buffer.append(item)
                if len(buffer) == batch_size:
                    yield _collate(buffer)
                    buffer = []
        if buffer:
            yield _collate(buffer)
        return
    indices = list(range(env.rank, len(data), env.world_size))
    for begin in range(0, len(indices), batch_size):
        yield _collate([data[i] for i in indices[begin:begin + batch_size]])


@torch.no_grad()
def _evaluate(runner: Any, data: Dataset, config: ViTConfig, batch_size: int, env: pd.DistEnv,
              device: torch.device, denormalise: Sequence[float] | Callable[[Tensor], Tensor] | None
              ) -> dict[str, float]:
    runner.eval()
    n_vars, n = config.n_vars, config.img_size
    sums = torch.zeros(2 * n_vars + 1, dtype=torch.float64, device=device)
    batches = _local_val_batches(data, batch_size, env)
    while True:
        batch = next(batches, None)
        more = torch.tensor([0.0 if batch is None else 1.0], device=device)
        if pd.is_distributed():
            # Sharded models need every rank in every forward: ranks that ran out of samples
            # run a zero-weight dummy batch until all are done.
            torch.distributed.all_reduce(more, op=torch.distributed.ReduceOp.MAX)
        if more.item() == 0:
            break
        weight = 1.0
        if batch is None:
            batch = (torch.zeros(1, n_vars, n, n), torch.zeros(1, n_vars, n, n), torch.zeros(1))
            weight = 0.0
        inputs, targets, leads = (t.to(device, non_blocking=True) for t in batch)
        if targets.ndim == inputs.ndim:
            targets = targets[:, None]
        # Rollout targets (B, k, V, N, N): every step's error is pooled, as in rollout_loss.
        pred = inputs
        for j in range(targets.shape[1]):
            pred = runner.forward(pred, leads).float()
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
    if pd.is_distributed():
        torch.distributed.all_reduce(sums)
    count = sums[-1].clamp_min(1.0)
    mse = sums[:n_vars] / count
    rmse_phys = (sums[n_vars:2 * n_vars] / count).sqrt()
    unit = ""
    if denormalise is not None and not callable(denormalise):
        rmse_phys = rmse_phys * torch.as_tensor(list(denormalise), dtype=torch.float64,
                                                device=device)
    if denormalise is not None:
        unit = "_K"
    metrics = {"val_loss": float(mse.mean())}
    for name, rmse in zip(config.variables, mse.sqrt().tolist()):
        metrics[f"val_rmse_{name}"] = rmse
    if denormalise is not None:
        for name, rmse in zip(config.variables, rmse_phys.tolist()):
            metrics[f"val_rmse_{name}{unit}"] = rmse
    return metrics


# ----------------------------------------------------------------------------- checkpoints


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _resolve_resume(resume: bool | str | os.PathLike | None, out_dir: Path) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume is True or resume == "auto":
        pointer = out_dir / "checkpoints" / "latest.json"
        if not pointer.exists():
            if resume == "auto":
                return None
            raise InputError(f"resume=True but {pointer} does not exist: no checkpoint to "
                             "resume from (use resume='auto' to start fresh when there is none)")
        return out_dir / "checkpoints" / json.loads(pointer.read_text())["name"]
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise InputError(f"resume={str(resume)!r} is not a checkpoint directory (no "
                         "trainer_state.json)")
    return path


def _check_resumable(state: dict[str, Any], config: ViTConfig, tc: TrainConfig,
                     env: pd.DistEnv, path: Path) -> None:
    saved = ViTConfig.from_dict(state["model_config"])
    if saved != config:
        diff = {k: (v, getattr(config, k)) for k, v in dataclasses.asdict(saved).items()
                if k != "name" and getattr(config, k) != v}
        raise InputError(f"checkpoint {path} was trained with a different model config "
                         f"(saved, given): {diff}")
    saved_strategy = state["train_config"]["strategy"]
    same_family = (saved_strategy in _TORCH_FAMILY) == (tc.strategy in _TORCH_FAMILY)
    if not same_family:
        raise InputError(f"checkpoint {path} was written by strategy={saved_strategy!r}; it "
                         f"cannot be resumed with strategy={tc.strategy!r}")
    if tc.strategy == "deepspeed" and state["train_config"]["zero_stage"] != tc.zero_stage:
        raise InputError(f"checkpoint {path} used zero_stage="
                         f"{state['train_config']['zero_stage']}, not {tc.zero_stage}")
    for key, now in (("world_size", env.world_size),):
        if state[key] != now:
            raise InputError(f"checkpoint {path} was written with {key}={state[key]}, this run "
                             f"has {now}: resume with the same number of processes")
    for key in ("batch_size", "grad_accum_steps", "seed", "shuffle"):
        if state["train_config"][key] != getattr(tc, key):
            raise InputError(f"checkpoint {path} used {key}={state['train_config'][key]!r}, "
                             f"this run {getattr(tc, key)!r}: the data position would not match")
    # Extending a run (more steps, another schedule) is legitimate, but the result is no
    # longer the uninterrupted run's: say so rather than let it pass silently.
    changed = {key: (state["train_config"].get(key), getattr(tc, key))
               for key in ("max_steps", "max_epochs", "lr", "warmup_steps", "min_lr_ratio")
               if key in state["train_config"] and state["train_config"][key] != getattr(tc, key)}
    if changed and env.is_main:
        warnings.warn(f"resuming {path} with a different learning-rate schedule (saved, now): "
                      f"{changed}; the run continues, but it will not equal an uninterrupted "
                      f"run of either schedule", stacklevel=3)


class _CheckpointKeeper:
    """Writes checkpoint directories collectively and atomically; keeps last N + best."""

    def __init__(self, root: Path, env: pd.DistEnv, keep: int):
        self.root, self.env, self.keep = root, env, keep

    def save(self, runner: Any, step: int, trainer_state: dict[str, Any], device: torch.device
             ) -> Path:
        name = f"step_{step:08d}"
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        pd.barrier()
        runner.save(tmp)
        torch.save(_rng_state(device), tmp / f"rng_rank{self.env.rank:05d}.pt")
        pd.barrier()
        if self.env.is_main:
            write_json(tmp / "trainer_state.json", trainer_state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_json(self.root / "latest.json", {"name": name, "step": step})
            self._prune()
        pd.barrier()
        return final

    def mark_best(self, path: Path, step: int, val_loss: float) -> None:
        if self.env.is_main:
            write_json(self.root / "best.json", {"name": path.name, "step": step,
                                                 "val_loss": val_loss})
            self._prune()

    def _prune(self) -> None:
        protected = set()
        best = self.root / "best.json"
        if best.exists():
            protected.add(json.loads(best.read_text())["name"])
        periodic = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for path in periodic[:-self.keep]:
            if path.name not in protected:
                shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- metrics


class _MetricsLog:
    """metrics.csv + scalars.jsonl on rank 0, rewritten atomically at every row."""

    def __init__(self, out_dir: Path, enabled: bool, rows: list[dict[str, Any]]):
        self.out_dir, self.enabled, self.rows = out_dir, enabled, list(rows)
        self.scalars: list[dict[str, Any]] = []
        for row in self.rows:
            self._add_scalars(row)

    def _add_scalars(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key in ("step", "epoch", "kind", "wall_time") or value is None:
                continue
            prefix = "val" if key.startswith("val_") else "train"
            tag = f"{prefix}/{key.removeprefix('val_')}"
            self.scalars.append({"step": row["step"], "tag": tag, "value": value,
                                 "wall_time": row["wall_time"]})

    def add(self, row: dict[str, Any]) -> None:
        row = {"wall_time": round(time.time(), 3), **row}
        self.rows.append(row)
        self._add_scalars(row)
        if not self.enabled:
            return
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        with atomic_path(self.out_dir / "metrics.csv") as tmp:
            with open(tmp, "w", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)
        with atomic_path(self.out_dir / "scalars.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(s) + "\n" for s in self.scalars))


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    # Linux reports ru_maxrss in KiB: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# ----------------------------------------------------------------------------- the loop


def train(model_config: ViTConfig, train_config: TrainConfig, train_data: Dataset,
          out_dir: str | os.PathLike, *, val_data: Dataset | None = None,
          resume: bool | str | os.PathLike | None = None,
          denormalise: Sequence[float] | Callable[[Tensor], Tensor] | None = None,
          env: pd.DistEnv | None = None, show_progress: bool | None = None,
          init_weights: str | os.PathLike | None = None) -> TrainResult:
    """Train the ViT surrogate; every rank of a parallel launch calls this.

    Parameters
    ----------
    model_config : ViTConfig
        Architecture.
    train_config : TrainConfig
        Hyperparameters and distribution strategy.
    train_data : Dataset
        Map-style or iterable; items ``(input (V, N, N), target, lead_time_hours)``,
        normalised. The target is ``(V, N, N)``, or ``(k, V, N, N)`` to train on
        autoregressive rollouts of ``k`` steps (:func:`rollout_loss`; e.g.
        :class:`~turbda_kit.surrogate.rollout.TrajectoryPairs` with ``rollout_steps``).
    out_dir : path-like
        Where metrics, checkpoints and exports go (shared by all ranks).
    val_data : Dataset, optional
        Validation samples (same item format): RMSE per variable, early stopping, best
        checkpoint.
    resume : bool, "auto", path or None
        ``True``: continue from ``out_dir/checkpoints/latest.json`` (must exist); ``"auto"``:
        the same when it exists, else start fresh; a checkpoint directory: from there.
    denormalise : sequence of float or callable, optional
        Per-variable standard deviations (K) of the normalisation, or a function mapping
        normalised ``(B, V, N, N)`` fields to K: validation RMSEs are then also reported in K.
    env : DistEnv, optional
        Launch description; discovered from the environment by default. The process group
        is initialised here when needed and left up (call
        :func:`turbda_kit.parallel.distributed.shutdown` at the end of the driver).
    show_progress : bool or None
        Progress lines/bar; None reports on rank 0 only.
    init_weights : path-like or None
        Start from the weights of an export (:func:`~turbda_kit.surrogate.vit.save_surrogate`,
        e.g. ``vit_best.pt`` of an earlier run) instead of a fresh initialisation, to
        fine-tune it. Its architecture must equal ``model_config``. Ignored when resuming
        (the checkpoint holds the weights).

    Returns
    -------
    TrainResult
    """
    if not isinstance(model_config, ViTConfig):
        raise InputError(f"model_config must be a ViTConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise InputError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    tc, cfg = train_config, model_config
    out_dir = Path(out_dir)
    env = env or pd.discover_env()
    if tc.strategy == "none" and env.world_size > 1:
        raise InputError(f"strategy='none' but this launch has world_size={env.world_size}: "
                         "choose 'ddp', 'fsdp' or 'deepspeed'")
    device = pd.device_for(env)
    if tc.precision == "fp16" and device.type == "cpu":
        raise InputError("precision='fp16' is not supported on CPU: use 'bf16' or 'fp32'")
    global_batch = tc.batch_size * env.world_size
    check_dataset(train_data, cfg, "train_data", min_samples=global_batch * tc.grad_accum_steps)
    if val_data is not None:
        check_dataset(val_data, cfg, "val_data")
    if denormalise is not None and not callable(denormalise) and len(denormalise) != cfg.n_vars:
        raise InputError(f"denormalise has {len(denormalise)} standard deviations; the model "
                         f"has {cfg.n_vars} variables")
    micro_per_epoch = _micro_batches_per_epoch(train_data, tc, env.world_size)
    if tc.max_steps is None:
        if micro_per_epoch is None:
            raise InputError("an IterableDataset needs max_steps (its length is unknown)")
        total_steps = tc.max_epochs * (micro_per_epoch // tc.grad_accum_steps)
    else:
        total_steps = tc.max_steps
    initial_state = None
    if init_weights is not None:
        initial_model, _ = load_surrogate(init_weights)
        # Regularisation may change for a fine-tune; what the weights mean may not.
        free = {"name", "drop_rate", "attn_drop_rate", "drop_path_rate"}
        have = {k: v for k, v in initial_model.config.to_dict().items() if k not in free}
        want = {k: v for k, v in cfg.to_dict().items() if k not in free}
        if have != want:
            differ = sorted(k for k in want if have.get(k) != want[k])
            raise InputError(f"init_weights {init_weights} holds a model that differs from "
                             f"model_config in {differ} ({[have.get(k) for k in differ]} vs "
                             f"{[want[k] for k in differ]}): fine-tune the same architecture")
        initial_state = initial_model.state_dict()
    resume_path = _resolve_resume(resume, out_dir)
    saved: dict[str, Any] | None = None
    if resume_path is not None:
        saved = json.loads((resume_path / "trainer_state.json").read_text())
        _check_resumable(saved, cfg, tc, env, resume_path)

    # --- set-up (no training compute before this point)
    if tc.strategy != "none":
        pd.init_distributed(env)
    torch.manual_seed(tc.seed + 7919 * env.rank)   # dropout / drop-path streams per rank
    model = ViT(cfg, generator=torch.Generator().manual_seed(tc.seed))
    if initial_state is not None and saved is None:
        model.load_state_dict(initial_state)
    model = model.to(device)
    runner_type = _DeepSpeedRunner if tc.strategy == "deepspeed" else _TorchRunner
    runner = runner_type(model, tc, env, device, total_steps)
    keeper = _CheckpointKeeper(out_dir / "checkpoints", env, tc.keep_checkpoints)

    step = epoch = position = 0
    best_val, best_step, bad_evals, last_val_step = None, None, 0, -1
    history: list[dict[str, Any]] = []
    if saved is not None:
        runner.load(resume_path)
        rng_file = resume_path / f"rng_rank{env.rank:05d}.pt"
        _set_rng_state(torch.load(rng_file, weights_only=True), device)
        step, epoch, position = saved["step"], saved["epoch"], saved["position"]
        best_val, best_step = saved["best_val_loss"], saved["best_step"]
        bad_evals, last_val_step = saved["evals_without_improvement"], saved["last_val_step"]
        history = [row for row in saved["history"] if row["step"] <= step]
    log = _MetricsLog(out_dir, env.is_main, history)
    result = TrainResult(step=step, epoch=epoch, best_val_loss=best_val, best_step=best_step)
    last_saved_step = step if saved is not None else -1
    if saved is not None:
        result.last_checkpoint = str(resume_path)
        best_pointer = resume_path.parent / "best.json"
        if best_step is not None and best_pointer.exists():
            result.best_checkpoint = str(resume_path.parent
                                         / json.loads(best_pointer.read_text())["name"])
        # The best export of the interrupted run stays valid until a better one replaces it.
        best_export = out_dir / "export" / "vit_best.pt"
        if best_step is not None and best_export.exists():
            result.best_export_path = str(best_export)

    def trainer_state() -> dict[str, Any]:
        return {"format": 1, "step": step, "epoch": epoch, "position": position,
                "best_val_loss": best_val, "best_step": best_step,
                "evals_without_improvement": bad_evals, "last_val_step": last_val_step,
                "world_size": env.world_size,
                "model_config": cfg.to_dict(), "train_config": tc.to_dict(),
                "history": log.rows}

    def export(name: str, metadata: dict[str, Any]) -> str | None:
        state = runner.full_state_dict()   # collective for sharded strategies
        path = out_dir / "export" / name
        if env.is_main:
            save_surrogate(cfg, state, path, metadata)
        pd.barrier()
        return str(path)

    def validate() -> bool:
        """Run validation, log it, update best/patience; True when early stopping fires."""
        nonlocal best_val, best_step, bad_evals, last_saved_step, last_val_step
        if last_val_step == step:
            return False
        last_val_step = step
        metrics = _evaluate(runner, val_data, cfg, tc.batch_size, env, device, denormalise)
        log.add({"step": step, "epoch": epoch, "kind": "val", **metrics})
        val_loss = metrics["val_loss"]
        if best_val is None or val_loss < best_val - tc.min_delta:
            best_val, best_step, bad_evals = val_loss, step, 0
            path = keeper.save(runner, step, trainer_state(), device)
            last_saved_step = step
            keeper.mark_best(path, step, val_loss)
            result.best_checkpoint = str(path)
            result.last_checkpoint = str(path)
            result.best_export_path = export("vit_best.pt", {"step": step, "val_loss": val_loss})
            return False
        bad_evals += 1
        return tc.patience is not None and bad_evals >= tc.patience

    bar = progress_bar(total=total_steps, desc=f"train vit ({tc.strategy})", enabled=show_progress)
    if step:
        bar.update(step)
    interval_losses: list[Tensor] = []
    interval_steps: list[int] = []
    interval_start = time.perf_counter()
    stop = step >= total_steps
    while not stop and (tc.max_epochs is None or epoch < tc.max_epochs):
        batches = _train_batches(train_data, tc, env, epoch, position, device.type == "cuda")
        epoch_done, steps_this_epoch = True, 0
        while True:
            group = [b for _, b in zip(range(tc.grad_accum_steps), batches)]
            complete = len(group) == tc.grad_accum_steps
            if _sharded_by_rank(train_data) and pd.is_distributed():
                # Ranks read their own streams: all stop when the first runs dry.
                flag = torch.tensor([float(complete)], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
                complete = bool(flag.item())
            if not complete:
                break
            runner.train()
            losses = []
            for i, (inputs, targets, leads) in enumerate(group):
                inputs, targets, leads = (t.to(device, non_blocking=True)
                                          for t in (inputs, targets, leads))
                losses.append(runner.micro_step(inputs, targets, leads,
                                                last=i == tc.grad_accum_steps - 1))
            lr = runner.lr()
            grad_norm = runner.optimizer_step()
            step += 1
            steps_this_epoch += 1
            position += tc.grad_accum_steps
            interval_losses.append(torch.stack(losses).mean())
            interval_steps.append(step)
            bar.update(1)
            if step % tc.log_every == 0 or step >= total_steps:
                step_losses = pd.all_reduce_mean(torch.stack(interval_losses).float()).tolist()
                result.step_losses.update(zip(interval_steps, step_losses))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = max(time.perf_counter() - interval_start, 1e-9)
                rate = len(interval_steps) * global_batch * tc.grad_accum_steps / elapsed
                row = {"step": step, "epoch": epoch, "kind": "train",
                       "train_loss": sum(step_losses) / len(step_losses), "lr": lr,
                       "grad_norm": grad_norm, "samples_per_s": rate,
                       "tokens_per_s": rate * cfg.n_tokens,
                       "tflops_per_device": achieved_tflops(cfg, rate, env.world_size),
                       "peak_mem_gb": _peak_memory_gb(device)}
                log.add(row)
                bar.set_postfix_str(f"loss {row['train_loss']:.4g}")
                interval_losses, interval_steps = [], []
                interval_start = time.perf_counter()
            if val_data is not None and tc.eval_every and step % tc.eval_every == 0:
                stop = result.stopped_early = validate()
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and last_saved_step != step:
                result.last_checkpoint = str(keeper.save(runner, step, trainer_state(), device))
                last_saved_step = step
            if step >= total_steps:
                stop = True
            if stop:
                epoch_done = False
                break
        # End of an epoch, or of training by max_steps: validate once at this step.
        if val_data is not None and not result.stopped_early and validate():
            result.stopped_early = stop = True
        if epoch_done:
            if steps_this_epoch == 0 and position == 0:
                break   # an iterable dataset too short for one step: nothing more to do
            epoch += 1
            position = 0
    bar.close()

    if last_saved_step != step:
        result.last_checkpoint = str(keeper.save(runner, step, trainer_state(), device))
    result.export_path = export("vit_last.pt", {"step": step})
    result.step, result.epoch = step, epoch
    result.best_val_loss, result.best_step = best_val, best_step
    result.history = list(log.rows)
    result.model = getattr(runner, "engine", None) or runner.model

    @torch.no_grad()
    def predict(fields: Tensor, lead_time_hours: Tensor) -> Tensor:
        runner.eval()
        return runner.forward(fields.to(device), lead_time_hours.to(device)).float()

    result.predict = predict
    return result
