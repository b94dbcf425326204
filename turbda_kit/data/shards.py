"""Read training shards (ClimaX ``.npz`` layout or the kit's zarr store) as torch datasets.

:func:`open_shards` describes a preprocessing root — one written by
:func:`turbda_kit.data.preprocess.preprocess`, or a published data set in the ClimaX
``nc2np`` layout without a manifest. :class:`ForecastShards` (iterable, for training) and
:class:`ForecastSamples` (map-style, for evaluation) yield normalised samples::

    input  (vars, ny, nx)  state at time t
    target (vars, ny, nx)  state at time t + lead
    lead_time              0-d tensor, hours

As in ClimaX, an input and its target come from the same shard: a shard of ``S`` steps
gives ``S - max_lead`` samples, inputs at its first ``S - max_lead`` steps. The lead is
fixed, or drawn per sample from ``[min_lead, max_lead]`` by a generator keyed on
``(seed, epoch, shard)``, so the samples do not depend on how shards are spread over DDP
ranks and DataLoader workers.

Example
-------
::

    data = ForecastShards("shards", "train", lead_steps=1, shuffle=True, buffer_size=64)
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2)
    x, y, lead_hours = next(iter(loader))   # (8, vars, ny, nx) twice, (8,)
"""

from __future__ import annotations

import bisect
import json
import os
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..errors import InputError

SPLITS = ("train", "val", "test")
_SHARD_NAME = re.compile(r"^(\d+)_(\d+)\.npz$")
ArrayLike = Any  # numpy.ndarray or torch.Tensor


# --------------------------------------------------------------------------- normalisation


def _stats_like(x: ArrayLike, values: ArrayLike) -> ArrayLike:
    """``values (vars,)`` shaped ``(vars, 1, 1)`` in x's library, dtype and device."""
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    return np.asarray(values, dtype=np.result_type(x.dtype, np.float32)).reshape(-1, 1, 1)


