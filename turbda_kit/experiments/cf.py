"""CF metadata of the experiment results: units, long names, coordinates.

The cycling engine's Dataset (``cycling_<filter>.nc``, ``coupled_<run>.nc``) and its
ensemble-member file (:mod:`turbda_kit.experiments.members`) follow CF-1.8, so that
xarray, cf-xarray, ncview or Panoply label them and xskillscore / properscoring can score
them without guessing:

* every variable and coordinate has ``units`` (UDUNITS strings: ``K``, ``s``, ``h``,
  ``m``; ``1`` for counts, indices and ratios) and ``long_name``; coordinates with a CF
  standard name carry it (``time``, ``projection_x_coordinate``, ...);
* ``time`` is a coordinate along ``cycle``: float64 seconds since cycle 0 with the CF
  units ``"seconds since 2000-01-01 00:00:00"`` (the date is nominal, as for nature runs,
  :mod:`turbda_kit.data.time_axis`), so xarray decodes it to dates; ``time_hours`` (h)
  is the same axis as plain numbers;
* SQG and ViT states have ``x``, ``y`` (m, eastward and northward distance) and ``z`` (m,
  the two boundaries), Lorenz-96 states an index ``i``.

The scores' units follow the state (K for SQG and the ViT); innovations are in the
observations' units (those of the state for identity and subset operators, ``1`` for
arctan observations).

The rules every Dataset of the kit follows, :class:`~turbda_kit.cf.VariableInfo` and the
generic :func:`~turbda_kit.cf.describe` are in :mod:`turbda_kit.cf`; the scaling studies
(:mod:`turbda_kit.experiments.scaling_results`) and sweeps
(:mod:`turbda_kit.experiments.sweep`) use them with this module's time coordinates.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..cf import CONVENTIONS, VariableInfo
from ..data.time_axis import time_attrs

__all__ = [
    "VARIABLES",
    "describe_dataset",
    "grid_coordinates",
    "obs_units",
    "state_description",
    "time_coordinates",
]

VARIABLES: dict[str, VariableInfo] = {
    "rmse_forecast": VariableInfo("RMSE of the forecast ensemble mean against the truth",
                                  "state"),
    "rmse_analysis": VariableInfo("RMSE of the analysis ensemble mean against the truth",
                                  "state"),
    "spread_forecast": VariableInfo("forecast ensemble spread (square root of the mean "
                                    "member variance, m - 1 denominator)", "state"),
    "spread_analysis": VariableInfo("analysis ensemble spread (square root of the mean "
                                    "member variance, m - 1 denominator)", "state"),
    "crps_forecast": VariableInfo("fair ensemble CRPS of the forecast, mean over the state",
                                  "state"),
    "crps_analysis": VariableInfo("fair ensemble CRPS of the analysis, mean over the state",
                                  "state"),
    "innovation_mean": VariableInfo("mean of the observations minus the forecast-mean "
                                    "observation", "obs"),
    "innovation_std": VariableInfo("standard deviation of the innovations", "obs"),
    "shock_std": VariableInfo("standard deviation of the jump noise added to the truth "
                              "this cycle (0: none)", "state"),
    "time_forecast_s": VariableInfo("wall time of the forecast step", "s"),
    "time_analysis_s": VariableInfo("wall time of observing and analysing", "s"),
    "rank_histogram": VariableInfo("count of state elements whose truth has this rank "
                                   "among the analysis members, after spin-up", "1"),
    "surrogate_drift": VariableInfo("RMSE between the surrogate's and the physical model's "
                                    "one-cycle forecast of the same analysis mean", "state"),
    "rmse_forecast_surrogate": VariableInfo("RMSE against the truth of the surrogate's "
                                            "one-cycle forecast of the previous analysis "
                                            "mean", "state"),
    "rmse_forecast_physics": VariableInfo("RMSE against the truth of the physical model's "
                                          "one-cycle forecast of the previous analysis mean "
                                          "(the surrogate's comparison)", "state"),
    "truth": VariableInfo("true state (with the jump noise on shock cycles)", "state"),
    "forecast_mean": VariableInfo("forecast ensemble mean", "state"),
    "analysis_mean": VariableInfo("analysis ensemble mean", "state"),
    "forecast_ensemble": VariableInfo("forecast ensemble members", "state"),
    "analysis_ensemble": VariableInfo("analysis ensemble members", "state"),
    "cycle": VariableInfo("analysis cycle (1 is the first analysis, 0 the initial "
                          "ensemble)", "1"),
    "rank": VariableInfo("rank of the truth among the analysis members (members below it)",
                         "1"),
    "member": VariableInfo("ensemble member", "1"),
    "time_hours": VariableInfo("model time since cycle 0", "h"),
    "i": VariableInfo("grid point index on the ring", "1"),
    "lead_time": VariableInfo("forecast lead time (from the analysis it starts from)", "h",
                              "forecast_period"),
    "rmse_forecast_lead": VariableInfo("RMSE against the truth of forecasts launched from "
                                       "the analyses after spin-up, by lead time, mean over "
                                       "launches", "state"),
    "n_forecasts_lead": VariableInfo("number of forecasts scored at this lead time", "1"),
    "rmse_persistence_lead": VariableInfo("RMSE of persistence (the truth at the launch "
                                          "cycle) on the same launches, by lead time",
                                          "state"),
    "rmse_climatology": VariableInfo("RMSE of the truth's time mean over the scored cycles "
                                     "as their forecast (sample climatology)", "state"),
    "rmse_obs_only": VariableInfo("RMSE of the observations as the analysis (every point "
                                  "observed linearly; NaN otherwise)", "state"),
}
"""What each variable the cycling engine writes is; ``run_cycling(diagnostics=...)`` can
declare more through a ``variable_attrs`` attribute of the callable."""

# Scores named like these are in the units of the state (a diagnostic that forgot to say).
_STATE_UNIT_PREFIXES = ("rmse", "spread", "crps", "bias", "mae")

_SQG_STATE = {"K": ("boundary potential temperature anomaly", "K"),
              "pv": ("boundary potential vorticity (scaled potential temperature)", "m s-1")}


def state_description(model: Any, attrs: Mapping[str, Any] | None = None,
                      state_units: str | None = None) -> tuple[str, str]:
    """``(name, units)`` of the state a model steps.

    Parameters
    ----------
    model : ForecastModel
        An SQG model says it itself (``state_units``); a Lorenz-96 model is
        non-dimensional; the ViT presets (``attrs["model"] == "vit"``) step K.
    attrs : mapping, optional
        The run's attributes (``model`` as the experiment builder records it).
    state_units : str, optional
        Given units win over everything else.

    Returns
    -------
    tuple of str
        A long name of the state ("" when unknown) and its UDUNITS units (``"1"`` when
        nothing says otherwise).
    """
    kind = str((attrs or {}).get("model", ""))
    units = getattr(model, "state_units", None)
    if isinstance(units, str) and units in _SQG_STATE:
        name, found = _SQG_STATE[units]
    elif kind in ("sqg", "vit"):
        name, found = _SQG_STATE["K"]
    elif kind == "lorenz96" or type(model).__name__ == "Lorenz96":
        name, found = "Lorenz-96 state variable (non-dimensional)", "1"
    else:
        name, found = "", "1"
    return name, state_units or found


def obs_units(operator: Any, state_units: str) -> str:
    """Units of the observations ``operator`` makes from a state in ``state_units``.

    Arctan observations are dimensionless (``"1"``); identity, subsets and compositions of
    them keep the state's units; an operator with a ``units`` attribute says it itself.
    """
    declared = getattr(operator, "units", None)
    if isinstance(declared, str) and declared:
        return declared
    parts = [operator]
    while parts:
        part = parts.pop()
        if type(part).__name__ == "Arctan":
            return "1"
        parts += [p for p in (getattr(part, "outer", None), getattr(part, "inner", None))
                  if p is not None]
    return state_units


def _grid_lengths(model: Any, attrs: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """``(L, H)`` in m of an SQG-like grid: from ``model.params`` or the recorded
    ``attrs["model_settings"]`` (the ViT presets record their SQG grid there)."""
    params = getattr(model, "params", None)
    if params is not None and hasattr(params, "L") and hasattr(params, "H"):
        return float(params.L), float(params.H)
    settings = (attrs or {}).get("model_settings")
    if isinstance(settings, str):
        try:
            settings = ast.literal_eval(settings)
        except (ValueError, SyntaxError):
            settings = None
    if isinstance(settings, Mapping) and "L" in settings and "H" in settings:
        return float(settings["L"]), float(settings["H"])
    return None


def grid_coordinates(state_dims: Sequence[str], state_shape: Sequence[int], model: Any = None,
                     attrs: Mapping[str, Any] | None = None) -> dict[str, tuple]:
    """CF coordinates of one state's dimensions.

    Parameters
    ----------
    state_dims : sequence of str
        ``("z", "y", "x")`` for SQG and the ViT, ``("i",)`` for Lorenz-96, or others.
    state_shape : sequence of int
    model : ForecastModel, optional
        An SQG model gives the domain size ``L`` and lid height ``H`` (m).
    attrs : mapping, optional
        Or the run's ``model_settings`` (with ``L`` and ``H``) give them.

    Returns
    -------
    dict
        ``{dim: (dim, values, attrs)}``: ``x``/``y`` in m (``L / N`` apart, from 0),
        ``z`` = [0, H] m, and an index with units ``"1"`` for every other dimension (and
        for x/y/z when the grid's size is unknown).
    """
    lengths = _grid_lengths(model, attrs)
    coords: dict[str, tuple] = {}
    for dim, size in zip(state_dims, state_shape):
        if lengths is not None and dim in ("x", "y"):
            length = lengths[0]
            axis = {"x": ("X", "eastward distance", "projection_x_coordinate"),
                    "y": ("Y", "northward distance", "projection_y_coordinate")}[dim]
            coords[dim] = (dim, np.arange(size, dtype=np.float64) * length / size,
                           {"units": "m", "long_name": axis[1], "standard_name": axis[2],
                            "axis": axis[0]})
        elif lengths is not None and dim == "z" and size == 2:
            coords[dim] = (dim, np.array([0.0, lengths[1]]),
                           {"units": "m", "long_name": "height of the boundary (0: surface, "
                            "H: lid)", "standard_name": "height", "positive": "up",
                            "axis": "Z"})
        else:
            info = VARIABLES.get(dim)
            coords[dim] = (dim, np.arange(size), {
                "units": "1", "long_name": info.long_name if info else f"{dim} index"})
    return coords


def time_coordinates(cycles: np.ndarray, cycle_seconds: float, dim: str = "cycle"
                     ) -> dict[str, tuple]:
    """``time`` (CF, seconds since cycle 0) and ``time_hours`` along ``dim``.

    Parameters
    ----------
    cycles : array of int
        Cycle numbers (0 is the initial ensemble).
    cycle_seconds : float
        Model seconds per cycle.
    dim : str
        The dimension both lie along.
    """
    seconds = np.asarray(cycles, dtype=np.float64) * float(cycle_seconds)
    return {
        "time": (dim, seconds, time_attrs("model time since cycle 0 (the initial "
                                          "ensemble); the date is nominal", axis=False)),
        "time_hours": (dim, seconds / 3600.0, {"units": "h", "long_name":
                                               VARIABLES["time_hours"].long_name}),
    }


def describe_dataset(ds, state_units: str, obs_unit: str | None = None,
                     state_name: str = "", extra: Mapping[str, Mapping[str, str]] | None = None,
                     title: str | None = None):
    """Give every variable and coordinate of a result Dataset its CF attributes, in place.

    Parameters
    ----------
    ds : xarray.Dataset
        A cycling-engine Dataset (or its member file).
    state_units : str
        Units of the state (and of the scores).
    obs_unit : str, optional
        Units of the observations (default: the state's).
    state_name : str
        What the state is (e.g. "boundary potential temperature anomaly"), added to the
        long names of states and members.
    extra : mapping of name to attrs, optional
        Attributes of further variables (a diagnostic's ``variable_attrs``); they win.
    title : str, optional
        The Dataset's ``title``.

    Returns
    -------
    xarray.Dataset
        ``ds``, with ``Conventions = "CF-1.8"``.
    """
    obs_unit = obs_unit or state_units
    extra = dict(extra or {})
    for name in list(ds.data_vars) + list(ds.coords):
        attrs = ds[name].attrs
        info = VARIABLES.get(str(name))
        if info is not None:
            units = {"state": state_units, "obs": obs_unit}.get(info.units, info.units)
            long_name = info.long_name
            if state_name and name in ("truth", "forecast_mean", "analysis_mean",
                                       "forecast_ensemble", "analysis_ensemble"):
                long_name = f"{long_name}: {state_name}"
            attrs.setdefault("long_name", long_name)
            attrs.setdefault("units", units)
            if info.standard_name:
                attrs.setdefault("standard_name", info.standard_name)
        elif str(name).startswith(_STATE_UNIT_PREFIXES):
            attrs.setdefault("long_name", str(name).replace("_", " "))
            attrs.setdefault("units", state_units)
        attrs.update(extra.get(str(name), {}))
    ds.attrs["Conventions"] = CONVENTIONS
    if title:
        ds.attrs["title"] = title
    return ds
