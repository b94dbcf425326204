"""The cycling DA engine: forecast → observe → analyse → record, for any model and filter.

One loop serves every pairing (SQG, Lorenz-96 or the ViT surrogate; EnSF, LETKF or no
filter): the model is any :class:`~turbda_kit.models.base.ForecastModel` and the filter
any :class:`~turbda_kit.filters.base.Filter`. The maths lives elsewhere: models in
:mod:`turbda_kit.models`, analyses in :mod:`turbda_kit.filters`, scores in
:mod:`turbda_kit.metrics`; the truth comes from :mod:`turbda_kit.experiments.truth`.

All units are those of the truth and the ensemble (K for SQG experiments, whose model
steps temperatures: ``SQGModel(params, state_units="K")``).

Reliability
-----------
* Every random draw comes from a generator named by ``(seed, cycle, stream)``
  (:func:`turbda_kit.random_streams.cycle_generator`), so a run resumed from a checkpoint
  gives the same Dataset as an uninterrupted run (timings aside).
* A checkpoint is written atomically every ``checkpoint_every`` cycles into ``out_dir``;
  one that cannot be read is refused with an :class:`~turbda_kit.errors.InputError`
  naming the file.
* NaN/inf, an RMSE above ``divergence_rmse``, or a model or filter that gives up with
  its own :class:`~turbda_kit.errors.DivergenceError` (SQG's CFL check, a non-finite EnSF
  analysis) stops the run with a :class:`~turbda_kit.errors.DivergenceError` naming the
  cycle (``error.cycle``), after saving the last good ensemble.

Output
------
The returned Dataset is CF-1.8 (:mod:`turbda_kit.experiments.cf`): every variable has
``units`` and ``long_name``; ``time`` (decodable, seconds since cycle 0) and
``time_hours`` are coordinates along ``cycle``; states have ``x``/``y``/``z`` (m) or
``i``. With ``members=MemberOutput(path, kinds)`` the forecast and/or analysis members
of every cycle are streamed to a netCDF-4 file or zarr store
(:mod:`turbda_kit.experiments.members`), resumable with the checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pickle
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from .. import metrics, provenance
from ..device import synchronize
from ..errors import DivergenceError, InputError
from ..filters.base import Filter
from ..io import atomic_path
from ..models.base import ForecastModel
from ..obs.noise import ShockProcess
from ..progress import progress_bar
from ..random_streams import cycle_generator
from . import cf
from .members import MemberOutput, MemberWriter
from .skill import SkillConfig, SkillTracker, dense_linear_obs_rmse
from .truth import TruthSource

__all__ = [
    "CHECKPOINT_NAME",
    "DIVERGED_NAME",
    "PER_CYCLE_VARIABLES",
    "TIMING_VARIABLES",
    "CyclingConfig",
    "ObsNetwork",
    "cycle_observations",
    "operator_error_std",
    "run_cycling",
]

CHECKPOINT_NAME = "cycling_checkpoint.pt"
DIVERGED_NAME = "diverged_state.pt"


@dataclass(frozen=True)
class CyclingConfig:
    """Settings of a cycling experiment.

    Attributes
    ----------
    n_cycles : int
        Number of analysis cycles (≥ 1).
    steps_per_cycle : int
        Model steps between analyses (cycle length = steps_per_cycle · model.dt ·
        model.time_unit_seconds seconds).
    spinup_cycles : int
        Leading cycles excluded from the summary scores and the rank histogram.
    obs_error_std : float
        Observation error standard deviation (units of the observations), > 0.
    seed : int
        Root seed of every random stream.
    checkpoint_every : int
        Cycles between checkpoints (0: never) when an ``out_dir`` is given.
    divergence_rmse : float
        Stop when the analysis (or forecast) RMSE exceeds this (default: never).
    save_means : bool
        Also store truth and forecast/analysis ensemble means per cycle.
    """

    n_cycles: int
    steps_per_cycle: int
    obs_error_std: float
    spinup_cycles: int = 0
    seed: int = 0
    checkpoint_every: int = 10
    divergence_rmse: float = math.inf
    save_means: bool = False

    def __post_init__(self) -> None:
        if self.n_cycles < 1:
            raise InputError(f"n_cycles must be ≥ 1, got {self.n_cycles}")
        if self.steps_per_cycle < 1:
            raise InputError(f"steps_per_cycle must be ≥ 1, got {self.steps_per_cycle}")
        if not 0 <= self.spinup_cycles < self.n_cycles:
            raise InputError(f"spinup_cycles must be in [0, n_cycles={self.n_cycles}), "
                             f"got {self.spinup_cycles}")
        if not self.obs_error_std > 0:
            raise InputError(f"obs_error_std must be > 0, got {self.obs_error_std}")
        if self.checkpoint_every < 0:
            raise InputError(f"checkpoint_every must be ≥ 0, got {self.checkpoint_every}")
        if not self.divergence_rmse > 0:
            raise InputError(f"divergence_rmse must be > 0, got {self.divergence_rmse}")


ObsNetwork = Callable[[int, torch.Generator], Any]
"""A per-cycle observation operator: ``network(cycle, generator) -> obs operator``."""

PER_CYCLE_VARIABLES = (
    "rmse_forecast", "rmse_analysis", "spread_forecast", "spread_analysis",
    "crps_forecast", "crps_analysis", "innovation_mean", "innovation_std",
    "shock_std", "time_forecast_s", "time_analysis_s",
)
TIMING_VARIABLES = ("time_forecast_s", "time_analysis_s")


def cycle_observations(obs_operator, true_state: Tensor, obs_error_std: float | Tensor, seed: int,
                       cycle: int) -> Tensor:
    """The synthetic observations of one cycle: ``H(truth) + obs_error_std * xi``.

    ``xi`` is standard normal from the ``(seed, cycle, "obs_noise")`` stream, so every run
    of an experiment (any filter, resumed or not) sees the same observations.

    Parameters
    ----------
    obs_operator : callable
        ``H: (*state_shape) -> (n_obs,)``.
    true_state : Tensor, shape (*state_shape)
        The (possibly shocked) truth of this cycle.
    obs_error_std : float or Tensor of shape (n_obs,)
        Observation error standard deviation(s) (observation units).
    seed, cycle : int
        Name the noise stream.

    Returns
    -------
    Tensor, shape (n_obs,)
    """
    clean = obs_operator(true_state)
    noise = torch.empty_like(clean).normal_(
        generator=cycle_generator(seed, cycle, "obs_noise", clean.device))
    if isinstance(obs_error_std, Tensor):
        obs_error_std = obs_error_std.to(dtype=clean.dtype, device=clean.device)
    return clean + obs_error_std * noise


def operator_error_std(obs_operator: Any, default: float) -> float | Tensor:
    """The observation error std of ``obs_operator``: its own per-observation values when
    it carries them (``obs_error_std`` attribute, e.g. a mixed
    :class:`~turbda_kit.obs.networks.PointNetwork`), else ``default``."""
    own = getattr(obs_operator, "obs_error_std", None)
    return default if own is None else own


def _check_model(model: Any) -> None:
    if not isinstance(model, ForecastModel):
        missing = [name for name in ("state_shape", "dt", "time_unit_seconds", "step", "advance")
                   if not hasattr(model, name)]
        raise InputError(f"model {model!r} is not a ForecastModel (missing: "
                         f"{', '.join(missing)}); see turbda_kit.models.base.ForecastModel")


def _check_filter(analysis: Any) -> None:
    if analysis is not None and not isinstance(analysis, Filter):
        raise InputError(f"analysis {analysis!r} is not a Filter (a callable with a `name`): "
                         "use turbda_kit.filters.make_filter(...), or wrap a function with "
                         "turbda_kit.filters.as_filter(function, name)")


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint written by :func:`run_cycling`; InputError naming the file otherwise."""
    keys = ("fingerprint", "cycle", "ensemble", "records", "rank_hist")
    try:
        saved = torch.load(path, weights_only=True, map_location=device)
        if not isinstance(saved, dict) or any(k not in saved for k in keys):
            raise KeyError(", ".join(k for k in keys if not isinstance(saved, dict)
                                     or k not in saved))
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as err:
        raise InputError(
            f"{path} is not a readable cycling checkpoint (expected a torch.save file written "
            f"by run_cycling, with {', '.join(keys)}; it is truncated or damaged: "
            f"{type(err).__name__}: {err}). Delete it to restart the experiment from cycle 1, "
            "or give another out_dir") from err
    return saved


