"""Training and evaluation datasets of the surrogate, all in one place.

Two sources of forecast pairs, three datasets, one item format ``(input, target,
lead_time_hours)`` of float32 tensors:

* from a shard root (:func:`~turbda_kit.data.shards.open_shards`), pairing states within a
  shard as ClimaX does — :class:`ForecastShards` (iterable, for training with DDP and
  DataLoader workers) and :class:`ForecastSamples` (map-style, for evaluation);
* from one contiguous trajectory in memory, every pair across shard and day boundaries —
  :class:`TrajectoryPairs` (e.g. a split joined by
  :func:`turbda_kit.surrogate.rollout.split_trajectory`), optionally with several
  autoregressive targets per input.

Shard datasets yield::

    input  (vars, ny, nx)  state at time t
    target (vars, ny, nx)  state at time t + lead
    lead_time              0-d tensor, hours

A shard of ``S`` steps gives ``S - max_lead`` samples, inputs at its first ``S - max_lead``
steps. The lead is fixed, or drawn per sample from ``[min_lead, max_lead]`` by a
generator keyed on ``(seed, epoch, shard)``, so the samples do not depend on how shards
are spread over DDP ranks and DataLoader workers.

Example
-------
::

    data = ForecastShards("shards", "train", lead_steps=1, shuffle=True, buffer_size=64)
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2)
    x, y, lead_hours = next(iter(loader))   # (8, vars, ny, nx) twice, (8,)
"""

from __future__ import annotations

import bisect
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from ..errors import InputError
from .normaliser import Normaliser
from .shards import ShardCatalog, open_shards
from .validation import check_positive_int

__all__ = ["ForecastSamples", "ForecastShards", "TrajectoryPairs", "partition"]



