"""Find and load saved results (for the figure notebooks), with clear errors when one is missing.

The figures never recompute anything: they read what the experiment notebooks wrote.
Reading results is part of running experiments, not of drawing: this module imports
nothing from :mod:`turbda_kit.viz`, and the plot builders import nothing from here.

===================  ============================================  =========================
What                 Written by                                    File names looked for
===================  ============================================  =========================
cycling runs         ``notebooks/05_da_cycling``                   ``cycling_<filter>.nc``
coupled runs         ``notebooks/06_coupled_vit_ensf``             ``coupled_<experiment>.nc``
ensemble members     the same, with ``save_members``               ``<run file stem>_members.nc``
                                                                   (or ``.zarr``)
EnSF scaling         ``notebooks/04_ensf_scaling``                 ``scaling_<mode>.nc``
ViT training         :func:`turbda_kit.surrogate.training.train`    ``metrics.csv`` (+ the
                     (``03_train_vit`` puts it in ``training/``)   checkpoint's settings)
===================  ============================================  =========================

A *run directory* given to a figure is searched together with its immediate
subdirectories, so a pipeline directory (``<pipeline>/05_da_cycling/...``) works as well
as a single stage's run directory. Relative paths are taken from the current directory
(a notebook under ``turbda run`` runs in its own run directory) and, failing that, from
the directory the command was started in (``$PWD``).

Every lookup that fails raises :class:`~turbda_kit.errors.InputError` naming what is
missing, where it looked and what it found instead.

Example
-------
>>> paths = find_runs(["runs/coupled"], runs=["vit_ensf", "sqg_letkf"])   # doctest: +SKIP
>>> datasets = load_runs(paths, require=("rmse_analysis", "time_hours"))  # doctest: +SKIP
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..io import open_dataset
from .comparison import SUMMARY_NAME
from .scaling import combine_scaling

__all__ = [
    "DATASET_SUFFIXES",
    "MEANS_VARIABLES",
    "RUN_PREFIXES",
    "SCALING_MODES",
    "TrainingRun",
    "as_json",
    "default_run_dirs",
    "find_runs",
    "find_scaling",
    "find_training_runs",
    "grid_km",
    "load_runs",
    "members_path",
    "open_members",
    "rank_histogram_summary",
    "resolve_input_path",
    "search_dirs",
    "select_cycles",
    "spinup_cycles",
    "spread_skill_summary",
    "throughput_table",
]

RUN_PREFIXES = ("coupled", "cycling")
"""File-name prefixes of per-run result Datasets: ``<prefix>_<run name>.nc``."""
DATASET_SUFFIXES = (".nc", ".zarr")
SCALING_MODES = ("strong", "weak")
MEANS_VARIABLES = ("truth", "forecast_mean", "analysis_mean")
MEMBERS_SUFFIX = "_members"
"""A run's member file is its result file's stem with this suffix (``cycling_letkf_members.nc``)."""

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------
# Paths


def resolve_input_path(path: PathLike, what: str = "path") -> Path:
    """An existing path: absolute as given; relative from where the user started.

    Under ``turbda run`` a notebook's working directory is its run directory (it holds
    ``run.json``), so a relative path is first taken from the directory the command was
    started in (``$PWD``, inherited by the kernel), then from the working directory;
    elsewhere (an interactive kernel) the other way round.

    Parameters
    ----------
    path : path-like
        A user-given file or directory.
    what : str
        How to name it in the error message (e.g. ``"run_dirs entry"``).

    Raises
    ------
    InputError
        Nothing exists at any of the candidate locations (all are named).
    """
    given = Path(os.path.expanduser(str(path)))
    if given.is_absolute():
        candidates = [given]
    else:
        cwd = Path.cwd()
        candidates = [cwd / given]
        launch_dir = os.environ.get("PWD")
        if launch_dir and Path(launch_dir).resolve() != cwd.resolve():
            in_run_dir = (cwd / "run.json").is_file()
            candidates.insert(0 if in_run_dir else 1, Path(launch_dir) / given)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    looked = " or ".join(str(c) for c in candidates)
    raise InputError(f"{what} {str(path)!r} does not exist (looked at {looked}): give an "
                     "existing path, preferably absolute")


def default_run_dirs(run_dirs: Sequence[PathLike], out_dir: PathLike) -> list[Path]:
    """``run_dirs`` resolved, or ``[parent of out_dir]`` when it is empty.

    The default suits a figure run as a pipeline stage: its run directory's parent is the
    pipeline directory holding the experiment stages.
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    if not run_dirs:
        return [Path(out_dir).resolve().parent]
    return [resolve_input_path(d, "run_dirs entry") for d in run_dirs]


