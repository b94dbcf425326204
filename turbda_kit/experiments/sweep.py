"""Hyperparameter sweeps of a filter on a preset: one short cycling run per setting.

Tuning is part of a fair comparison (LETKF localisation and inflation, EnSF likelihood
weight and spread relaxation). A sweep runs the same preset, truth, observations and seed
for every setting, so the settings differ only in the filter; it returns one Dataset with
the mean scores per setting and records runs that diverged instead of stopping.

>>> from turbda_kit.experiments.sweep import sweep
>>> ds = sweep("bao2024_sqg_linear", "letkf",
...            [{"localization_radius": r, "inflation_factor": f}
...             for r in (0.8e6, 1.1e6) for f in (0.3, 0.6)],
...            n_cycles=60, spinup_cycles=20, truth_trajectory=truth)   # doctest: +SKIP
>>> ds.mean_rmse_analysis.values                                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..cf import VariableInfo, describe
from ..errors import DivergenceError, InputError
from ..io import open_dataset, write_dataset
from ..progress import progress_bar
from . import cf
from .builder import build_experiment
from .presets import DAPreset, get_preset

__all__ = ["SCORES", "best_setting", "sweep"]

#: The per-cycle variables of the cycling Dataset that a sweep averages after spin-up.
SCORES = ("rmse_analysis", "rmse_forecast", "spread_analysis", "spread_forecast")


def sweep(preset: DAPreset | str, filter_name: str, settings: Sequence[Mapping[str, Any]], *,
          n_cycles: int, spinup_cycles: int, seed: int = 0, truth_trajectory=None,
          device="cpu", base: Mapping[str, Any] | None = None,
          out_path: str | os.PathLike | None = None, **build_kwargs: Any):
    """Run ``preset`` with ``filter_name`` once per entry of ``settings``.

    Parameters
    ----------
    preset : DAPreset or str
        The experiment (model, observations, ensemble size, ...).
    filter_name : str
        A filter with settings in the preset (``"ensf"``, ``"letkf"``).
    settings : sequence of dict
        Field changes of the preset's filter config (``EnSFConfig`` or ``LETKFConfig``),
        one dict per run, e.g. ``{"localization_radius": 8e5, "inflation_factor": 0.6}``.
    n_cycles, spinup_cycles : int
        Length of each run and the cycles left out of the means.
    seed : int
        Root seed shared by all runs (same truth, observations, initial ensemble).
    truth_trajectory : array-like, optional
        Stored truth, as for :func:`~turbda_kit.experiments.presets.build_experiment`
        (recommended for SQG: otherwise every run spins up its own truth).
    device : torch.device or str
    base : dict, optional
        Changes applied to the filter config before each setting (shared defaults).
    out_path : path-like, optional
        netCDF file rewritten atomically after every run, so a killed sweep loses at most
        the run in progress. If it already holds a sweep with the same preset, filter,
        cycles, seed and base, the settings found there are taken from it, not rerun.
    **build_kwargs
        Passed to :func:`~turbda_kit.experiments.presets.build_experiment`.

    Returns
    -------
    xarray.Dataset
        Dimension ``setting``; variables ``mean_<score>`` for each of :data:`SCORES`
        (means over cycles ``spinup_cycles .. n_cycles - 1``, units of the truth),
        ``diverged`` (bool; NaN scores), ``diverged_cycle`` (-1 if not), ``wall_s``;
        coordinate ``label`` (the setting as JSON); attrs: preset, filter, cycles, seed.
        CF-1.8: units and long names on every variable (:mod:`turbda_kit.cf`).
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    if not settings:
        raise InputError("settings is empty: pass at least one dict of filter-config changes")
    if not 0 <= spinup_cycles < n_cycles:
        raise InputError(f"spinup_cycles={spinup_cycles} must be in [0, n_cycles={n_cycles})")
    if preset.filter_settings(filter_name) is None:
        raise InputError(f"filter_name={filter_name!r}: a sweep tunes "
                         f"{' or '.join(repr(n) for n in preset.filters)} (the filters with "
                         "settings in the preset)")
    base = dict(base or {})
    preset = preset.with_filter_settings(filter_name, base).replace(
        n_cycles=n_cycles, spinup_cycles=spinup_cycles)
    # Validate every setting before the first (long) run starts.
    presets = [preset.with_filter_settings(filter_name, s) for s in settings]

    attrs = {"preset": preset.name, "filter": filter_name, "n_cycles": n_cycles,
             "spinup_cycles": spinup_cycles, "seed": seed,
             "base": json.dumps(base, sort_keys=True)}
    done, units = _finished_rows(out_path, attrs)
    # Units of the scores: those of the state (K for SQG and the ViT, 1 for Lorenz-96),
    # from each model built (an earlier file's when every setting is taken from it).
    units = units or cf.state_description(None, {"model": preset.model})[1]
    rows: dict[str, list[float]] = {f"mean_{name}": [] for name in SCORES}
    diverged, diverged_cycle, wall, labels = [], [], [], []
    bar = progress_bar(len(settings), f"sweep {preset.name}:{filter_name}", every_seconds=0.0)
    for changes, run_preset in zip(settings, presets):
        label = json.dumps(dict(changes), sort_keys=True)
        if label in done:
            row = done[label]
            for name in SCORES:
                rows[f"mean_{name}"].append(row[f"mean_{name}"])
            diverged.append(row["diverged"])
            diverged_cycle.append(row["diverged_cycle"])
            wall.append(row["wall_s"])
            labels.append(label)
            bar.set_postfix_str(f"{label}: taken from {out_path}")
            bar.update()
            continue
        experiment = build_experiment(run_preset, filter_name, seed=seed,
                                      truth_trajectory=truth_trajectory, device=device,
                                      **build_kwargs)
        units = cf.state_description(experiment.model, experiment.attrs)[1]
        start = time.perf_counter()
        cycle, failed = -1, False
        try:
            ds = experiment.run(show_progress=False)
            units = ds["rmse_analysis"].attrs.get("units", units)
            for name in SCORES:
                rows[f"mean_{name}"].append(float(np.nanmean(ds[name].values[spinup_cycles:])))
        except DivergenceError as err:  # the engine names the cycle
            cycle, failed = int(getattr(err, "cycle", -1)), True
            for name in SCORES:
                rows[f"mean_{name}"].append(math.nan)
        wall.append(time.perf_counter() - start)
        diverged.append(failed or math.isnan(rows["mean_rmse_analysis"][-1]))
        diverged_cycle.append(cycle)
        labels.append(label)
        outcome = ("diverged" if diverged[-1]
                   else f"mean analysis RMSE {rows['mean_rmse_analysis'][-1]:.3f}")
        bar.set_postfix_str(f"{label}: {outcome}, {wall[-1]:.0f} s")
        bar.update()
        if out_path is not None:
            write_dataset(_table(rows, diverged, diverged_cycle, wall, labels, attrs, units),
                          out_path)
    bar.close()
    return _table(rows, diverged, diverged_cycle, wall, labels, attrs, units)


