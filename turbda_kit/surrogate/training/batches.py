"""Batching: which samples each rank trains and validates on, and in what order.

Items are ``(input (V, N, N), target, lead_time_hours)`` normalised samples; the target
is ``(V, N, N)`` or a rollout ``(k, V, N, N)``.

For a map-style dataset each global micro-batch is a contiguous block of a per-epoch
permutation (seeded by ``seed`` and the epoch), split across ranks, so the samples of a
step do not depend on the number of ranks and resuming at a micro-batch is exact. An
iterable dataset is read whole by every rank, which keeps its slice of each global batch,
unless it has a ``world_size`` attribute
(:class:`turbda_kit.data.datasets.ForecastShards`): then it is taken as already split by
rank and each rank batches its own stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ...errors import InputError
from ...parallel.distributed import DistEnv
from ..config import ViTConfig
from .augment import shift_along_x, x_shifts
from .config import TrainConfig

__all__ = ["Batch", "check_dataset", "train_batches", "validation_batches",
           "micro_batches_per_epoch", "sharded_by_rank", "collate"]

Batch = tuple[Tensor, Tensor, Tensor]
"""``(inputs (B, V, N, N), targets (B, V, N, N) or (B, k, V, N, N), leads (B,))``."""


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


def collate(items: Sequence[Any]) -> Batch:
    """Stack ``(input, target, lead)`` items into float32 batch tensors."""
    inputs = torch.stack([torch.as_tensor(item[0], dtype=torch.float32) for item in items])
    targets = torch.stack([torch.as_tensor(item[1], dtype=torch.float32) for item in items])
    leads = torch.tensor([float(item[2]) for item in items], dtype=torch.float32)
    return inputs, targets, leads


def sharded_by_rank(data: Dataset) -> bool:
    """An iterable dataset exposing ``world_size`` (e.g. ``turbda_kit.data.shards.
    ForecastShards``) already gives each rank its own samples."""
    return isinstance(data, IterableDataset) and hasattr(data, "world_size")


def _local_micro_batches(data: Dataset, config: TrainConfig, env: DistEnv, epoch: int,
                         start: int, pin: bool) -> Iterator[Batch]:
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    if isinstance(data, IterableDataset):
        world, rank = (1, 0) if sharded_by_rank(data) else (env.world_size, env.rank)
        for items in _iterable_batches(data, config.batch_size, world, rank, start):
            yield collate(items)
        return
    sampler = _IndexBatches(_epoch_order(len(data), config.seed, epoch, config.shuffle),
                            config.batch_size, env.world_size, env.rank, start)
    # A private generator keeps the DataLoader from drawing on the global RNG (dropout's),
    # which would make a resumed run differ from an uninterrupted one.
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate,
                        num_workers=config.num_workers, pin_memory=pin,
                        generator=torch.Generator().manual_seed(config.seed))
    yield from loader


def train_batches(data: Dataset, config: TrainConfig, env: DistEnv, epoch: int, start: int,
                  pin: bool = False) -> Iterator[Batch]:
    """This rank's training micro-batches of one epoch, from micro-batch ``start`` on.

    Parameters
    ----------
    data : Dataset
        Map-style or iterable training data.
    config : TrainConfig
        Batch size, seed, shuffling, workers and augmentation.
    env : DistEnv
        This rank and the world size.
    epoch : int
        Epoch (seeds the order and the augmentation).
    start : int
        First micro-batch (the data position of a resumed run).
    pin : bool
        Pin host memory (for GPU runs).

    Yields
    ------
    Batch
        With ``config.augment_x_shift``, every sample rolled along x by its shift
        (:func:`~turbda_kit.surrogate.training.augment.x_shifts`).
    """
    batches = _local_micro_batches(data, config, env, epoch, start, pin)
    if not config.augment_x_shift:
        yield from batches
        return
    global_batch = config.batch_size * env.world_size
    first = env.rank * config.batch_size
    for micro, (inputs, targets, leads) in enumerate(batches, start=start):
        shifts = x_shifts(config.seed, epoch, micro, global_batch, inputs.shape[-1])
        shifts = shifts[first:first + inputs.shape[0]]
        yield shift_along_x(inputs, shifts), shift_along_x(targets, shifts), leads


def validation_batches(data: Dataset, batch_size: int, env: DistEnv) -> Iterator[Batch]:
    """This rank's share of the validation samples, in batches of ``batch_size``."""
    if isinstance(data, IterableDataset):
        world, rank = (1, 0) if sharded_by_rank(data) else (env.world_size, env.rank)
        buffer = []
        for i, item in enumerate(data):
            if i % world == rank:
                buffer.append(item)
                if len(buffer) == batch_size:
                    yield collate(buffer)
                    buffer = []
        if buffer:
            yield collate(buffer)
        return
    indices = list(range(env.rank, len(data), env.world_size))
    for begin in range(0, len(indices), batch_size):
        yield collate([data[i] for i in indices[begin:begin + batch_size]])


def micro_batches_per_epoch(data: Dataset, config: TrainConfig, world_size: int) -> int | None:
    """Global micro-batches in one epoch of a map-style dataset (None for iterable data)."""
    if isinstance(data, IterableDataset):
        return None
    return len(data) // (config.batch_size * world_size)