def _lead_range(lead_steps: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(lead_steps, (int, np.integer)) and not isinstance(lead_steps, bool):
        low = high = int(lead_steps)
    elif isinstance(lead_steps, (tuple, list)) and len(lead_steps) == 2:
        low, high = (int(v) for v in lead_steps)
    else:
        raise InputError(f"lead_steps={lead_steps!r} must be an int or a (min, max) pair")
    if not 1 <= low <= high:
        raise InputError(f"lead_steps={lead_steps!r}: need 1 <= min <= max")
    return low, high


def partition(n_items: int, rank: int, world_size: int, worker_id: int = 0,
              num_workers: int = 1, drop_remainder: bool = False) -> list[int]:
    """Items (shards) of one DataLoader worker of one DDP rank, round-robin.

    Worker ``w`` of rank ``r`` is consumer ``g = r * num_workers + w`` of
    ``G = world_size * num_workers`` and takes items ``g, g + G, g + 2G, ...``. Over all
    consumers every item is taken exactly once; with ``drop_remainder`` the last
    ``n_items % G`` items are dropped so that every consumer gets the same number (what
    DDP needs to keep ranks in step).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    if num_workers < 1 or not 0 <= worker_id < num_workers:
        raise InputError(f"worker_id={worker_id}, num_workers={num_workers}: need "
                         "0 <= worker_id < num_workers")
    consumers = world_size * num_workers
    usable = n_items - n_items % consumers if drop_remainder else n_items
    return list(range(rank * num_workers + worker_id, usable, consumers))


def _distributed_rank_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _ForecastBase:
    """Shared set-up of the two dataset classes."""

    def __init__(self, root: str | os.PathLike | ShardCatalog, split: str,
                 variables: Sequence[str] | None, lead_steps: int | Sequence[int],
                 hours_per_step: float | None, normalize: bool, seed: int):
        self.catalog = (root if isinstance(root, ShardCatalog)
                        else open_shards(root, variables, hours_per_step=hours_per_step))
        self.split = split
        self.shard_refs = self.catalog.shards(split)  # refuses a split without shards
        self.min_lead, self.max_lead = _lead_range(lead_steps)
        shortest = min(ref.steps for ref in self.shard_refs)
        if self.max_lead >= shortest:
            raise InputError(f"lead_steps={lead_steps!r} reaches past the end of shards of "
                             f"{shortest} steps: the longest lead must be < {shortest}")
        recorded = self.catalog.hours_per_step
        if recorded is not None and hours_per_step is not None \
                and abs(float(hours_per_step) - recorded) > 1e-9:
            raise InputError(f"hours_per_step={hours_per_step} contradicts "
                             f"{self.catalog.root}, which records {recorded} h between "
                             "steps: leave it out (None)")
        hours = hours_per_step if hours_per_step is not None else recorded
        if hours is None or not hours > 0:
            raise InputError(f"hours_per_step is unknown for {self.catalog.root} (a published "
                             "layout without manifest.json): pass hours_per_step=<hours "
                             "between consecutive steps> (the seed's 64x64 set: 12.0)")
        self.hours_per_step = float(hours)
        self.normalize = bool(normalize)
        self.seed = int(seed)
        self.epoch = 0

    @property
    def variables(self) -> tuple[str, ...]:
        """Channel names, in order."""
        return self.catalog.variables

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return self.catalog.grid_shape

    @property
    def normaliser(self) -> Normaliser:
        """Training-split mean and std of the channels."""
        return self.catalog.normaliser

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: reshuffles shards and redraws random leads."""
        self.epoch = int(epoch)

    def samples_in(self, index: int) -> int:
        """Number of samples shard ``index`` yields."""
        return self.shard_refs[index].steps - self.max_lead

    @property
    def num_samples(self) -> int:
        """Samples in the whole split (one epoch, all ranks and workers together)."""
        return sum(self.samples_in(i) for i in range(len(self.shard_refs)))

    def leads(self, index: int) -> np.ndarray:
        """Lead (steps) of each sample of shard ``index``: keyed on (seed, epoch, shard)."""
        n = self.samples_in(index)
        if self.min_lead == self.max_lead:
            return np.full(n, self.max_lead, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        return rng.integers(self.min_lead, self.max_lead + 1, size=n)

    def fields(self, index: int) -> np.ndarray:
        """Shard ``index`` as float32 ``(steps, vars, ny, nx)``, normalised if asked."""
        data = self.catalog.load(self.shard_refs[index]).astype(np.float32, copy=False)
        return self.catalog.normaliser.normalise(data).astype(np.float32, copy=False) \
            if self.normalize else data

    def _sample(self, data: np.ndarray, t: int, lead: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.ascontiguousarray(data[t])),
                torch.from_numpy(np.ascontiguousarray(data[t + lead])),
                torch.tensor(lead * self.hours_per_step, dtype=torch.float32))


class ForecastShards(_ForecastBase, IterableDataset):
    """Forecast samples streamed shard by shard; for training with DDP and workers.

    Parameters
    ----------
    root : path-like or ShardCatalog
        A shard root (see :func:`open_shards`).
    split : {"train", "val", "test"}
    variables : sequence of str or None
        Channels (default all).
    lead_steps : int or (int, int)
        Fixed lead, or an inclusive range for a random lead per sample.
    hours_per_step : float or None
        Hours between steps; read from the manifest when None.
    normalize : bool
        Yield normalised fields (training statistics).
    shuffle : bool
        Shuffle shard order and the samples within each shard, per epoch.
    buffer_size : int
        Size of a shuffle buffer mixing samples across shards (0: none).
    seed : int
        Seed of every random choice (with the epoch and shard / worker index).
    rank, world_size : int or None
        DDP position; default from ``torch.distributed`` when initialised, else 0 of 1.
    drop_remainder : bool
        Drop shards so that every rank × worker gets the same count (see :func:`partition`).

    Yields
    ------
    input : torch.Tensor
        ``(vars, ny, nx)`` float32.
    target : torch.Tensor
        ``(vars, ny, nx)`` float32, ``lead`` steps later.
    lead_time : torch.Tensor
        0-d float32, hours.
    """

    def __init__(self, root: str | os.PathLike | ShardCatalog, split: str = "train",
                 variables: Sequence[str] | None = None, lead_steps: int | Sequence[int] = 1,
                 hours_per_step: float | None = None, normalize: bool = True,
                 shuffle: bool = False, buffer_size: int = 0, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 drop_remainder: bool = False):
        _ForecastBase.__init__(self, root, split, variables, lead_steps, hours_per_step,
                               normalize, seed)
        IterableDataset.__init__(self)
        if buffer_size < 0:
            raise InputError(f"buffer_size={buffer_size} must be >= 0")
        self.shuffle, self.buffer_size = bool(shuffle), int(buffer_size)
        self.rank, self.world_size = rank, world_size
        self.drop_remainder = bool(drop_remainder)

    def my_shards(self, worker_id: int = 0, num_workers: int = 1) -> list[int]:
        """Shard indices this rank's worker reads this epoch, in reading order."""
        rank, world = _distributed_rank_size()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        order = np.arange(len(self.shard_refs))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(order)
        picks = partition(len(order), rank, world, worker_id, num_workers, self.drop_remainder)
        return [int(order[i]) for i in picks]

    def _stream(self, shards: list[int]) -> Iterator[tuple[torch.Tensor, ...]]:
        for index in shards:
            data = self.fields(index)
            leads = self.leads(index)
            times = np.arange(len(leads))
            if self.shuffle:
                times = np.random.default_rng([self.seed, self.epoch, index, 2]).permutation(times)
            for t in times:
                yield self._sample(data, int(t), int(leads[t]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank = self.rank if self.rank is not None else _distributed_rank_size()[0]
        stream = self._stream(self.my_shards(worker_id, num_workers))
        if self.buffer_size == 0:
            yield from stream
            return
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker_id, 3])
        buffer: list[tuple[torch.Tensor, ...]] = []
        for sample in stream:
            if len(buffer) < self.buffer_size:
                buffer.append(sample)
                continue
            slot = int(rng.integers(self.buffer_size))
            yield buffer[slot]
            buffer[slot] = sample
        for slot in rng.permutation(len(buffer)):
            yield buffer[slot]


class ForecastSamples(_ForecastBase, Dataset):
    """The same samples as :class:`ForecastShards`, by index (evaluation, samplers).

    Sample ``i`` enumerates shards in time order and, within a shard, input times in
    order. Recently used shards are cached (``cache_shards`` of them) because
    consecutive indices share a shard.

    Parameters
    ----------
    root, split, variables, lead_steps, hours_per_step, normalize, seed
        As for :class:`ForecastShards`.
    cache_shards : int
        Number of decoded shards kept in memory per process.
    """

    def __init__(self, root: str | os.PathLike | ShardCatalog, split: str = "val",
                 variables: Sequence[str] | None = None, lead_steps: int | Sequence[int] = 1,
                 hours_per_step: float | None = None, normalize: bool = True, seed: int = 0,
                 cache_shards: int = 2):
        _ForecastBase.__init__(self, root, split, variables, lead_steps, hours_per_step,
                               normalize, seed)
        if cache_shards < 1:
            raise InputError(f"cache_shards={cache_shards} must be >= 1")
        self.cache_shards = int(cache_shards)
        counts = [self.samples_in(i) for i in range(len(self.shard_refs))]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """``(shard index, input time within the shard)`` of sample ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i = i % len(self)
        shard = bisect.bisect_right(self._starts, i) - 1
        return shard, i - int(self._starts[shard])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shard, t = self.locate(int(i))
        key = (shard, self.epoch)
        if key not in self._cache:
            self._cache[key] = (self.fields(shard), self.leads(shard))
            while len(self._cache) > self.cache_shards:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        data, leads = self._cache[key]
        return self._sample(data, t, int(leads[t]))


class TrajectoryPairs(Dataset):
    """Every ``(state, state lead steps later)`` pair of one trajectory, normalised.

    With ``rollout_steps = k > 1`` the target is the next ``k`` states at multiples of
    the lead, for training on autoregressive rollouts (see
    :func:`turbda_kit.surrogate.training.rollout_loss`).

    Training shards pair states within a shard only, as ClimaX does; with one shard per
    day of 12-hourly output that keeps one 12-h pair per day out of two. This map-style
    dataset takes every pair of a contiguous trajectory (e.g. from
    :func:`turbda_kit.surrogate.rollout.split_trajectory`), held in memory.

    Parameters
    ----------
    trajectory : Tensor, shape (T, V, N, N)
        Consecutive states in physical units.
    normaliser : Normaliser
        Applied to inputs and targets (any object with ``normalise(x) -> x`` will do).
    lead_steps : int
        Trajectory steps between an input and its target.
    hours_per_step : float
        Spacing of the trajectory, hours.
    variables : sequence of str, optional
        Channel names (default ``normaliser.variables``), checked by the trainer.
    rollout_steps : int
        Forecast steps per target (1: a single state).

    Notes
    -----
    Items are ``(input (V, N, N), target, lead_time_hours 0-d)`` float32 tensors, the item
    format of :func:`turbda_kit.surrogate.training.train`; the target is ``(V, N, N)`` for
    one rollout step and ``(rollout_steps, V, N, N)`` otherwise.
    """

    def __init__(self, trajectory: Tensor, normaliser: Normaliser, lead_steps: int = 1,
                 hours_per_step: float = 12.0, variables: Sequence[str] | None = None,
                 rollout_steps: int = 1):
        trajectory = _check_trajectory(trajectory)
        self.lead_steps = check_positive_int("lead_steps", lead_steps)
        self.rollout_steps = check_positive_int("rollout_steps", rollout_steps)
        self.hours_per_step = _check_hours(hours_per_step)
        span = self.lead_steps * self.rollout_steps
        if trajectory.shape[0] <= span:
            raise InputError(f"trajectory has {trajectory.shape[0]} states: {self.rollout_steps}"
                             f" rollout step(s) at a lead of {self.lead_steps} steps need at "
                             f"least {span + 1}")
        self.fields = normaliser.normalise(trajectory.float()).contiguous()
        names = variables if variables is not None else getattr(normaliser, "variables", None)
        if names is not None:
            self.variables = tuple(str(v) for v in names)
        self.lead_time = torch.tensor(self.lead_steps * self.hours_per_step)

    def __len__(self) -> int:
        return self.fields.shape[0] - self.lead_steps * self.rollout_steps

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"pair {i} out of range for {len(self)} pairs")
        i = i % len(self)
        if self.rollout_steps == 1:
            return self.fields[i], self.fields[i + self.lead_steps], self.lead_time
        stop = i + self.lead_steps * self.rollout_steps + 1
        return self.fields[i], self.fields[i + self.lead_steps:stop:self.lead_steps], \
            self.lead_time


def _check_trajectory(trajectory: Any) -> Tensor:
    layout = "(T, V, N, N)"
    if not isinstance(trajectory, Tensor):
        raise InputError(f"trajectory must be a torch.Tensor {layout}, got "
                         f"{type(trajectory).__name__}")
    if trajectory.dim() != 4:
        raise InputError(f"trajectory must have shape {layout}, got {tuple(trajectory.shape)}")
    if not trajectory.is_floating_point():
        raise InputError(f"trajectory must be a floating-point tensor, got {trajectory.dtype}")
    return trajectory


def _check_hours(hours_per_step: Any) -> float:
    if isinstance(hours_per_step, bool) or not isinstance(hours_per_step, (int, float)) \
            or not math.isfinite(hours_per_step) or hours_per_step <= 0:
        raise InputError(f"hours_per_step={hours_per_step!r} must be a number of hours > 0")
    return float(hours_per_step)