def normalise(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> ArrayLike:
    """``(x - mean) / std`` per variable.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        Fields ``(..., vars, ny, nx)`` in K.
    mean, std : array-like
        ``(vars,)`` in K (``normalize_mean.npz`` / ``normalize_std.npz``).

    Returns
    -------
    Same type, dtype and device as ``x`` (numpy integer input becomes float).
    """
    return (x - _stats_like(x, mean)) / _stats_like(x, std)


def denormalise(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> ArrayLike:
    """``x * std + mean`` per variable: the inverse of :func:`normalise` (to rounding)."""
    return x * _stats_like(x, std) + _stats_like(x, mean)


@dataclass(frozen=True)
class Normaliser:
    """Per-variable mean and std of the training split, with the two transforms.

    Attributes
    ----------
    variables : tuple of str
        Channel order.
    mean, std : numpy.ndarray
        ``(vars,)`` float64, K.
    """

    variables: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    def normalise(self, x: ArrayLike) -> ArrayLike:
        """See :func:`normalise`."""
        return normalise(x, self.mean, self.std)

    def denormalise(self, x: ArrayLike) -> ArrayLike:
        """See :func:`denormalise`."""
        return denormalise(x, self.mean, self.std)


# --------------------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class ShardRef:
    """One shard: ``{split}/{day}_{shard}.npz`` or a time range of the zarr store's group."""

    split: str
    day: int
    shard: int
    path: Path | None
    start: int
    stop: int

    @property
    def steps(self) -> int:
        """Number of time steps in the shard."""
        return self.stop - self.start


def _npz_array_shape(path: Path, key: str) -> tuple[int, ...]:
    """Shape of one array in an uncompressed or compressed ``.npz`` without reading its data."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(member)
    return tuple(shape)


class ShardCatalog:
    """A preprocessing root: variables, grid, statistics and the shards of each split.

    Use :func:`open_shards` to build one.

    Attributes
    ----------
    root : Path
    fmt : str
        ``"npz"`` or ``"zarr"``.
    variables : tuple of str
        Channels, in order.
    all_variables : tuple of str
        Every variable the root holds statistics for.
    grid_shape : tuple of int
        ``(ny, nx)``.
    y, x : numpy.ndarray or None
        Grid coordinates (m), when the root has them.
    hours_per_step : float or None
        Time between consecutive steps (from the manifest; None for a published layout).
    normaliser : Normaliser
        Training-split statistics of ``variables``.
    manifest : dict or None
        ``manifest.json`` when present.
    """

    def __init__(self, root: str | os.PathLike, variables: Sequence[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"root={str(self.root)!r} is not a directory of shards")
        manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] | None = (
            json.loads(manifest_path.read_text()) if manifest_path.is_file() else None)
        settings = (self.manifest or {}).get("settings", {})
        if (self.root / "data.zarr").is_dir():
            self.fmt = "zarr"
            import zarr

            attrs = dict(zarr.open_group(str(self.root / "data.zarr"), mode="r").attrs)
            if "normalize_mean" not in attrs:
                raise InputError(f"{self.root / 'data.zarr'} has no statistics in its attributes: "
                                 "was preprocessing interrupted? Run it again to finish")
            mean = {k: np.asarray(v, dtype=np.float64) for k, v in attrs["normalize_mean"].items()}
            std = {k: np.asarray(v, dtype=np.float64) for k, v in attrs["normalize_std"].items()}
            stored = list(attrs.get("variables", list(mean)))
        elif (self.root / "normalize_mean.npz").is_file():
            self.fmt = "npz"
            with np.load(self.root / "normalize_mean.npz") as npz:
                mean = {k: np.asarray(npz[k], dtype=np.float64) for k in npz.files}
            std_path = self.root / "normalize_std.npz"
            if not std_path.is_file():
                raise InputError(f"{std_path} is missing: a shard root needs both "
                                 "normalize_mean.npz and normalize_std.npz")
            with np.load(std_path) as npz:
                std = {k: np.asarray(npz[k], dtype=np.float64) for k in npz.files}
            stored = list(settings.get("variables", list(mean)))
        else:
            raise InputError(f"root={str(self.root)!r} holds neither normalize_mean.npz (ClimaX "
                             "npz layout) nor data.zarr: run turbda_kit.data.preprocess first")
        self.all_variables = tuple(stored)
        chosen = list(stored) if variables is None else list(variables)
        missing = [v for v in chosen if v not in mean or v not in std]
        if missing or not chosen:
            raise InputError(f"variables={chosen!r}: {missing or 'none given'} not in {self.root}; "
                             f"available: {', '.join(stored)}")
        self.variables = tuple(chosen)
        self.normaliser = Normaliser(
            self.variables,
            np.concatenate([mean[v].reshape(-1)[:1] for v in chosen]),
            np.concatenate([std[v].reshape(-1)[:1] for v in chosen]))
        self.hours_per_step: float | None = settings.get("hours_per_step")
        self._shards: dict[str, list[ShardRef]] = {}
        self._zarr_group = None
        self._zarr_pid: int | None = None
        self.y = self._coordinate("y", "lat")
        self.x = self._coordinate("x", "lon")
        if "grid" in settings:
            self.grid_shape = tuple(int(n) for n in settings["grid"])
        elif self.y is not None and self.x is not None:
            self.grid_shape = (len(self.y), len(self.x))
        else:
            first = next((s for split in SPLITS for s in self.shards(split)), None)
            if first is None:
                raise InputError(f"{self.root} holds no shards")
            self.grid_shape = tuple(self.load(first)[0, 0].shape)

    def _coordinate(self, name: str, climax_name: str) -> np.ndarray | None:
        for candidate in (name, climax_name):
            path = self.root / f"{candidate}.npy"
            if path.is_file():
                return np.load(path)
        if self.fmt == "zarr":
            group = self._group()
            for split in SPLITS:
                if split in group and name in group[split]:
                    return np.asarray(group[split][name][:])
        return None

    def _group(self):
        """The zarr root group, opened once per process (DataLoader workers fork)."""
        if self._zarr_group is None or self._zarr_pid != os.getpid():
            import zarr

            self._zarr_group = zarr.open_group(str(self.root / "data.zarr"), mode="r")
            self._zarr_pid = os.getpid()
        return self._zarr_group

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zarr_group"] = None  # reopened in the worker
        return state

    def shards(self, split: str) -> list[ShardRef]:
        """Shards of ``split`` in time order (day, then shard number)."""
        if split not in SPLITS:
            raise InputError(f"split={split!r} must be one of {', '.join(SPLITS)}")
        if split not in self._shards:
            self._shards[split] = (self._zarr_shards(split) if self.fmt == "zarr"
                                   else self._npz_shards(split))
        return self._shards[split]

    def _npz_shards(self, split: str) -> list[ShardRef]:
        folder = self.root / split
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            match = _SHARD_NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), path))
        refs = []
        for day, shard, path in sorted(found):
            steps = _npz_array_shape(path, self.variables[0])[0]
            refs.append(ShardRef(split, day, shard, path, 0, steps))
        return refs

    def _zarr_shards(self, split: str) -> list[ShardRef]:
        group = self._group()
        if split not in group:
            return []
        attrs = dict(group[split].attrs)
        per_day, per_shard = int(attrs["steps_per_day"]), int(attrs["steps_per_shard"])
        refs = []
        for i in range(int(attrs["n_days"])):
            for k in range(int(attrs["num_shards"])):
                start = i * per_day + k * per_shard
                refs.append(ShardRef(split, int(attrs["first_day"]) + i, k, None, start,
                                     start + per_shard))
        return refs

    def load(self, ref: ShardRef) -> np.ndarray:
        """A shard's fields ``(steps, vars, ny, nx)`` in K, in the data's dtype."""
        if self.fmt == "zarr":
            group = self._group()[ref.split]
            return np.stack([np.asarray(group[v][ref.start:ref.stop]) for v in self.variables],
                            axis=1)
        with np.load(ref.path) as npz:
            missing = [v for v in self.variables if v not in npz.files]
            if missing:
                raise InputError(f"{ref.path} lacks {missing}; it holds {npz.files}")
            return np.concatenate([npz[v].reshape(npz[v].shape[0], -1, *npz[v].shape[-2:])
                                   for v in self.variables], axis=1)

    def climatology(self, split: str) -> np.ndarray:
        """Time-mean fields of ``split``: ``(vars, ny, nx)`` in K."""
        if split not in SPLITS:
            raise InputError(f"split={split!r} must be one of {', '.join(SPLITS)}")
        if self.fmt == "zarr":
            group = self._group()[split]
            return np.stack([np.asarray(group[f"climatology_{v}"][:]) for v in self.variables])
        path = self.root / split / "climatology.npz"
        if not path.is_file():
            raise InputError(f"{path} is missing")
        with np.load(path) as npz:
            return np.concatenate([npz[v].reshape(-1, *npz[v].shape[-2:]) for v in self.variables])


def open_shards(root: str | os.PathLike, variables: Sequence[str] | None = None) -> ShardCatalog:
    """Describe a shard root (kit output in either format, or a published ClimaX-layout set).

    Parameters
    ----------
    root : path-like
        Directory holding ``normalize_mean.npz`` (+ ``train/`` ...) or ``data.zarr``.
    variables : sequence of str or None
        Channels to read, in order (default: all, in the stored order).

    Returns
    -------
    ShardCatalog
    """
    return ShardCatalog(root, variables)


# --------------------------------------------------------------------------- samples


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
                        else open_shards(root, variables))
        self.split = split
        self.shard_refs = self.catalog.shards(split)
        if not self.shard_refs:
            raise InputError(f"split {split!r} of {self.catalog.root} holds no shards")
        self.min_lead, self.max_lead = _lead_range(lead_steps)
        shortest = min(ref.steps for ref in self.shard_refs)
        if self.max_lead >= shortest:
            raise InputError(f"lead_steps={lead_steps!r} reaches past the end of shards of "
                             f"{shortest} steps: the longest lead must be < {shortest}")
        hours = hours_per_step if hours_per_step is not None else self.catalog.hours_per_step
        if hours is None or not hours > 0:
            raise InputError("hours_per_step is unknown for this root (no manifest.json): pass "
                             "hours_per_step=<hours between consecutive steps>")
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