def search_dirs(run_dirs: Sequence[PathLike]) -> list[Path]:
    """Each directory followed by its immediate subdirectories (sorted, hidden ones skipped).

    Raises
    ------
    InputError
        An entry is missing or is not a directory.
    """
    found: list[Path] = []
    for entry in run_dirs:
        directory = resolve_input_path(entry, "run_dirs entry")
        if not directory.is_dir():
            raise InputError(f"run_dirs entry {str(entry)!r} is a file ({directory}), not a run "
                             "directory: pass its directory, or give the file in `files`")
        found.append(directory)
        found += sorted(p for p in directory.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and p.suffix != ".zarr")
    return list(dict.fromkeys(found))


def _where(dirs: Sequence[Path]) -> str:
    roots = [d for d in dirs if not any(d.parent == r for r in dirs)]
    return ", ".join(str(r) for r in roots) + " (and their subdirectories)"


def _split_label(entry: str) -> tuple[str | None, str]:
    """``"label=path"`` → (label, path); ``"path"`` → (None, path)."""
    if "=" in entry:
        label, _, path = entry.partition("=")
        if label and "/" not in label and os.sep not in label:
            return label.strip(), path.strip()
    return None, entry


def _is_members_file(path: Path) -> bool:
    return path.name.removesuffix(path.suffix).endswith(MEMBERS_SUFFIX)


def _run_name(path: Path) -> str:
    stem = path.name.removesuffix(path.suffix)
    for prefix in RUN_PREFIXES:
        if stem.startswith(prefix + "_"):
            return stem[len(prefix) + 1:]
    return stem


# ---------------------------------------------------------------------------------------
# Cycling and coupled runs


def _diverged_note(dirs: Sequence[Path], name: str) -> str | None:
    """Where a run's ``summary.json`` (05_da_cycling, 06_coupled_vit_ensf) records that
    ``name`` diverged."""
    for directory in dirs:
        summary = directory / SUMMARY_NAME
        if not summary.is_file():
            continue
        try:
            entry = json.loads(summary.read_text()).get(name)
        except (ValueError, AttributeError):
            continue
        if isinstance(entry, dict) and "diverged_at_cycle" in entry:
            return f"it diverged at cycle {entry['diverged_at_cycle']} ({summary})"
    return None


