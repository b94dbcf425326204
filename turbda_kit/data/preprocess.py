"""Nature run → training shards with statistics, serial or MPI-parallel: the driver.

:func:`preprocess` runs the paper's two stages over modules that each hold one job:

1. **Split** (only with ``via_chunks=True``): :mod:`turbda_kit.data.chunking` cuts the
   nature run into raw chunk files. By default this stage is skipped and each rank reads
   its days straight from the nature run (:mod:`turbda_kit.data.readers`), so the data
   moves once.
2. **Shard** whole days into the ClimaX ``nc2np`` layout or one zarr store
   (:mod:`turbda_kit.data.writers`), each rank a contiguous block of days, through
   :class:`~turbda_kit.data.day_pipeline.DayPipeline` (the next day is read while worker
   threads write the shards and reduce the day). The statistics are reduced over a fixed
   tree of days (:func:`turbda_kit.parallel.mpi.tree_reduce`), so serial and parallel
   runs give bit-identical shards *and* statistics.

The root's ``manifest.json`` (:mod:`turbda_kit.data.manifest`) records the settings;
a rerun with other settings is refused, the same call resumes a killed run. The settings
of a run are one frozen :class:`PreprocessSettings`; :func:`preprocess` builds it from
its keyword arguments and calls :func:`run_preprocess`.

A "day" is ``floor(time / 86400 s)`` with ``time`` in seconds since the run's time zero.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import write_json
from ..parallel.mpi import abort_on_exception, block_range, get_comm, tree_reduce
from ..progress import progress_bar
from .chunking import CHUNK_DIR, ChunkReader, Hook, split_nature_run
from .day_pipeline import DayPipeline, StageClock
from .day_statistics import DayStatistics
from .manifest import MANIFEST_NAME, check_root, manifest_record, settings_record
from .readers import NatureRunInfo, NatureRunReader, inspect_nature_run
from .splits import SPLITS, SplitDays, variable_names
from .validation import check_positive_int
from .writers import FORMATS, ShardPlan, ShardWriter, shard_writer

__all__ = ["PIPELINE_WORKERS", "PreprocessSettings", "PreprocessSummary", "preprocess",
           "run_preprocess"]

# Default threads per rank that write shards and compute statistics while the rank reads.
PIPELINE_WORKERS = 2


@dataclass(frozen=True)
class PreprocessSettings:
    """What a preprocessing run makes, validated: the arguments of :func:`preprocess`.

    Attributes
    ----------
    nature_path : Path
        Nature run (``.nc`` or ``.zarr``) with ``variable (time, z, y, x)`` in K.
    root : Path
        Output directory, resolved (new, empty, or a previous run's with these settings).
    split_days : SplitDays
        Train / val / test day boundaries.
    steps_per_file : int
        Output times per stage-1 chunk file (used with ``via_chunks``; recorded either way).
    num_shards : int
        Shards per day; must divide the output times per day.
    fmt : {"npz", "zarr"}
        ClimaX ``.npz`` shards, or one zarr store ``data.zarr``.
    variable : str
        Source variable.
    name : str
        Output variable prefix: arrays are named ``{name}_{level in m}``.
    levels : tuple of float or None
        ``z`` levels (m) to keep (None: all).
    via_chunks : bool
        Run stage 1 and build the shards from its chunk files.
    keep_chunks : bool
        Keep ``{root}/chunks`` after success.
    workers : int
        Threads per rank that write shards and compute statistics.
    """

    nature_path: Path
    root: Path
    split_days: SplitDays
    steps_per_file: int
    num_shards: int
    fmt: str = "npz"
    variable: str = "theta"
    name: str = "sqg"
    levels: tuple[float, ...] | None = None
    via_chunks: bool = False
    keep_chunks: bool = False
    workers: int = PIPELINE_WORKERS

    def __post_init__(self) -> None:
        if not isinstance(self.via_chunks, (bool, np.bool_)):
            raise InputError(f"via_chunks={self.via_chunks!r} must be True or False")
        if self.fmt not in FORMATS:
            raise InputError(f"fmt={self.fmt!r} must be one of {', '.join(FORMATS)}")
        check_positive_int("steps_per_file", self.steps_per_file)
        check_positive_int("num_shards", self.num_shards)
        check_positive_int("workers", self.workers)
        if not isinstance(self.name, str) or not self.name or "_" in self.name:
            raise InputError(f"name={self.name!r} must be a non-empty string without '_' "
                             "(arrays are named {name}_{level})")
        if not isinstance(self.split_days, SplitDays):
            raise InputError(f"split_days must be a SplitDays, got "
                             f"{type(self.split_days).__name__}")
        object.__setattr__(self, "nature_path", Path(self.nature_path))
        object.__setattr__(self, "root", Path(self.root).resolve())
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(float(z) for z in self.levels))


@dataclass(frozen=True)
class PreprocessSummary:
    """What :func:`preprocess` did (counts summed over ranks).

    Attributes
    ----------
    root : Path
        Output root.
    fmt : str
        ``"npz"`` or ``"zarr"``.
    variables : list of str
        Output variable names, in channel order.
    chunks_written, chunks_skipped : int
        Stage 1 chunk files written / found complete.
    days_written, days_skipped : int
        Stage 2 days whose shards were written / found complete.
    already_complete : bool
        The root was complete and nothing was done.
    wall_seconds : float
        Wall time on rank 0.
    stage_seconds : dict of str to float
        Where rank 0's wall time went: ``mpi`` (start-up of MPI and waiting in
        collectives), ``inspect`` (layout checks and fingerprint), ``split`` (stage 1,
        with ``via_chunks``), ``verify`` (checking existing shards), ``read`` (the
        next day, while the previous one is processed), ``statistics`` and ``write``
        (shards): seconds summed over the threads that do them
        (:class:`~turbda_kit.data.day_pipeline.DayPipeline`), so the stages overlap and
        can add up to more than the wall time; ``finalize``
        (statistics files, manifest, chunk removal). The rest (manifest, the statistics
        tree's gather) is not itemised. Empty for an already complete root.
    """

    root: Path
    fmt: str
    variables: list[str]
    chunks_written: int
    chunks_skipped: int
    days_written: int
    days_skipped: int
    already_complete: bool
    wall_seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


def preprocess(nature_path: str | os.PathLike, root: str | os.PathLike, start_train_day: int,
               start_val_day: int, start_test_day: int, end_day: int, steps_per_file: int,
               num_shards: int, fmt: str = "npz", comm: Any | None = None, *,
               variable: str = "theta", name: str = "sqg",
               levels: Sequence[float] | None = None, via_chunks: bool = False,
               keep_chunks: bool = False, hook: Hook | None = None,
               workers: int = PIPELINE_WORKERS) -> PreprocessSummary:
    """Turn a nature run into training shards with statistics; serial or under MPI.

    Parameters
    ----------
    nature_path : path-like
        Nature run (``.nc`` or ``.zarr``) with ``variable (time, z, y, x)`` in K.
    root : path-like
        Output directory (new, empty, or a previous run's with the same settings).
    start_train_day, start_val_day, start_test_day, end_day : int
        Split boundaries in days since the start of output; ``end_day`` exclusive. All
        days used must be complete in the nature run.
    steps_per_file : int
        Output times per stage-1 chunk file (used with ``via_chunks``; recorded in the
        manifest either way).
    num_shards : int
        Shards per day; must divide the number of output times per day.
    fmt : {"npz", "zarr"}
        ClimaX ``.npz`` shards, or one zarr store ``data.zarr``.
    comm : communicator or None
        mpi4py communicator; default COMM_WORLD under a parallel launch, else serial.
    variable : str
        Source variable.
    name : str
        Output variable prefix: arrays are named ``{name}_{level in m}``.
    levels : sequence of float or None
        ``z`` levels (m) to keep (default all).
    via_chunks : bool
        Run stage 1 (:func:`~turbda_kit.data.chunking.split_nature_run`) and build the
        shards from its chunk files, the paper's two-stage pipeline. By default (False)
        each rank reads its own days straight from the nature run, which every rank opens
        anyway: the data then moves once instead of twice. Both give byte-identical shards
        and statistics, and a root started one way may be resumed the other.
    keep_chunks : bool
        Keep ``{root}/chunks`` after success (removed by default).
    workers : int
        Threads per rank that write the shards and compute the statistics while the
        rank reads the next day (:class:`~turbda_kit.data.day_pipeline.DayPipeline`).
        The output does not depend on it. 2 suits 2 cores per rank; give more where
        ranks have more cores (e.g. ``srun -c 7``).
    hook : callable or None
        ``hook(stage, index)`` after each chunk (``"chunk"``, only with ``via_chunks``)
        and day (``"day"``) this rank completes; for progress or fault-injection tests.

    Returns
    -------
    PreprocessSummary

    Raises
    ------
    InputError
        Bad layout or parameters, days outside the run, a root holding other data, an
        unreadable (truncated, damaged) nature run or manifest.

    Examples
    --------
    >>> preprocess("nature_sqg.nc", "shards", 0, 20, 25, 30,  # doctest: +SKIP
    ...            steps_per_file=24, num_shards=2)
    """
    settings = PreprocessSettings(
        nature_path, root, SplitDays(start_train_day, start_val_day, start_test_day, end_day),
        steps_per_file, num_shards, fmt, variable, name,
        None if levels is None else tuple(levels), via_chunks, keep_chunks, workers)
    return run_preprocess(settings, comm, hook)


def run_preprocess(settings: PreprocessSettings, comm: Any | None = None,
                   hook: Hook | None = None) -> PreprocessSummary:
    """Run preprocessing as ``settings`` say; see :func:`preprocess` for the stages.

    Parameters
    ----------
    settings : PreprocessSettings
    comm : communicator or None
        mpi4py communicator; default COMM_WORLD under a parallel launch, else serial.
    hook : callable or None
        ``hook(stage, index)`` after each chunk and day this rank completes.

    Returns
    -------
    PreprocessSummary
    """
    start = time.monotonic()
    clock = StageClock()
    with clock("mpi"):
        comm = get_comm(comm)
    rank = comm.Get_rank()
    with clock("inspect"):
        info = inspect_nature_run(settings.nature_path, settings.variable, settings.levels)
    if info.steps_per_day % settings.num_shards:
        raise InputError(f"num_shards={settings.num_shards} must divide the "
                         f"{info.steps_per_day} output times per day (dt = {info.dt_seconds} s)")
    split_days = settings.split_days
    first_indices = {day: info.day_start_index(day) for day in split_days.all_days}
    names = variable_names(settings.name, info.levels)
    record = settings_record(info, split_days, settings.steps_per_file, settings.num_shards,
                             settings.fmt, settings.name, names)
    plan = ShardPlan(settings.root, info, split_days, settings.steps_per_file,
                     settings.num_shards, names, record)
    writer = shard_writer(plan, settings.fmt)
    with clock("mpi"):
        complete = _claim_root(comm, plan, writer)
    if complete:
        return PreprocessSummary(settings.root, settings.fmt, names, 0, 0, 0, 0, True,
                                 time.monotonic() - start)

    with abort_on_exception(comm):
        chunk_counts = {"written": 0, "skipped": 0}
        if settings.via_chunks:
            # Stage 1: only the chunks that hold days we use.
            t_first = first_indices[split_days.start_train_day]
            t_stop = first_indices[split_days.end_day - 1] + info.steps_per_day
            needed = range(t_first // settings.steps_per_file,
                           -(-t_stop // settings.steps_per_file))
            with clock("split"):
                chunk_counts = split_nature_run(settings.nature_path, settings.root,
                                                settings.steps_per_file, list(needed), comm,
                                                info, hook)
        if rank == 0:
            writer.prepare()
        with clock("mpi"):
            comm.barrier()  # every chunk and the output template exist before stage 2

        loader = _DayLoader(settings, info, writer, first_indices, clock)
        stats = _shard_days(plan, writer, loader, comm, clock, settings.workers, hook)
        with clock("mpi"):
            days_written = int(comm.allreduce(loader.written))
            days_skipped = int(comm.allreduce(loader.skipped))
        with clock("finalize"):
            if rank == 0:
                _finalize(settings, plan, writer, stats)
        with clock("mpi"):
            comm.barrier()
    return PreprocessSummary(settings.root, settings.fmt, names, chunk_counts["written"],
                             chunk_counts["skipped"], days_written, days_skipped, False,
                             time.monotonic() - start, clock.seconds)


def _claim_root(comm: Any, plan: ShardPlan, writer: ShardWriter) -> bool:
    """Whether the root is already complete; else mark it running. Rank 0 decides, every
    rank raises the same InputError if the root is refused."""
    verdict: tuple[str | None, bool] = (None, False)
    if comm.Get_rank() == 0:
        error, manifest = check_root(plan.root, plan.settings)
        complete = (error is None and manifest is not None
                    and manifest.get("status") == "complete"
                    and all(p.exists() for p in writer.expected_files()))
        if error is None and not complete:
            write_json(plan.root / MANIFEST_NAME,
                       manifest_record(plan.settings, plan.info, plan.split_days, "running"))
        verdict = (error, complete)
    error, complete = comm.bcast(verdict, root=0)
    if error is not None:
        raise InputError(error)
    return bool(complete)


class _DayLoader:
    """The pipeline's ``load``: a day from its verified shards, else read from the source.

    The source (the nature run, or the chunks with ``via_chunks``) is opened on first
    use, so a fully resumed rank never opens it.
    """

    def __init__(self, settings: PreprocessSettings, info: NatureRunInfo, writer: ShardWriter,
                 first_indices: dict[int, int], clock: StageClock):
        self.settings, self.info, self.writer = settings, info, writer
        self.first_indices, self.clock = first_indices, clock
        self.written = self.skipped = 0
        self._reader: ChunkReader | NatureRunReader | None = None

    def __call__(self, split: str, day: int, buffer: np.ndarray) -> tuple[np.ndarray, bool]:
        with self.clock("verify"):
            data = self.writer.read_verified(split, day)
        if data is not None:
            self.skipped += 1
            return data, False
        if self._reader is None:
            self._reader = (ChunkReader(self.settings.root, self.info,
                                        self.settings.steps_per_file)
                            if self.settings.via_chunks
                            else NatureRunReader(self.settings.nature_path, self.info))
        first = self.first_indices[day]
        self.written += 1
        return self._reader.read(first, first + self.info.steps_per_day, out=buffer), True

    def close(self) -> None:
        """Close the source, if it was opened."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _owned_days(split_days: SplitDays, rank: int, size: int) -> dict[str, range]:
    """Per split, the positions of the days this rank owns (one contiguous block overall)."""
    all_days = list(split_days.all_days)
    mine = {all_days[i] for i in block_range(len(all_days), rank, size)}
    owned = {}
    for split in SPLITS:
        days = split_days.days(split)
        positions = [i for i, d in enumerate(days) if d in mine]
        owned[split] = range(positions[0], positions[-1] + 1) if positions else range(0)
    return owned


def _shard_days(plan: ShardPlan, writer: ShardWriter, loader: _DayLoader, comm: Any,
                clock: StageClock, workers: int, hook: Hook | None) -> dict[str, DayStatistics]:
    """Stage 2: this rank's days through the pipeline; statistics over the tree of days."""
    rank, size = comm.Get_rank(), comm.Get_size()
    split_days = plan.split_days
    owned = _owned_days(split_days, rank, size)
    # tree_reduce asks for its leaves in increasing order, split after split.
    order = [(split, split_days.days(split)[i]) for split in SPLITS for i in owned[split]]
    # Only the training split's spread is used (normalize_std); the others need means.
    pipeline = DayPipeline(order, loader, writer.write_tasks, lambda split: split == "train",
                           (plan.info.steps_per_day, len(plan.names), *plan.info.grid_shape),
                           plan.info.dtype, clock, workers=workers)
    bar = progress_bar(len(order), desc=f"shard (rank 0 of {size})", enabled=rank == 0)

    def leaf_for(split: str) -> Callable[[int], DayStatistics]:
        days = split_days.days(split)

        def leaf(i: int) -> DayStatistics:
            day_stats = pipeline.statistics(split, days[i])
            if hook is not None:
                hook("day", days[i])
            bar.update(1)
            return day_stats

        return leaf

    stats: dict[str, DayStatistics] = {}
    try:
        for split in SPLITS:
            stats[split] = tree_reduce(len(split_days.days(split)), leaf_for(split),
                                       DayStatistics.combine, comm, owned=owned[split])
    finally:
        pipeline.close()
        bar.close()
        loader.close()
    return stats


def _finalize(settings: PreprocessSettings, plan: ShardPlan, writer: ShardWriter,
              stats: dict[str, DayStatistics]) -> None:
    """Rank 0: statistics files, the complete manifest, chunk removal."""
    writer.finalize(stats)
    train = stats["train"].scalar
    manifest = manifest_record(plan.settings, plan.info, plan.split_days, "complete")
    manifest["statistics"] = {
        "normalize_mean": dict(zip(plan.names, train.mean.tolist())),
        "normalize_std": dict(zip(plan.names, train.std().tolist())),
        "train_values_per_variable": train.count,
    }
    write_json(plan.root / MANIFEST_NAME, manifest)
    if not settings.keep_chunks:
        shutil.rmtree(plan.root / CHUNK_DIR, ignore_errors=True)
