"""The results of a scaling study: its Dataset, the derived figures, merged jobs, the summary.

* :func:`assemble_scaling` turns the per-point records of :func:`~turbda_kit.experiments.
  scaling.run_scaling` into an :class:`xarray.Dataset` with dims ``(ranks, size, cycle)``.
* :func:`summarize` adds the derived variables: means per cycle without the warm-up,
  ``efficiency`` (wall time), ``efficiency_cpu`` (CPU seconds per rank), ``cpu_utilisation``
  (CPU time over the cores the ranks were given) and ``oversubscribed``.
* :func:`combine_scaling` merges the Datasets of several jobs (e.g. one per node count).
* :func:`describe_scaling` gives a Dataset its CF-1.8 metadata (:mod:`turbda_kit.cf`):
  units and long names everywhere, ``time`` / ``time_hours`` (model time of each analysis)
  along ``cycle``; :func:`assemble_scaling` and :func:`summarize` apply it.
* :func:`scaling_table` is the printable table; :func:`scaling_summary` the JSON summary
  (``scaling_summary.json``) a results pipeline collects.

The efficiency maths are in :mod:`turbda_kit.experiments.efficiency`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import provenance
from ..cf import VariableInfo, describe
from ..errors import InputError
from ..io import open_dataset
from ..models.lorenz96 import LORENZ96_TIME_UNIT_SECONDS
from . import cf
from .efficiency import MODES, cpu_utilisation, efficiency

__all__ = ["COMPONENTS", "SCORES", "SUMMARY_KIND", "assemble_scaling", "combine_scaling",
           "describe_scaling", "scaling_summary", "scaling_table", "study_summary", "summarize"]

COMPONENTS = ("forecast", "halo", "analysis", "reduce", "total")
"""Parts of a cycle timed by :func:`~turbda_kit.experiments.l96_ensf.run_l96_ensf`."""
SCORES = ("rmse_forecast", "rmse_analysis", "spread_analysis")
"""Global scores recorded per cycle."""
SUMMARY_KIND = "turbda_kit.scaling_summary/1"
"""``kind`` of the JSON summary (bumped when its layout changes)."""

# Study fields that must agree before Datasets of several jobs can be combined.
_COMPARABLE = ("mode", "n_members", "euler_steps", "obs", "obs_error_std", "n_cycles",
               "warmup_cycles", "steps_per_cycle", "spinup_steps", "seed", "align",
               "block_size", "dtype", "threads_per_rank", "prefetch_noise")
_DERIVED = ("efficiency", "efficiency_cpu", "cpu_utilisation", "oversubscribed",
            "time_per_cycle_s") + tuple(f"{c}_per_cycle_s" for c in COMPONENTS[:-1])
_TIME = ("time", "time_hours")
_INTEGER_FILL = {"n_global": 0, "peak_memory_bytes": 0, "baseline_memory_bytes": 0,
                 "fingerprint": -1}


def assemble_scaling(study: Any, records: Mapping[tuple[int, int], Mapping[str, Any]],
                     attrs: Mapping[str, Any]) -> xr.Dataset:
    """The Dataset of a study from its per-point records (no derived variables yet).

    Parameters
    ----------
    study : ScalingStudy
        The study (its fields go into ``attrs``; bools as 0/1 for netCDF).
    records : mapping of (ranks, size) to dict
        One record per point run: per-cycle arrays ``rmse_*``, ``spread_analysis``,
        ``time_{forecast,halo,analysis,reduce,total}_s`` (length ``n_cycles``) and scalars
        ``n_global``, ``peak_memory_bytes``, ``baseline_memory_bytes``, ``point_wall_s``,
        ``point_cpu_s``, ``fingerprint``, ``cores_available_per_rank`` (float).
    attrs : mapping
        Run attributes (device, dtype, job ranks, cores per rank, memory method, ...).

    Returns
    -------
    xarray.Dataset
        Dims ``ranks``, ``size``, ``cycle``; points not run are NaN (or the integer fill);
        CF-1.8 metadata and the ``time`` coordinate from :func:`describe_scaling`.
    """
    ranks, sizes = list(study.ranks), list(study.sizes)
    shape = (len(ranks), len(sizes))

    def grid(key: str, per_cycle: bool, fill: float = np.nan, kind=np.float64) -> np.ndarray:
        out = np.full(shape + ((study.n_cycles,) if per_cycle else ()), fill, dtype=kind)
        for (p, size), rec in records.items():
            out[ranks.index(p), sizes.index(size)] = rec[key]
        return out

    cycle_dims, point_dims = ("ranks", "size", "cycle"), ("ranks", "size")
    data: dict[str, Any] = {}
    for name in SCORES:
        data[name] = (cycle_dims, grid(name, True))
    for c in COMPONENTS:
        data[f"time_{c}_s"] = (cycle_dims, grid(f"time_{c}_s", True))
    for key in ("n_global", "peak_memory_bytes", "baseline_memory_bytes", "fingerprint"):
        data[key] = (point_dims, grid(key, False, _INTEGER_FILL[key], np.int64))
    for key in ("cores_available_per_rank", "point_wall_s", "point_cpu_s"):
        data[key] = (point_dims, grid(key, False))
    coords = {"ranks": ("ranks", np.asarray(ranks, dtype=np.int64)),
              "size": ("size", np.asarray(sizes, dtype=np.int64)),
              "cycle": ("cycle", np.arange(study.n_cycles))}
    all_attrs: dict[str, Any] = {}
    for key, value in dataclasses.asdict(study).items():
        if key not in ("sizes", "ranks"):
            all_attrs[key] = int(value) if isinstance(value, bool) else value
    # The model time step (not a study field): what the time coordinate is counted in.
    all_attrs["dt"] = study.experiment(max(sizes)).dt
    for key, value in attrs.items():
        all_attrs[key] = int(value) if isinstance(value, bool) else value
    all_attrs.update(provenance.as_attrs(provenance.collect()))
    return describe_scaling(xr.Dataset(data, coords=coords, attrs=all_attrs))


def _catalogue(mode: str, warmup: int, n_cycles: int, cores: int) -> dict[str, VariableInfo]:
    """What every variable of a scaling Dataset is (units and long names)."""
    rule = "p0 T(p0) / (p T(p))" if mode == "strong" else "T(p0) / T(p)"
    timed = f"cycles {warmup}..{n_cycles - 1}"
    info = {
        "ranks": VariableInfo("number of MPI ranks", "1"),
        "size": VariableInfo("total ring size (state dimension)" if mode == "strong"
                             else "ring points per rank", "1"),
        "cycle": VariableInfo("analysis cycle (0 is the first analysis)", "1"),
        "n_global": VariableInfo("ring size (state dimension)", "1"),
        "peak_memory_bytes": VariableInfo(
            "peak memory per rank in bytes, max over ranks (CPU: peak resident set; GPU: "
            "peak tensor allocation)", "bytes"),
        "baseline_memory_bytes": VariableInfo(
            "memory in use before the point started in bytes, max over ranks", "bytes"),
        "fingerprint": VariableInfo(
            "exact split-independent fingerprint of the final analysis ensemble "
            "(turbda_kit.parallel.fingerprint.analysis_fingerprint; -1: not run)", "1"),
        "cores_available_per_rank": VariableInfo(
            "CPUs each running rank could have without sharing (its node's CPUs / its node's "
            "running ranks; below 1 when ranks outnumber CPUs), min over nodes", "1"),
        "point_wall_s": VariableInfo("wall time of the whole point (spin-up and all cycles), "
                                     "max over ranks", "s"),
        "point_cpu_s": VariableInfo("process CPU time of the whole point (all threads), "
                                    "summed over ranks", "s"),
        "efficiency": VariableInfo(f"{mode}-scaling efficiency {rule}, T = wall time per "
                                   "cycle, p0 = smallest rank count run", "1"),
        "efficiency_cpu": VariableInfo(f"{rule} with T = CPU seconds per rank of the whole "
                                       "point", "1"),
        "cpu_utilisation": VariableInfo(
            f"CPU time / (wall time x ranks x {cores} core(s) per rank): the share of the "
            "cores given that the run used", "1"),
        "oversubscribed": VariableInfo(f"fewer CPUs per rank than the {cores} core(s) a rank "
                                       "keeps busy (1: the point measured sharing)", "1"),
    }
    for name in SCORES:
        what = cf.VARIABLES[name].long_name
        info[name] = VariableInfo(f"{what}, global over the ring (Lorenz-96 state, "
                                  "non-dimensional)", "1")
    for c in COMPONENTS:
        info[f"time_{c}_s"] = VariableInfo(f"{c} wall time per cycle, max over ranks", "s")
        info["time_per_cycle_s" if c == "total" else f"{c}_per_cycle_s"] = VariableInfo(
            f"mean {c} wall time per cycle ({timed})", "s")
    return info


def describe_scaling(ds: xr.Dataset) -> xr.Dataset:
    """Give a scaling Dataset its CF metadata (in place): units and long names, the title,
    ``Conventions`` and the model time of each analysis along ``cycle``.

    ``time`` (CF, seconds since cycle 0, decoded to dates by xarray) and ``time_hours``
    are ``(cycle + 1) * steps_per_cycle * dt`` model time units of
    :data:`~turbda_kit.models.lorenz96.LORENZ96_TIME_UNIT_SECONDS`; files written before
    they were recorded get them here (``dt`` defaults to 0.01).

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`assemble_scaling`, :func:`summarize` or an older file.

    Returns
    -------
    xarray.Dataset
        ``ds``.
    """
    mode = str(ds.attrs.get("mode", ""))
    cycles = np.asarray(ds["cycle"].values, dtype=np.int64)
    cycle_seconds = (float(ds.attrs.get("steps_per_cycle", 10)) * float(ds.attrs.get("dt", 0.01))
                     * LORENZ96_TIME_UNIT_SECONDS)
    time = cf.time_coordinates(cycles + 1, cycle_seconds, dim="cycle")
    time["time"][2]["long_name"] = ("model time of the analysis since the start of the "
                                    "cycling; the date is nominal")
    time["time_hours"][2]["long_name"] = "model time of the analysis since the start of cycling"
    for name, (dim, values, attrs) in time.items():
        ds.coords[name] = (dim, values, attrs)
    catalogue = _catalogue(mode, int(ds.attrs.get("warmup_cycles", 1)), ds.sizes["cycle"],
                           _cores_per_rank(ds.attrs))
    return describe(ds, catalogue, replace=True,
                    title=f"EnSF Lorenz-96 {mode}-scaling study" if mode else None)


def _cores_per_rank(attrs: Mapping[str, Any]) -> int:
    # Files written before the prefetch thread was counted only know the torch threads.
    return int(attrs.get("cores_per_rank", attrs.get("threads_per_rank", 1)))


def summarize(ds: xr.Dataset) -> xr.Dataset:
    """Add (or refresh) the derived variables of a scaling Dataset.

    * ``time_per_cycle_s`` and ``{forecast,halo,analysis,reduce}_per_cycle_s``: means over
      the cycles after ``attrs["warmup_cycles"]``;
    * ``efficiency``: :func:`~turbda_kit.experiments.efficiency.efficiency` of
      ``time_per_cycle_s`` (baseline: the smallest rank count run);
    * with ``point_cpu_s``: ``efficiency_cpu`` (the same formula with the CPU seconds per
      rank of the whole point as ``T``: insensitive to other users' load) and
      ``cpu_utilisation`` (CPU time / (wall x ranks x ``attrs["cores_per_rank"]``));
    * with ``cores_available_per_rank``: ``oversubscribed`` (fewer CPUs per rank than the
      cores a rank keeps busy: the point measured sharing, not scaling).

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`~turbda_kit.experiments.scaling.run_scaling` or :func:`combine_scaling`.

    Returns
    -------
    xarray.Dataset
        A new Dataset.
    """
    warmup = int(ds.attrs.get("warmup_cycles", 1))
    timed = ds.isel(cycle=slice(warmup, None))
    out = ds.copy()
    for c in COMPONENTS:
        name = "time_per_cycle_s" if c == "total" else f"{c}_per_cycle_s"
        out[name] = timed[f"time_{c}_s"].mean("cycle", skipna=False)
    mode = ds.attrs["mode"]
    times = out["time_per_cycle_s"].transpose("ranks", ...)
    out["efficiency"] = (times.dims, efficiency(times.values, ds["ranks"].values, mode))
    cores = _cores_per_rank(ds.attrs)
    if "point_cpu_s" in ds:
        # CPU seconds per rank play the role of T(p) in a measure that time-sharing does not
        # distort (busy-waiting in MPI counts as used, so it is, if anything, pessimistic).
        per_rank = (ds["point_cpu_s"] / ds["ranks"]).transpose("ranks", ...)
        out["efficiency_cpu"] = (per_rank.dims, efficiency(per_rank.values, ds["ranks"].values,
                                                           mode))
        cpu, wall = xr.broadcast(ds["point_cpu_s"], ds["point_wall_s"])
        out["cpu_utilisation"] = (cpu.dims, cpu_utilisation(
            cpu.values, wall.values, ds["ranks"].broadcast_like(cpu).values, cores))
    if "cores_available_per_rank" in ds:
        # NaN (not measured) compares False: not flagged.
        out["oversubscribed"] = ds["cores_available_per_rank"] < cores
    return describe_scaling(out)


def combine_scaling(datasets: Sequence[Any]) -> xr.Dataset:
    """Merge scaling Datasets of several jobs (e.g. one per node count) into one.

    Parameters
    ----------
    datasets : sequence of xarray.Dataset or path-like
        Outputs of :func:`~turbda_kit.experiments.scaling.run_scaling` (paths are opened
        with :func:`turbda_kit.io.open_dataset`) of the same mode and experiment settings.
        Their sizes may differ (missing points become NaN); a rank count may appear in one
        Dataset only.

    Returns
    -------
    xarray.Dataset
        Sorted by ``ranks`` and ``size``, with :func:`summarize` recomputed (efficiency
        against the smallest rank count of the merged sweep).

    Raises
    ------
    InputError
        Empty input, mixed modes or settings, or a rank count in two Datasets.
    """
    if not datasets:
        raise InputError("combine_scaling needs at least one Dataset or path")
    loaded, names = [], []
    for item in datasets:
        if isinstance(item, (str, os.PathLike)):
            with open_dataset(item) as opened:
                loaded.append(opened.load())
            names.append(str(item))
        else:
            loaded.append(item)
            names.append(f"dataset {len(names)}")
    first = loaded[0].attrs
    for name, ds in zip(names[1:], loaded[1:]):
        different = [k for k in _COMPARABLE if str(ds.attrs.get(k)) != str(first.get(k))]
        if different:
            detail = ", ".join(f"{k}: {first.get(k)!r} vs {ds.attrs.get(k)!r}" for k in different)
            raise InputError(f"cannot combine {names[0]} and {name}: different settings ({detail})")
    seen: dict[int, str] = {}
    for name, ds in zip(names, loaded):
        for p in ds["ranks"].values.tolist():
            if p in seen:
                raise InputError(f"rank count {p} appears in both {seen[p]} and {name}: drop one "
                                 "(combine_scaling does not average repeated runs)")
            seen[p] = name
    # Derived variables and the time axis (older files lack it) are made again by summarize.
    parts = [ds.drop_vars([v for v in _DERIVED + _TIME if v in ds.variables]) for ds in loaded]
    merged = xr.concat(parts, dim="ranks", join="outer", combine_attrs="override",
                       fill_value={k: v for k, v in _INTEGER_FILL.items()
                                   if all(k in p for p in parts)})
    merged = merged.sortby("ranks").sortby("size")
    merged.attrs["job_ranks"] = max(int(ds.attrs.get("job_ranks", 0)) for ds in loaded)
    merged.attrs["combined_from"] = "; ".join(names)
    return summarize(merged)


_TABLE_COLUMNS = ("n_global", "time_per_cycle_s", "forecast_per_cycle_s", "halo_per_cycle_s",
                  "analysis_per_cycle_s", "reduce_per_cycle_s", "efficiency", "efficiency_cpu",
                  "cpu_utilisation", "cores_available_per_rank", "oversubscribed")


def scaling_table(ds: xr.Dataset):
    """One row per point: times per cycle and their parts, efficiencies, CPU use, memory.

    Parameters
    ----------
    ds : xarray.Dataset
        A summarised scaling Dataset.

    Returns
    -------
    pandas.DataFrame
        Index ``(ranks, size)``; columns those of ``_TABLE_COLUMNS`` present in ``ds``,
        ``peak_MiB_per_rank`` and ``final_rmse_analysis``.
    """
    columns = [c for c in _TABLE_COLUMNS if c in ds]
    table = ds[columns].to_dataframe()
    table["peak_MiB_per_rank"] = (ds["peak_memory_bytes"] / 2 ** 20).round(1).to_series()
    table["final_rmse_analysis"] = ds["rmse_analysis"].isel(cycle=-1).to_series()
    return table


def _number(value: Any) -> Any:
    """A JSON-safe Python scalar: NaN/inf become None, numpy scalars Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def study_summary(ds: xr.Dataset) -> dict[str, Any]:
    """The JSON-ready summary of one summarised scaling Dataset.

    Returns
    -------
    dict
        ``settings`` (mode, device, dtype, threads per rank, prefetch, cores per rank,
        members, Euler steps, cycles, ...), ``points`` (one dict per point run: ranks,
        size, ring size, time per cycle and its parts, efficiencies, CPU utilisation, peak
        memory per rank in bytes and GiB, whole-point wall and CPU seconds, CPUs available
        per rank, oversubscribed, final analysis RMSE, fingerprint), ``headline`` (per size:
        the largest rank count against the smallest) and ``provenance``.
    """
    attrs = ds.attrs
    settings = {key: _number(attrs[key]) for key in (
        "mode", "device", "dtype", "job_ranks", "threads_per_rank", "cores_per_rank",
        "n_members", "euler_steps", "obs", "obs_error_std", "n_cycles", "warmup_cycles",
        "steps_per_cycle", "spinup_steps", "seed", "align", "block_size",
        "peak_memory_method", "combined_from") if key in attrs}
    if "prefetch_noise" in attrs:
        settings["prefetch_noise"] = bool(int(attrs["prefetch_noise"]))
    point_vars = ("n_global", "time_per_cycle_s", "forecast_per_cycle_s", "halo_per_cycle_s",
                  "analysis_per_cycle_s", "reduce_per_cycle_s", "efficiency", "efficiency_cpu",
                  "cpu_utilisation", "peak_memory_bytes", "baseline_memory_bytes",
                  "point_wall_s", "point_cpu_s", "cores_available_per_rank", "oversubscribed",
                  "fingerprint")
    points = []
    for p in ds["ranks"].values:
        for size in ds["size"].values:
            point = ds.sel(ranks=p, size=size)
            if not np.isfinite(point["time_total_s"].values).any():
                continue                              # not run (a merged sweep's hole)
            entry: dict[str, Any] = {"ranks": int(p), "size": int(size)}
            for name in point_vars:
                if name in point:
                    entry[name] = _number(point[name].values[()])
            entry["peak_memory_gib_per_rank"] = _number(
                float(point["peak_memory_bytes"]) / 2 ** 30)
            entry["final_rmse_analysis"] = _number(point["rmse_analysis"].values[-1])
            points.append(entry)
    headline = []
    for size in ds["size"].values:
        run = [e for e in points if e["size"] == int(size) and e["time_per_cycle_s"] is not None]
        if not run:
            continue
        base, top = run[0], run[-1]
        headline.append({
            "size": int(size), "baseline_ranks": base["ranks"], "ranks": top["ranks"],
            "time_per_cycle_s_baseline": base["time_per_cycle_s"],
            "time_per_cycle_s": top["time_per_cycle_s"],
            "efficiency": top["efficiency"], "efficiency_cpu": top.get("efficiency_cpu"),
            "cpu_utilisation_baseline": base.get("cpu_utilisation"),
            "cpu_utilisation": top.get("cpu_utilisation"),
            "peak_memory_gib_per_rank": top["peak_memory_gib_per_rank"],
            "oversubscribed": bool(base.get("oversubscribed") or top.get("oversubscribed"))})
    prefix = "provenance_"
    prov = {k[len(prefix):]: _number(v) for k, v in attrs.items() if k.startswith(prefix)}
    return {"settings": settings, "points": points, "headline": headline, "provenance": prov}


def scaling_summary(datasets: Mapping[str, xr.Dataset], command: str | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``scaling_summary.json`` document of several studies.

    Parameters
    ----------
    datasets : mapping of str to xarray.Dataset
        Summarised Datasets by study name (``"weak"``, ``"strong"``, ``"big"``, ...).
    command : str, optional
        The command that produced them (recorded so every number names its command).
    extra : mapping, optional
        More top-level entries (e.g. the machine's load average).

    Returns
    -------
    dict
        ``{"kind": SUMMARY_KIND, "command": ..., "studies": {name: study_summary(ds)}, ...}``,
        strict JSON (NaN as null).
    """
    for name, ds in datasets.items():
        if ds.attrs.get("mode") not in MODES:
            raise InputError(f"study {name!r} is not a scaling Dataset (attrs['mode']="
                             f"{ds.attrs.get('mode')!r})")
    document: dict[str, Any] = {"kind": SUMMARY_KIND, "command": command,
                                "studies": {name: study_summary(ds)
                                            for name, ds in datasets.items()}}
    document.update(extra or {})
    return document