def find_runs(run_dirs: Sequence[PathLike] = (), files: Sequence[str] = (),
              runs: Sequence[str] = (), prefixes: Sequence[str] = RUN_PREFIXES
              ) -> dict[str, Path]:
    """Result files of cycling/coupled runs, by run name.

    Parameters
    ----------
    run_dirs : sequence of path-like
        Directories searched (with their subdirectories) for ``<prefix>_<name>.nc`` (or
        ``.zarr``), e.g. ``coupled_vit_ensf.nc`` → run ``vit_ensf``.
    files : sequence of str
        Explicit result files, each ``path`` or ``label=path``; they take precedence over
        files of the same name found in ``run_dirs``.
    runs : sequence of str
        Run names wanted, in drawing order (``vit_ensf``, ``letkf``, or a full stem such as
        ``cycling_letkf``). Empty: every run found, sorted by name.
    prefixes : sequence of str
        File-name prefixes searched.

    Returns
    -------
    dict of str to Path
        Run name (or the label given in ``files``) to file. When ``runs`` is empty and a
        name occurs in several directories, each is keyed ``"<name> (<directory name>)"``.

    Raises
    ------
    InputError
        A directory or file does not exist; a wanted run is not found (the message names
        it, the file names tried, the directories searched and the runs that were found);
        a wanted run is found in several places; nothing is found at all.
    """
    if isinstance(runs, str):
        runs = [runs]
    if isinstance(files, str):
        files = [files]
    dirs = search_dirs(run_dirs)
    found: dict[str, list[Path]] = {}
    for directory in dirs:
        for prefix in prefixes:
            for suffix in DATASET_SUFFIXES:
                for path in sorted(directory.glob(f"{prefix}_*{suffix}")):
                    if _is_members_file(path):
                        continue
                    found.setdefault(_run_name(path), []).append(path)
                    found.setdefault(path.name.removesuffix(suffix), []).append(path)
    explicit: dict[str, Path] = {}
    for entry in files:
        label, raw = _split_label(str(entry))
        path = resolve_input_path(raw, "files entry")
        explicit[label or _run_name(path)] = path

    if runs:
        chosen: dict[str, Path] = {}
        for name in runs:
            if name in explicit:
                chosen[name] = explicit[name]
                continue
            paths = list(dict.fromkeys(found.get(name, [])))
            if not paths:
                diverged = _diverged_note(dirs, name)
                if diverged:
                    raise InputError(f"no results for run {name!r}: {diverged}, so no result "
                                     "file was written; drop it from runs or rerun it with "
                                     "other settings")
                tried = " or ".join(f"{p}_{name}.nc" for p in prefixes)
                known = sorted(set(explicit) | {_run_name(p) for ps in found.values() for p in ps})
                where = _where(dirs) if dirs else "nowhere (run_dirs is empty)"
                raise InputError(f"no results for run {name!r}: looked for {tried} in {where}"
                                 f"{' and in files' if files else ''}; runs found: "
                                 f"{', '.join(known) or 'none'}. Run the experiment notebook "
                                 "that writes it, or fix run_dirs/runs")
            if len(paths) > 1:
                raise InputError(f"run {name!r} is in several places: "
                                 f"{', '.join(str(p) for p in paths)}; pass the directory you "
                                 f"mean in run_dirs, or the file as files=['{name}=PATH']")
            chosen[name] = paths[0]
        return chosen

    by_name: dict[str, list[Path]] = {}
    for paths in found.values():
        for path in paths:
            if path not in by_name.setdefault(_run_name(path), []):
                by_name[_run_name(path)].append(path)
    chosen = {}
    for name in sorted(by_name):
        paths = by_name[name]
        if name in explicit:
            continue
        if len(paths) == 1:
            chosen[name] = paths[0]
        else:
            for path in paths:
                chosen[f"{name} ({path.parent.name})"] = path
    chosen.update(explicit)
    if not chosen:
        patterns = ", ".join(f"{p}_*.nc" for p in prefixes)
        raise InputError(f"no run results ({patterns}) in {_where(dirs) if dirs else 'run_dirs'}"
                         ": run 05_da_cycling / 06_coupled_vit_ensf first, or give run_dirs "
                         "or files")
    return chosen


