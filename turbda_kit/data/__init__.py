"""Nature runs, preprocessing into training shards, datasets (xarray in, xarray out).

Modules, by job:

=====================  ================================================================
``nature``             SQG nature runs: spin-up, streaming output, resume
``lorenz96_problem``   Lorenz-96 twin-experiment problems (truth and observation draws)
``time_axis``          the nature runs' CF time axis, read back as seconds
``readers``            a nature run's layout and fields (:func:`inspect_nature_run`)
``chunking``           stage 1: raw chunk files of the nature run
``writers``            stage 2: ClimaX ``.npz`` shards or one zarr store
``manifest``           the root's ``manifest.json`` (settings guard)
``preprocess``         the driver (:func:`preprocess`, :class:`PreprocessSettings`)
``day_pipeline``       one rank's days: read ‖ write ‖ statistics
``day_statistics``     exact per-day statistics, combinable over days and ranks
``npz``                fast ``.npz`` writing, checked reading
``shards``             a shard root described (:func:`open_shards`)
``normaliser``         the one :class:`Normaliser` and :func:`read_normaliser`
``datasets``           :class:`ForecastShards`, :class:`ForecastSamples`,
                       :class:`TrajectoryPairs`
=====================  ================================================================

Every public name of these modules (their ``__all__``) is importable from
``turbda_kit.data``. The modules that import torch (``datasets``, ``nature``,
``lorenz96_problem``) are loaded on first use of one of their names, so that
preprocessing ranks, which never need torch, start in a fraction of a second.
``turbda_kit.data.preprocess`` is the function; import the module's other names from
``turbda_kit.data.preprocess`` with ``from ... import``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .chunking import (
    CHUNK_DIR,
    ChunkReader,
    chunk_bounds,
    chunk_is_valid,
    chunk_meta_path,
    chunk_path,
    split_nature_run,
)
from .day_pipeline import (
    DayPipeline,
    StageClock,
    row_blocks,
)
from .day_statistics import (
    DayStatistics,
    field_moments,
)
from .manifest import (
    LAYOUT_VERSION,
    MANIFEST_NAME,
    check_root,
    manifest_record,
    read_manifest,
    settings_record,
)
from .normaliser import (
    Normaliser,
    denormalise,
    normalise,
    read_normaliser,
)
from .npz import (
    CRC_SOURCE,
    crc32,
    npz_member_shape,
    npz_members,
    read_npz,
    save_npy,
    save_npz,
)
from .preprocess import (
    PIPELINE_WORKERS,
    PreprocessSettings,
    PreprocessSummary,
    preprocess,
    run_preprocess,
)
from .readers import (
    NATURE_RUN_DIMS,
    NatureRunInfo,
    NatureRunReader,
    inspect_nature_run,
)
from .shards import (
    ShardCatalog,
    ShardRef,
    open_shards,
)
from .splits import (
    SECONDS_PER_DAY,
    SPLITS,
    SplitDays,
    variable_names,
)
from .time_axis import (
    SECOND_UNITS,
    TIME_CALENDAR,
    TIME_REFERENCE,
    TIME_UNITS,
    seconds_from_stored,
    time_attrs,
    time_in_seconds,
    time_seconds,
)
from .validation import (
    check_positive_int,
    unreadable_file,
)
from .writers import (
    FORMATS,
    ZARR_STORE,
    NpzShardWriter,
    ShardPlan,
    ShardWriter,
    ZarrShardWriter,
    shard_path,
    shard_writer,
)

# Names of the modules that import torch, loaded when first asked for.
_LAZY = {
    "ForecastSamples": "datasets",
    "ForecastShards": "datasets",
    "TrajectoryPairs": "datasets",
    "partition": "datasets",
    "Lorenz96Problem": "lorenz96_problem",
    "generate_lorenz96_problem": "lorenz96_problem",
    "initial_truth": "lorenz96_problem",
    "observation_noise": "lorenz96_problem",
    "write_lorenz96_problem": "lorenz96_problem",
    "FORMAT_SUFFIXES": "nature",
    "nature_paths": "nature",
    "sqg_nature_run": "nature",
}

__all__ = [
    "CHUNK_DIR", "CRC_SOURCE", "ChunkReader", "DayPipeline", "DayStatistics", "FORMATS",
    "FORMAT_SUFFIXES", "ForecastSamples", "ForecastShards", "LAYOUT_VERSION", "Lorenz96Problem",
    "MANIFEST_NAME", "NATURE_RUN_DIMS", "NatureRunInfo", "NatureRunReader", "Normaliser",
    "NpzShardWriter", "PIPELINE_WORKERS", "PreprocessSettings", "PreprocessSummary",
    "SECONDS_PER_DAY", "SECOND_UNITS", "SPLITS", "ShardCatalog", "ShardPlan", "ShardRef",
    "ShardWriter", "SplitDays", "StageClock", "TIME_CALENDAR", "TIME_REFERENCE", "TIME_UNITS",
    "TrajectoryPairs", "ZARR_STORE", "ZarrShardWriter", "check_positive_int", "check_root",
    "chunk_bounds", "chunk_is_valid", "chunk_meta_path", "chunk_path", "crc32", "denormalise",
    "field_moments", "generate_lorenz96_problem", "initial_truth", "inspect_nature_run",
    "manifest_record", "nature_paths", "normalise", "npz_member_shape", "npz_members",
    "observation_noise", "open_shards", "partition", "preprocess", "read_manifest",
    "read_normaliser", "read_npz", "row_blocks", "run_preprocess", "save_npy", "save_npz",
    "seconds_from_stored", "settings_record", "shard_path", "shard_writer", "split_nature_run",
    "sqg_nature_run", "time_attrs", "time_in_seconds", "time_seconds", "unreadable_file",
    "variable_names", "write_lorenz96_problem",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
