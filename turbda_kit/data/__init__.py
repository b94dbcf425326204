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

Every public name below is importable from ``turbda_kit.data``. The modules that import
torch (``datasets``, ``nature``, ``lorenz96_problem``) are loaded on first use of one of
their names, so that preprocessing ranks, which never need torch, start in a fraction of
a second.
"""

from __future__ import annotations

import importlib
from typing import Any

from .chunking import ChunkReader, chunk_is_valid, chunk_meta_path, chunk_path, split_nature_run
from .day_pipeline import DayPipeline, StageClock
from .day_statistics import DayStatistics, field_moments
from .manifest import read_manifest
from .normaliser import Normaliser, denormalise, normalise, read_normaliser
from .npz import read_npz, save_npz
from .preprocess import PreprocessSettings, PreprocessSummary, preprocess, run_preprocess
from .readers import NatureRunInfo, NatureRunReader, inspect_nature_run
from .shards import ShardCatalog, ShardRef, open_shards
from .splits import SPLITS, SplitDays, variable_names
from .time_axis import TIME_CALENDAR, TIME_REFERENCE, TIME_UNITS, time_attrs, time_seconds
from .writers import shard_path

# Names of the modules that import torch, loaded when first asked for.
_LAZY = {
    "ForecastSamples": "datasets", "ForecastShards": "datasets",
    "TrajectoryPairs": "datasets", "partition": "datasets",
    "sqg_nature_run": "nature", "nature_paths": "nature",
    "Lorenz96Problem": "lorenz96_problem",
    "generate_lorenz96_problem": "lorenz96_problem",
    "write_lorenz96_problem": "lorenz96_problem",
}

__all__ = [
    "SPLITS", "TIME_CALENDAR", "TIME_REFERENCE", "TIME_UNITS", "ChunkReader", "DayPipeline",
    "DayStatistics", "NatureRunInfo", "NatureRunReader", "Normaliser", "PreprocessSettings",
    "PreprocessSummary", "ShardCatalog", "ShardRef", "SplitDays", "StageClock",
    "chunk_is_valid", "chunk_meta_path", "chunk_path", "denormalise", "field_moments",
    "inspect_nature_run", "normalise", "open_shards", "preprocess", "read_manifest",
    "read_normaliser", "read_npz", "run_preprocess", "save_npz", "shard_path",
    "split_nature_run", "time_attrs", "time_seconds", "variable_names", *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