def load_runs(paths: Mapping[str, PathLike], require: Sequence[str] = ()) -> dict[str, Any]:
    """Open result Datasets fully into memory (files are closed again).

    Parameters
    ----------
    paths : mapping of label to path
        From :func:`find_runs`.
    require : sequence of str
        Variables every Dataset must hold.

    Returns
    -------
    dict of str to xarray.Dataset

    Raises
    ------
    InputError
        A file cannot be read, or lacks a required variable (the message says which and,
        for the ensemble means, that the run was made without ``save_means``).
    """
    datasets = {}
    for label, path in paths.items():
        try:
            with open_dataset(path) as opened:
                ds = opened.load()
        except InputError:
            raise
        except Exception as err:  # netCDF/zarr readers raise many unrelated types
            raise InputError(f"cannot read run {label!r} from {path}: {err}") from err
        missing = [v for v in require if v not in ds.variables]
        if missing:
            hint = (" (the run was made without save_means: rerun it with save_means=True)"
                    if set(missing) & set(MEANS_VARIABLES) else "")
            raise InputError(f"run {label!r} ({path}) has no {', '.join(missing)}{hint}; it "
                             f"holds {', '.join(sorted(ds.data_vars))}")
        datasets[label] = ds
    return datasets


def members_path(run: PathLike | Any) -> Path | None:
    """The member file of a run (``<stem>_members.nc`` or ``.zarr`` beside its result
    file), or None when the run saved no members.

    Parameters
    ----------
    run : path-like or xarray.Dataset
        A run's result file, or its Dataset as :func:`load_runs` opened it (the file is
        found from ``ds.encoding["source"]`` and ``attrs["members_file"]``).
    """
    if isinstance(run, (str, os.PathLike)):
        path = Path(run)
        named = None
    else:
        source = getattr(run, "encoding", {}).get("source")
        named = getattr(run, "attrs", {}).get("members_file")
        if not source:
            return None
        path = Path(source)
    candidates = [path.with_name(str(named))] if named else []
    stem = path.name.removesuffix(path.suffix)
    candidates += [path.with_name(f"{stem}{MEMBERS_SUFFIX}{suffix}") for suffix in DATASET_SUFFIXES]
    return next((c for c in candidates if c.exists()), None)


def open_members(run: PathLike | Any, chunks: Mapping[str, int] | None = None):
    """Open a run's ensemble members lazily (dask), one cycle per chunk.

    Parameters
    ----------
    run : path-like or xarray.Dataset
        The member file itself, a run's result file, or a Dataset from :func:`load_runs`.
    chunks : mapping, optional
        Dask chunks (default ``{"cycle": 1}``).

    Returns
    -------
    xarray.Dataset
        ``forecast_ensemble`` and/or ``analysis_ensemble`` ``(cycle, member, *state)`` and
        ``truth`` ``(cycle, *state)``, CF-1.8 (decoded ``time``, ``x``/``y``/``z`` in m).
        Score it directly, e.g. ``xskillscore.crps_ensemble(ds.truth, ds.analysis_ensemble,
        dim=["z", "y", "x"])``.

    Raises
    ------
    InputError
        No member file (the run was made without ``save_members``), or an unfinished one.
    """
    path = Path(run) if isinstance(run, (str, os.PathLike)) else None
    if path is not None and _is_members_file(path):
        found: Path | None = path if path.exists() else None
    else:
        found = members_path(run)
    if found is None:
        where = path or getattr(run, "encoding", {}).get("source", "this Dataset")
        raise InputError(f"no ensemble members saved for {where}: rerun the experiment "
                         "notebook with save_members=both (or forecast / analysis)")
    try:
        ds = open_dataset(found, chunks=dict(chunks or {"cycle": 1}))
    except InputError:
        raise
    except Exception as err:  # netCDF/zarr readers raise many unrelated types
        raise InputError(f"cannot read the member file {found}: {err}") from err
    if ds.attrs.get("complete") != "true":
        ds.close()
        raise InputError(f"the member file {found} is not complete (its run was interrupted):"
                         " resume the run to finish it")
    return ds