def _table(rows, diverged, diverged_cycle, wall, labels, attrs, units: str):
    """The sweep's Dataset, CF-1.8 (:mod:`turbda_kit.cf`); scores in ``units``."""
    data = {name: ("setting", np.asarray(values, dtype=np.float64))
            for name, values in rows.items()}
    data["diverged"] = ("setting", np.asarray(diverged, dtype=bool))
    data["diverged_cycle"] = ("setting", np.asarray(diverged_cycle, dtype=np.int64))
    data["wall_s"] = ("setting", np.asarray(wall, dtype=np.float64))
    ds = xr.Dataset(data, coords={"setting": np.arange(len(labels)),
                                  "label": ("setting", list(labels))}, attrs=dict(attrs))
    scored = f"cycles {attrs['spinup_cycles']}..{attrs['n_cycles'] - 1}"
    catalogue = {f"mean_{name}": VariableInfo(
        f"{cf.VARIABLES[name].long_name}, mean over {scored}", units) for name in SCORES}
    catalogue.update({
        "diverged": VariableInfo("the run diverged (1: NaN scores)", "1"),
        "diverged_cycle": VariableInfo("cycle at which the run diverged (-1: it did not)", "1"),
        "wall_s": VariableInfo("wall time of the run", "s"),
        "setting": VariableInfo("setting index (order of the settings given)", "1"),
        "label": VariableInfo("the setting: filter-config changes as JSON", ""),  # text
    })
    return describe(ds, catalogue,
                    title=f"turbda_kit sweep of {attrs['filter']} on {attrs['preset']}")


def _finished_rows(out_path, attrs: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str]:
    """Rows of an earlier run of the same sweep at ``out_path``, by label (else empty), and
    the units of its scores ("" when unknown)."""
    if out_path is None or not Path(out_path).exists():
        return {}, ""
    old = open_dataset(out_path)
    try:
        same = all(str(old.attrs.get(k)) == str(v) for k, v in attrs.items())
        if not same:
            raise InputError(f"{out_path} holds a sweep with other settings "
                             f"({ {k: old.attrs.get(k) for k in attrs} }): choose another "
                             f"out_path or remove it")
        rows = {str(old["label"].values[i]): {
            **{f"mean_{n}": float(old[f"mean_{n}"].values[i]) for n in SCORES},
            "diverged": bool(old["diverged"].values[i]),
            "diverged_cycle": int(old["diverged_cycle"].values[i]),
            "wall_s": float(old["wall_s"].values[i])} for i in range(old.sizes["setting"])}
        return rows, str(old["mean_rmse_analysis"].attrs.get("units", ""))
    finally:
        old.close()


def best_setting(results, score: str = "mean_rmse_analysis") -> dict[str, Any]:
    """The setting with the lowest ``score`` among runs that did not diverge.

    Parameters
    ----------
    results : xarray.Dataset
        Output of :func:`sweep`.
    score : str
        Variable to minimise.

    Returns
    -------
    dict
        The winning setting's changes (decoded from its label).
    """
    values = np.where(results["diverged"].values, np.inf, results[score].values)
    if not np.isfinite(values).any():
        raise InputError("every run of the sweep diverged: no best setting")
    return json.loads(str(results["label"].values[int(np.argmin(values))]))
