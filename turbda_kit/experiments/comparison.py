"""Run several named experiments on one truth and keep what each produced.

The driver behind notebooks 05 (one preset, several filters) and 06 (the coupled runs):
for every name it builds the experiment, runs it with a checkpoint directory of its own,
writes ``<prefix>_<name>.nc`` (and, when asked, the ensemble members of every cycle to
``<prefix>_<name>_members.nc``), and records a run that diverged as a result rather than a
crash. ``summary.json`` (mean scores, published score, wall time, or where a run
diverged) is rewritten atomically after every run, so the figures find what finished even
if a later run is killed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import DivergenceError, InputError
from ..io import write_dataset, write_json
from ..progress import process_rank
from .builder import Experiment
from .members import MemberOutput, members_file_name
from .skill import skill_summary

__all__ = ["SUMMARY_NAME", "Comparison", "run_comparison"]

SUMMARY_NAME = "summary.json"


@dataclass
class Comparison:
    """The outcome of :func:`run_comparison`.

    Attributes
    ----------
    results : dict of str to xarray.Dataset
        The cycling Dataset of every run that finished, by name, in run order.
    diverged : dict of str to dict
        Runs that diverged: ``{"diverged_at_cycle": int or None, "message": str}``.
    wall_seconds : dict of str to float
        Wall time of each finished run (build and run).
    """

    results: dict[str, xr.Dataset] = field(default_factory=dict)
    diverged: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per run: mean analysis RMSE and spread, the published score (None if there is
        none), wall seconds, the mean surrogate drift when recorded, forecast RMSE by lead
        and the baselines when scored (:func:`~turbda_kit.experiments.skill.skill_summary`);
        or where it diverged. JSON-ready."""
        out: dict[str, dict[str, Any]] = {}
        for name, ds in self.results.items():
            reported = float(ds.attrs.get("reported_rmse", math.nan))
            entry = {"mean_rmse_analysis": float(ds.attrs["mean_rmse_analysis"]),
                     "mean_spread_analysis": float(ds.attrs["mean_spread_analysis"]),
                     "reported_rmse": None if math.isnan(reported) else reported,
                     "wall_seconds": self.wall_seconds[name]}
            if "surrogate_drift" in ds:
                entry["mean_surrogate_drift"] = float(ds["surrogate_drift"].mean())
            for var in ("rmse_forecast_surrogate", "rmse_forecast_physics"):
                if var in ds:  # over the scored cycles, like the analysis RMSE
                    scored = ds[var].isel(cycle=slice(int(ds.attrs.get("config_spinup_cycles", 0)),
                                                      None))
                    entry[f"mean_{var}"] = _finite_mean(scored.values)
            entry.update(skill_summary(ds))
            out[name] = entry
        out.update(self.diverged)
        return out


def _finite_mean(values) -> float | None:
    """Mean of the finite values (None when there are none): a JSON-ready number."""
    import numpy as np

    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else None


def run_comparison(names: Sequence[str], build: Callable[[str], Experiment],
                   out_dir: str | os.PathLike, prefix: str, *,
                   show_progress: bool | None = None, verbose: bool = True,
                   save_members: str = "none", members_format: str = "netcdf") -> Comparison:
    """Build and run one experiment per name; write each result and the summary.

    Parameters
    ----------
    names : sequence of str
        Run names (filters, coupled-run kinds), in order.
    build : callable
        ``build(name) -> Experiment``.
    out_dir : path-like
        Receives ``<prefix>_<name>.nc``, ``checkpoint_<name>/`` (resume) and
        ``summary.json``.
    prefix : str
        File-name prefix (``"cycling"``, ``"coupled"``: what the figures look for).
    show_progress : bool, optional
        The engine's progress lines (default: rank 0).
    verbose : bool
        Print one line per run (rank 0 only).
    save_members : {"none", "forecast", "analysis", "both"}
        Also stream these ensemble members of every cycle (and the truth) to
        ``<prefix>_<name>_members.nc`` (:mod:`turbda_kit.experiments.members`).
    members_format : {"netcdf", "zarr"}
        Format of the member files (``.nc`` or ``.zarr``).

    Returns
    -------
    Comparison

    Raises
    ------
    InputError
        No names; an unknown ``save_members`` or ``members_format``.
    """
    if not names:
        raise InputError("names is empty: give at least one run (a filter or experiment)")
    out = Path(out_dir)
    MemberOutput.from_setting(save_members, members_file_name(prefix, "check", members_format))
    comparison = Comparison()
    say = print if verbose and process_rank() == 0 else (lambda text: None)
    for name in names:
        start = time.perf_counter()
        experiment = build(name)
        try:
            members = MemberOutput.from_setting(
                save_members, out / members_file_name(prefix, name, members_format))
            ds = experiment.run(out_dir=out / f"checkpoint_{name}", show_progress=show_progress,
                                members=members)
        except DivergenceError as err:  # a filter losing track is a result, not a crash
            comparison.diverged[name] = {"diverged_at_cycle": getattr(err, "cycle", None),
                                         "message": str(err)}
            say(f"{name:>16}: DIVERGED — {err}")
        else:
            write_dataset(ds, out / f"{prefix}_{name}.nc")
            comparison.results[name] = ds
            comparison.wall_seconds[name] = time.perf_counter() - start
            say(_line(name, comparison.summary()[name], ds))
        write_json(out / SUMMARY_NAME, comparison.summary())
    return comparison


def _line(name: str, entry: dict[str, Any], ds: xr.Dataset) -> str:
    reported = entry["reported_rmse"]
    drift = entry.get("mean_surrogate_drift")
    return (f"{name:>16}: mean analysis RMSE {entry['mean_rmse_analysis']:.3f}, spread "
            f"{entry['mean_spread_analysis']:.3f} (published: "
            f"{'-' if reported is None else reported}), {entry['wall_seconds']:.1f} s, "
            f"real-time x{ds.attrs['realtime_factor']:.3g}"
            + ("" if drift is None else f", surrogate drift {drift:.2f}"))