def select_cycles(ds, cycles: Sequence[int]) -> list[int]:
    """Cycle numbers of ``ds`` for the requested ``cycles``.

    Parameters
    ----------
    ds : xarray.Dataset
        With a ``cycle`` coordinate (1 … n for the cycling engine).
    cycles : sequence of int
        Cycle numbers as in the coordinate; negative values count from the end
        (-1 is the last cycle).

    Raises
    ------
    InputError
        A cycle outside the run (the message gives the available range).
    """
    available = [int(c) for c in ds["cycle"].values]
    chosen = []
    for c in cycles:
        c = int(c)
        if c < 0 and -c <= len(available):
            chosen.append(available[c])
        elif c in available:
            chosen.append(c)
        else:
            raise InputError(f"cycle {c} is not in the run: it has cycles {available[0]}.."
                             f"{available[-1]} (negative values count from the end)")
    return chosen


def grid_km(ds) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Grid coordinates in km: from ``x``/``y`` coordinates in m (or km), else from the
    model's domain size ``L`` in ``attrs["model_settings"]``; ``(None, None)`` when unknown
    (index coordinates, units ``"1"``, are not distances)."""
    scale = {"m": 1e-3, "km": 1.0}
    if "x" in ds.coords and "y" in ds.coords and ds["x"].attrs.get("units") in scale:
        # An index coordinate (units "1": the grid's size was not known) is not a distance.
        factor = scale[ds["x"].attrs["units"]]
        return np.asarray(ds["x"].values) * factor, np.asarray(ds["y"].values) * factor
    settings = ds.attrs.get("model_settings")
    if isinstance(settings, str):
        try:
            settings = ast.literal_eval(settings)
        except (ValueError, SyntaxError):
            settings = None
    if isinstance(settings, dict) and "L" in settings and "x" in ds.sizes:
        n_x, n_y = ds.sizes["x"], ds.sizes.get("y", ds.sizes["x"])
        length_km = float(settings["L"]) / 1e3
        return np.arange(n_x) * length_km / n_x, np.arange(n_y) * length_km / n_y
    return None, None


def spinup_cycles(ds) -> int:
    """Leading cycles the run left out of its scores (``attrs["config_spinup_cycles"]``)."""
    return int(ds.attrs.get("config_spinup_cycles", 0))


def spread_skill_summary(ds, kind: str = "analysis", skip_spinup: bool = True
                         ) -> dict[str, float]:
    """Spread against error of a run, over its cycles.

    Parameters
    ----------
    ds : xarray.Dataset
        A cycling-engine Dataset (``rmse_<kind>``, ``spread_<kind>`` along ``cycle``,
        ``attrs["n_members"]``).
    kind : {"analysis", "forecast"}
    skip_spinup : bool
        Leave out the run's spin-up cycles.

    Returns
    -------
    dict
        ``rmse`` and ``spread``: root-mean-square over cycles (state units, K for SQG);
        ``ratio = spread / rmse``; ``ratio_corrected = ratio · sqrt((m + 1) / m)``, which is
        1 in expectation for a reliable ensemble of ``m`` members (see
        :mod:`turbda_kit.metrics`); ``n_cycles`` used.
    """
    if kind not in ("analysis", "forecast"):
        raise InputError(f"kind={kind!r}: choose 'analysis' or 'forecast'")
    start = spinup_cycles(ds) if skip_spinup else 0
    rmse = np.asarray(ds[f"rmse_{kind}"].values, dtype=np.float64)[start:]
    spread = np.asarray(ds[f"spread_{kind}"].values, dtype=np.float64)[start:]
    members = int(ds.attrs.get("n_members", 0))
    rms_rmse = float(np.sqrt(np.mean(rmse ** 2)))
    rms_spread = float(np.sqrt(np.mean(spread ** 2)))
    ratio = rms_spread / rms_rmse if rms_rmse > 0 else math.nan
    correction = math.sqrt((members + 1) / members) if members > 0 else math.nan
    return {"rmse": rms_rmse, "spread": rms_spread, "ratio": ratio,
            "ratio_corrected": ratio * correction, "n_cycles": int(rmse.size)}


def rank_histogram_summary(counts: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Flatness of a rank histogram.

    Parameters
    ----------
    counts : array of int, shape (m + 1,)
        Truth-rank counts (``rank_histogram`` of a run).

    Returns
    -------
    dict
        ``chi2_per_dof``: Pearson's χ² against the uniform histogram divided by its ``m``
        degrees of freedom (≈ 1 for a reliable ensemble sampled independently, 0 for an
        exactly flat one); ``outlier_ratio``: share of the two extreme ranks over its
        expected ``2 / (m + 1)`` (> 1: truth too often outside the ensemble, i.e.
        under-dispersive); ``total``: number of counts.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or np.any(counts < 0):
        raise InputError(f"counts must be a 1-D array of >= 2 non-negative counts, got shape "
                         f"{counts.shape}")
    total = float(counts.sum())
    if total == 0:
        return {"chi2_per_dof": math.nan, "outlier_ratio": math.nan, "total": 0.0}
    bins = counts.size
    expected = total / bins
    chi2 = float(np.sum((counts - expected) ** 2) / expected)
    outliers = (counts[0] + counts[-1]) / total
    return {"chi2_per_dof": chi2 / (bins - 1), "outlier_ratio": float(outliers * bins / 2),
            "total": total}


# ---------------------------------------------------------------------------------------
# EnSF scaling


def find_scaling(run_dirs: Sequence[PathLike] = (), files: Sequence[str] = (),
                 modes: Sequence[str] = ()) -> dict[str, Any]:
    """Scaling Datasets by mode, merged across jobs.

    Parameters
    ----------
    run_dirs : sequence of path-like
        Searched (with subdirectories) for ``scaling_strong.nc`` / ``scaling_weak.nc``.
    files : sequence of str
        Explicit scaling files (any name; the mode is read from their attributes).
    modes : sequence of {"strong", "weak"}
        Modes wanted; empty: every mode found.

    Returns
    -------
    dict of str to xarray.Dataset
        One Dataset per mode; several files of a mode (e.g. one per node count) are merged
        with :func:`turbda_kit.experiments.scaling.combine_scaling`. Each Dataset's
        ``attrs["figure_sources"]`` lists the files read.

    Raises
    ------
    InputError
        Unknown mode, a wanted mode not found (naming the file and the directories), no
        scaling result at all, or files that cannot be merged.
    """
    if isinstance(modes, str):
        modes = [modes]
    if isinstance(files, str):
        files = [files]
    bad = [m for m in modes if m not in SCALING_MODES]
    if bad:
        raise InputError(f"modes={list(modes)}: {bad} unknown; choose from {SCALING_MODES}")
    dirs = search_dirs(run_dirs)
    by_mode: dict[str, list[Path]] = {}
    for directory in dirs:
        for mode in SCALING_MODES:
            for suffix in DATASET_SUFFIXES:
                path = directory / f"scaling_{mode}{suffix}"
                if path.exists():
                    by_mode.setdefault(mode, []).append(path)
    for entry in files:
        _, raw = _split_label(str(entry))
        path = resolve_input_path(raw, "files entry")
        with open_dataset(path) as opened:
            mode = str(opened.attrs.get("mode", ""))
        if mode not in SCALING_MODES:
            raise InputError(f"{path} is not a scaling Dataset (attrs['mode']={mode!r}): give "
                             "files written by 04_ensf_scaling (scaling_<mode>.nc)")
        by_mode.setdefault(mode, []).append(path)
    wanted = list(modes) or [m for m in SCALING_MODES if m in by_mode]
    if not wanted:
        where = _where(dirs) if dirs else "files"
        raise InputError(f"no scaling results (scaling_strong.nc, scaling_weak.nc) in {where}: "
                         "run 04_ensf_scaling first, or give run_dirs or files")
    result = {}
    for mode in wanted:
        paths = list(dict.fromkeys(by_mode.get(mode, [])))
        if not paths:
            where = _where(dirs) if dirs else "nowhere (run_dirs is empty)"
            raise InputError(f"no {mode}-scaling results: looked for scaling_{mode}.nc in "
                             f"{where}; found modes: {', '.join(by_mode) or 'none'}. Run "
                             f"04_ensf_scaling with mode={mode} (or both), or drop {mode!r} "
                             "from modes")
        if len(paths) == 1:
            with open_dataset(paths[0]) as opened:
                ds = opened.load()
        else:
            ds = combine_scaling(paths)
        ds.attrs["figure_sources"] = "; ".join(str(p) for p in paths)
        result[mode] = ds
    return result


# ---------------------------------------------------------------------------------------
# ViT training throughput


@dataclass
class TrainingRun:
    """The metrics of one training run and the settings that explain them.

    Attributes
    ----------
    path : Path
        The trainer's output directory (holding ``metrics.csv``).
    strategy : str
        ``none``, ``ddp``, ``fsdp`` or ``deepspeed``.
    devices : int
        World size (ranks, one device each).
    details : dict
        ``precision``, ``zero_stage``, ``sharding``, ``batch_size``, ``model`` (ViT preset
        name) when known.
    rows : list of dict
        The ``kind == "train"`` rows of ``metrics.csv`` (numbers parsed).
    """

    path: Path
    strategy: str
    devices: int
    details: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def strategy_label(self) -> str:
        """``ddp``, ``fsdp FULL_SHARD``, ``deepspeed ZeRO-2``, ``single process`` …"""
        if self.strategy == "none":
            return "single process"
        if self.strategy == "deepspeed" and self.details.get("zero_stage") is not None:
            return f"deepspeed ZeRO-{self.details['zero_stage']}"
        if self.strategy == "fsdp" and self.details.get("sharding"):
            return f"fsdp {self.details['sharding']}"
        return self.strategy


def _number(text: str) -> Any:
    if text == "" or text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as stream:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(stream)]
    return [r for r in rows if r.get("kind") == "train"]


def _training_settings(train_dir: Path) -> tuple[dict[str, Any], int] | None:
    """(train_config, world_size) from the trainer's last checkpoint, else the stage's
    ``scores.json`` (03_train_vit writes it beside ``training/``)."""
    pointer = train_dir / "checkpoints" / "latest.json"
    if pointer.is_file():
        state_file = train_dir / "checkpoints" / json.loads(pointer.read_text())["name"] \
            / "trainer_state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            config = dict(state.get("train_config", {}))
            config["model"] = state.get("model_config", {}).get("name")
            return config, int(state["world_size"])
    for scores in (train_dir / "scores.json", train_dir.parent / "scores.json"):
        if scores.is_file():
            data = json.loads(scores.read_text())
            if "train_config" in data and "world_size" in data:
                config = dict(data["train_config"])
                config["model"] = data.get("config", {}).get("name")
                return config, int(data["world_size"])
    return None


def _training_dirs(directory: Path) -> list[Path]:
    candidates = [directory, directory / "training"]
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        candidates += [sub, sub / "training"]
    return [c for c in dict.fromkeys(candidates) if (c / "metrics.csv").is_file()]


def find_training_runs(run_dirs: Sequence[PathLike]) -> list[TrainingRun]:
    """Training runs in ``run_dirs``: each entry must hold at least one.

    Parameters
    ----------
    run_dirs : sequence of path-like
        Trainer output directories (``metrics.csv``), ``03_train_vit`` run directories
        (``training/metrics.csv``) or directories holding several of them.

    Returns
    -------
    list of TrainingRun
        In the order found.

    Raises
    ------
    InputError
        An entry holds no ``metrics.csv`` (the message lists the places looked at), a run's
        strategy and world size cannot be found (no ``checkpoints/latest.json`` and no
        ``scores.json``), or its metrics have no training rows.
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise InputError("run_dirs is empty: give the training run directories to compare")
    runs: list[TrainingRun] = []
    for entry in run_dirs:
        directory = resolve_input_path(entry, "run_dirs entry")
        if not directory.is_dir():
            raise InputError(f"run_dirs entry {str(entry)!r} is not a directory ({directory})")
        train_dirs = _training_dirs(directory)
        if not train_dirs:
            raise InputError(f"no training metrics in {directory}: looked for metrics.csv in it, "
                             "in training/ and in its subdirectories (and their training/); "
                             "give a 03_train_vit run directory or a trainer output directory")
        for train_dir in train_dirs:
            settings = _training_settings(train_dir)
            if settings is None:
                raise InputError(f"cannot tell the strategy and world size of the run in "
                                 f"{train_dir}: no checkpoints/latest.json (with its "
                                 "trainer_state.json) and no scores.json beside it")
            config, world = settings
            rows = _read_metrics(train_dir / "metrics.csv")
            if not rows:
                raise InputError(f"{train_dir / 'metrics.csv'} has no training rows (kind=train):"
                                 " the run logged nothing yet")
            details = {k: config.get(k) for k in ("precision", "zero_stage", "sharding",
                                                  "batch_size", "model")}
            if config.get("strategy") != "deepspeed":
                details["zero_stage"] = None
            if config.get("strategy") != "fsdp":
                details["sharding"] = None
            runs.append(TrainingRun(train_dir, str(config.get("strategy", "none")), world,
                                    details, rows))
    return runs