def _fingerprint(config: CyclingConfig, name: str, member_count: int, state_shape,
                 members: MemberOutput | None = None, skill: SkillConfig | None = None) -> str:
    settings = {"config": dataclasses.asdict(config), "name": name, "members": member_count,
                "state_shape": list(state_shape)}
    if members is not None:  # only then: checkpoints of runs without members stay valid
        settings["saved_members"] = list(members.kinds)
    if skill is not None:    # likewise
        settings["skill"] = dataclasses.asdict(skill)
    return json.dumps(settings, sort_keys=True, default=str)


def _netcdf_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes netCDF can store: booleans as text, None left out."""
    return {k: (str(v) if isinstance(v, bool) else v) for k, v in attrs.items() if v is not None}


def _check_finite(tensor: Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def run_cycling(model: ForecastModel, analysis: Filter | None, obs_operator: Any,
                truth: TruthSource, initial_ensemble: Tensor, config: CyclingConfig,
                out_dir: str | os.PathLike | None = None, name: str = "experiment",
                shocks: ShockProcess | None = None, state_dims: tuple[str, ...] | None = None,
                attrs: dict[str, Any] | None = None,
                on_cycle_end: Callable[[int, dict[str, float]], None] | None = None,
                diagnostics: Callable[..., dict[str, float]] | None = None,
                show_progress: bool | None = None, members: MemberOutput | None = None,
                state_units: str | None = None, skill: SkillConfig | None = None):
    """Run a cycling DA experiment and return its per-cycle scores as a Dataset.

    Parameters
    ----------
    model : ForecastModel
        Forecast model; ``advance`` takes ``(member, *state_shape)``; ``dt *
        time_unit_seconds`` is one step in seconds of model time.
    analysis : Filter or None
        The filter's analysis step (:func:`turbda_kit.filters.make_filter`); ``None`` gives
        a free run (forecasts only).
    obs_operator : obs operator or ObsNetwork
        An operator ``H(state (…, *state_shape)) -> (…, n_obs)``, or a callable
        ``(cycle, generator) -> operator`` for networks that change every cycle.
    truth : TruthSource
        ``truth.state(k)`` is the true state at cycle ``k`` (k = 0 … n_cycles)
        (:mod:`turbda_kit.experiments.truth`).
    initial_ensemble : Tensor, shape (member, *state_shape)
        Ensemble at cycle 0 (its device and dtype are used throughout).
    config : CyclingConfig
    out_dir : path-like, optional
        Where checkpoints and the divergence state go; a run finding a checkpoint of the
        same settings there resumes from it.
    name : str
        Experiment name (stored in attrs).
    shocks : ShockProcess, optional
        Jump-noise process (:class:`turbda_kit.obs.noise.ShockProcess`; its own generator
        is replaced by the cycle's ``"shock"`` stream): the perturbed truth is what is
        observed and scored at that cycle.
    state_dims : tuple of str, optional
        Dimension names of one state (default ``("i",)`` for 1-D, ``("z", "y", "x")`` for 3-D).
    attrs : dict, optional
        Extra attributes (e.g. model and filter settings).
    on_cycle_end : callable, optional
        Called as ``on_cycle_end(cycle, record)`` after each cycle (logging, tests).
    diagnostics : callable, optional
        ``diagnostics(cycle, start_ensemble, forecast, analysis, truth) -> dict[str, float]``;
        each key becomes an extra per-cycle variable (e.g. the surrogate drift). Its CF
        attributes come from :data:`turbda_kit.experiments.cf.VARIABLES` or from a
        ``variable_attrs`` attribute of the callable (``{name: {"units": ..., "long_name":
        ...}}``).
    show_progress : bool, optional
        Progress reporting (default: rank 0).
    members : MemberOutput, optional
        Stream the forecast and/or analysis members of every cycle, and the truth, to
        ``members.path`` (netCDF-4 or zarr, one chunk per cycle; see
        :mod:`turbda_kit.experiments.members`). A run resumed from a checkpoint goes on
        writing the same store.
    state_units : str, optional
        Units of the state, for the CF attributes (default: from the model —
        ``SQGModel.state_units``; K for the ViT presets, ``attrs["model"] == "vit"``; ``1``
        for Lorenz-96 and models that do not say).
    skill : SkillConfig, optional
        Launch forecasts from the analyses and score them by lead time, with the
        persistence, climatology and observations-only baselines
        (:mod:`turbda_kit.experiments.skill`): variables ``rmse_forecast_lead``,
        ``n_forecasts_lead``, ``rmse_persistence_lead`` along a ``lead_time`` coordinate
        (h), ``rmse_climatology`` and per cycle ``rmse_obs_only``.

    Returns
    -------
    xarray.Dataset
        Dims ``cycle`` (1 … n_cycles), ``rank`` (rank-histogram bins) and the state's;
        coordinates ``time`` (CF, seconds since cycle 0) and ``time_hours`` along
        ``cycle``, ``x``/``y``/``z`` (m) or ``i``; variables listed in
        :data:`PER_CYCLE_VARIABLES`, ``rank_histogram``, summary scores in attrs
        (``mean_rmse_analysis`` etc. over cycles after spin-up), optionally
        ``truth``/``forecast_mean``/``analysis_mean``; ``attrs["members_file"]`` names
        the member file's final name when ``members`` is given. CF-1.8 throughout.

    Raises
    ------
    InputError
        A model or filter that does not fit the protocols, shapes that disagree, or a
        checkpoint in ``out_dir`` of other settings or that cannot be read.
    DivergenceError
        NaN/inf or RMSE above ``config.divergence_rmse``; the last good ensemble is saved
        in ``out_dir/diverged_state.pt`` (when ``out_dir`` is given).
    """
    _check_model(model)
    _check_filter(analysis)
    ensemble = initial_ensemble
    if ensemble.ndim < 2 or ensemble.shape[0] < 1:
        raise InputError(f"initial_ensemble must be (member, *state_shape), got {tuple(ensemble.shape)}")
    state_shape = tuple(ensemble.shape[1:])
    if tuple(model.state_shape) != state_shape:
        raise InputError(f"ensemble state shape {state_shape} does not match the model's "
                         f"{tuple(model.state_shape)}")
    truth0 = truth.state(0)
    if tuple(truth0.shape) != state_shape:
        raise InputError(f"truth state shape {tuple(truth0.shape)} does not match the model "
                         f"grid {state_shape}: use truth data of the same resolution")
    if state_dims is None:
        state_dims = ("i",) if len(state_shape) == 1 else ("z", "y", "x")[-len(state_shape):]
    device = ensemble.device
    n_members = ensemble.shape[0]
    n = config.n_cycles
    records = {k: np.full(n, np.nan) for k in PER_CYCLE_VARIABLES}
    extra: dict[str, np.ndarray] = {}
    rank_hist = np.zeros(n_members + 1, dtype=np.int64)
    means = {k: np.full((n, *state_shape), np.nan, dtype=np.float32)
             for k in ("truth", "forecast_mean", "analysis_mean")} if config.save_means else {}

    fingerprint = _fingerprint(config, name, n_members, state_shape, members, skill)
    tracker = None if skill is None else SkillTracker(skill, model, config.steps_per_cycle, n,
                                                      config.spinup_cycles)
    out = Path(out_dir) if out_dir is not None else None
    start_cycle = 1
    state_name, units = cf.state_description(model, attrs, state_units)
    model_seconds = config.steps_per_cycle * float(model.dt) * float(model.time_unit_seconds)
    cycles = np.arange(1, n + 1)
    coords: dict[str, Any] = {"cycle": ("cycle", cycles, {}),
                              **cf.time_coordinates(cycles, model_seconds),
                              **cf.grid_coordinates(state_dims, state_shape, model, attrs)}
    if out is not None and (out / CHECKPOINT_NAME).exists():
        saved = _load_checkpoint(out / CHECKPOINT_NAME, device)
        if saved["fingerprint"] != fingerprint:
            raise InputError(f"{out / CHECKPOINT_NAME} belongs to an experiment with other "
                             "settings: use another out_dir or delete the checkpoint")
        start_cycle = int(saved["cycle"]) + 1
        ensemble = saved["ensemble"].to(device)
        for k in records:
            records[k] = saved["records"][k].numpy().copy()
        extra = {k: v.numpy().copy() for k, v in saved.get("extra", {}).items()}
        rank_hist = saved["rank_hist"].numpy().copy()
        for k in means:
            means[k] = saved["means"][k].numpy().copy()
        if hasattr(truth, "set_state") and "truth" in saved:
            truth.set_state(saved["truth"])
        if tracker is not None and "skill" in saved:
            tracker.load_state_dict(saved["skill"], device)
    run_attrs = {"experiment": name, "n_members": n_members,
                 **{f"config_{k}": (str(v) if isinstance(v, bool) else v)
                    for k, v in dataclasses.asdict(config).items()},
                 **(attrs or {}), **provenance.as_attrs(provenance.collect())}
    writer = None if members is None else MemberWriter(
        members, n_cycles=n, n_members=n_members, state_dims=state_dims,
        state_shape=state_shape, dtype=ensemble.dtype, coords=coords,
        attrs=_netcdf_attrs(run_attrs), fingerprint=fingerprint, state_units=units,
        state_name=state_name, resume=start_cycle > 1)

    def save_checkpoint(cycle: int, path: Path) -> None:
        payload = {"fingerprint": fingerprint, "cycle": cycle, "ensemble": ensemble.cpu(),
                   "records": {k: torch.from_numpy(v) for k, v in records.items()},
                   "rank_hist": torch.from_numpy(rank_hist),
                   "extra": {k: torch.from_numpy(v) for k, v in extra.items()},
                   "means": {k: torch.from_numpy(v) for k, v in means.items()}}
        if hasattr(truth, "get_state"):
            payload["truth"] = {k: (v.cpu() if isinstance(v, Tensor) else v)
                                for k, v in truth.get_state().items()}
        if tracker is not None:
            payload["skill"] = tracker.state_dict()
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def _diverged(cycle: int, reason: str) -> DivergenceError:
        """Save the last good ensemble (and the scores so far) and build the error."""
        saved_path = None
        if out is not None:
            saved_path = str(out / DIVERGED_NAME)
            out.mkdir(parents=True, exist_ok=True)
            save_checkpoint(cycle - 1, Path(saved_path))
        if writer is not None:
            writer.close()
        error = DivergenceError(f"{name} diverged at cycle {cycle}: {reason}; last good "
                                f"ensemble (cycle {cycle - 1}) saved to {saved_path}", saved_path)
        error.cycle = cycle
        return error

    bar = progress_bar(n - start_cycle + 1, desc=f"cycling {name}", enabled=show_progress)
    for cycle in range(start_cycle, n + 1):
        t0 = time.perf_counter()
        try:
            forecast = model.advance(ensemble, config.steps_per_cycle)
        except DivergenceError as err:  # the model's own blow-up checks (e.g. SQG's CFL)
            bar.close()
            raise _diverged(cycle, f"the forecast model stopped: {err}") from err
        synchronize(device)
        t1 = time.perf_counter()
        true_state = truth.state(cycle)
        shock_std = 0.0
        if shocks is not None:
            # A fresh generator per cycle keeps resumed runs identical to uninterrupted ones.
            process = copy.copy(shocks)
            process.generator = cycle_generator(config.seed, cycle, "shock", device)
            true_state, shock = process.apply(true_state)
            shock_std = shock.std
        operator = (obs_operator(cycle, cycle_generator(config.seed, cycle, "obs_network", "cpu"))
                    if callable(obs_operator) and not hasattr(obs_operator, "n_obs")
                    else obs_operator)
        obs_error_std = operator_error_std(operator, config.obs_error_std)
        obs = cycle_observations(operator, true_state, obs_error_std, config.seed, cycle)
        t2 = time.perf_counter()
        if analysis is not None:
            try:
                analysed = analysis(forecast, obs, operator, obs_error_std,
                                    cycle_generator(config.seed, cycle, "analysis", device))
            except DivergenceError as err:  # the filter's own checks (e.g. a non-finite EnSF)
                bar.close()
                raise _diverged(cycle, f"the filter stopped: {err}") from err
        else:
            analysed = forecast
        synchronize(device)
        t3 = time.perf_counter()

        innovation = metrics.innovation_stats(obs, operator(forecast))
        rec = {
            "rmse_forecast": float(metrics.rmse(forecast, true_state)),
            "rmse_analysis": float(metrics.rmse(analysed, true_state)),
            "spread_forecast": float(metrics.spread(forecast)),
            "spread_analysis": float(metrics.spread(analysed)),
            "crps_forecast": float(metrics.crps(forecast, true_state)),
            "crps_analysis": float(metrics.crps(analysed, true_state)),
            "innovation_mean": float(innovation.mean),
            "innovation_std": float(innovation.std),
            "shock_std": float(shock_std),
            "time_forecast_s": t1 - t0,
            "time_analysis_s": t3 - t2,
        }
        diverged = not (_check_finite(forecast) and _check_finite(analysed))
        worst = max(rec["rmse_forecast"], rec["rmse_analysis"])
        if diverged or not worst <= config.divergence_rmse:
            bar.close()
            raise _diverged(cycle, "NaN/inf in the ensemble" if diverged else (
                f"RMSE {worst:.4g} above divergence_rmse={config.divergence_rmse}"))
        for k, v in rec.items():
            records[k][cycle - 1] = v
        if diagnostics is not None:
            for k, v in diagnostics(cycle, ensemble, forecast, analysed, true_state).items():
                extra.setdefault(k, np.full(n, np.nan))[cycle - 1] = float(v)
        if tracker is not None:
            if skill.baselines:
                extra.setdefault("rmse_obs_only", np.full(n, np.nan))[cycle - 1] = \
                    dense_linear_obs_rmse(operator, obs, true_state)
            tracker.update(cycle, analysed, true_state)
        if cycle > config.spinup_cycles:
            rank_hist += metrics.rank_histogram(analysed, true_state).cpu().numpy().astype(np.int64)
        if writer is not None:
            writer.write(cycle, forecast, analysed, true_state)
        if means:
            means["truth"][cycle - 1] = true_state.float().cpu().numpy()
            means["forecast_mean"][cycle - 1] = forecast.mean(0).float().cpu().numpy()
            means["analysis_mean"][cycle - 1] = analysed.mean(0).float().cpu().numpy()
        ensemble = analysed
        wall = rec["time_forecast_s"] + rec["time_analysis_s"]
        bar.set_postfix_str(f"rmse_a {rec['rmse_analysis']:.3g} spread {rec['spread_analysis']:.3g}"
                            f" real-time x{model_seconds / wall:.3g}" if wall > 0 else "")
        bar.update(1)
        if out is not None and config.checkpoint_every and cycle % config.checkpoint_every == 0:
            out.mkdir(parents=True, exist_ok=True)
            save_checkpoint(cycle, out / CHECKPOINT_NAME)
        if on_cycle_end is not None:
            on_cycle_end(cycle, rec)
    bar.close()

    data_vars: dict[str, Any] = {k: ("cycle", v) for k, v in records.items()}
    data_vars.update({k: ("cycle", v) for k, v in extra.items()})
    data_vars["rank_histogram"] = ("rank", rank_hist)
    for k, v in means.items():
        data_vars[k] = (("cycle", *state_dims), v)
    skill_coords: dict[str, Any] = {}
    if tracker is not None:
        skill_vars, skill_coords = tracker.data_vars(model_seconds / 3600.0)
        data_vars.update(skill_vars)
    ds = xr.Dataset(data_vars, coords={**coords, **skill_coords,
                                       "rank": ("rank", np.arange(n_members + 1))})
    scored = slice(config.spinup_cycles, None)
    wall_per_cycle = records["time_forecast_s"] + records["time_analysis_s"]
    summary = {
        "experiment": name,
        "filter": analysis.name if analysis is not None else "free",
        "n_members": n_members,
        "mean_rmse_analysis": float(np.mean(records["rmse_analysis"][scored])),
        "mean_rmse_forecast": float(np.mean(records["rmse_forecast"][scored])),
        "mean_spread_analysis": float(np.mean(records["spread_analysis"][scored])),
        "mean_crps_analysis": float(np.mean(records["crps_analysis"][scored])),
        "mean_wall_seconds_per_cycle": float(np.mean(wall_per_cycle)),
        "cycle_model_seconds": model_seconds,
        "realtime_factor": float(model_seconds / np.mean(wall_per_cycle)),
    }
    if tracker is not None and skill.baselines:
        obs_only = extra["rmse_obs_only"][scored]
        summary["mean_rmse_obs_only"] = (float(np.mean(obs_only)) if np.isfinite(obs_only).all()
                                         else math.nan)
        summary["rmse_climatology"] = tracker.climatology_rmse()
    ds.attrs.update(summary)
    ds.attrs.update(run_attrs)
    observed = operator if start_cycle <= n else obs_operator
    cf.describe_dataset(ds, units, cf.obs_units(observed, units), state_name,
                        extra=getattr(diagnostics, "variable_attrs", None),
                        title=f"turbda_kit cycling experiment {name}")
    if writer is not None:
        ds.attrs["members_file"] = members.path.name
        writer.finish({k: v for k, v in _netcdf_attrs(dict(ds.attrs)).items()
                       if k.startswith(("mean_", "realtime", "members"))})
    return ds