def throughput_table(runs: Sequence[TrainingRun], skip_first: int = 1):
    """Training throughput per run.

    Parameters
    ----------
    runs : sequence of TrainingRun
    skip_first : int
        Logged training rows left out at the start of each run (the first interval pays
        for allocations, compilation and warm-up). When a run has no more rows than this,
        its last row is used.

    Returns
    -------
    xarray.Dataset
        Dim ``run``; coords ``strategy`` (label, e.g. ``deepspeed ZeRO-1``), ``devices``
        and ``path``; variables ``samples_per_s`` and ``tokens_per_s`` (median over rows,
        whole job), ``samples_per_s_per_device``, ``tflops_per_device`` (median, achieved
        model TFLOPS per device), ``peak_mem_gb`` (max over rows, per device) and
        ``n_rows`` (rows used).
    """
    if skip_first < 0:
        raise InputError(f"skip_first={skip_first} must be >= 0")
    if not runs:
        raise InputError("no training runs to tabulate")
    columns: dict[str, list[float]] = {k: [] for k in (
        "samples_per_s", "tokens_per_s", "tflops_per_device", "peak_mem_gb", "n_rows")}
    for run in runs:
        rows = run.rows[skip_first:] or run.rows[-1:]
        for key in ("samples_per_s", "tokens_per_s", "tflops_per_device"):
            values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            columns[key].append(float(np.median(values)) if values else math.nan)
        memory = [r["peak_mem_gb"] for r in rows if isinstance(r.get("peak_mem_gb"), (int, float))]
        columns["peak_mem_gb"].append(float(max(memory)) if memory else math.nan)
        columns["n_rows"].append(len(rows))
    devices = np.array([r.devices for r in runs], dtype=np.int64)
    ds = xr.Dataset(
        {k: ("run", np.asarray(v)) for k, v in columns.items()},
        coords={"run": np.arange(len(runs)),
                "strategy": ("run", [r.strategy_label for r in runs]),
                "devices": ("run", devices),
                "path": ("run", [str(r.path) for r in runs])})
    ds["samples_per_s_per_device"] = ds["samples_per_s"] / ds["devices"]
    units = {"samples_per_s": "1/s", "tokens_per_s": "1/s", "tflops_per_device": "TFLOPS",
             "peak_mem_gb": "GB", "samples_per_s_per_device": "1/s"}
    for name, unit in units.items():
        ds[name].attrs["units"] = unit
    ds.attrs["skip_first"] = skip_first
    return ds


def as_json(value: Any) -> Any:
    """``value`` with numpy scalars/arrays as Python numbers/lists and NaN/inf as ``None``
    (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return as_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
