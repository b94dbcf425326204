"""Autoregressive rollouts of the surrogate and their scores against a truth trajectory.

A rollout feeds each forecast back as the next input: ``x_{k+1} = model(x_k, lead)``. The
model works on normalised fields; everything returned here is in physical units (K for
SQG) through the data set's :class:`~turbda_kit.data.shards.Normaliser`. The model is a
ViT or any :data:`ForecastFunction`; the forecast model of the cycling engine,
:class:`~turbda_kit.surrogate.forecast_model.SurrogateModel`, is built on
:func:`iter_rollout`.

* :func:`iter_rollout` — a generator yielding one forecast per step (memory for one step);
* :func:`rollout` — the stacked forecasts ``(n_steps, B, V, N, N)``;
* :func:`rollout_rmse` — RMSE per lead step and variable over every window of a truth
  trajectory, with the persistence baseline (and climatology when given);
* :func:`trajectory_windows`, :func:`split_trajectory` — truth windows from a trajectory,
  and one split of a shard root as a single contiguous trajectory.

Everything is batched over initial states, runs on the model's device and leaves the
model's train/eval mode as it found it.

Example
-------
>>> from turbda_kit.surrogate.rollout import rollout, rollout_rmse, split_trajectory
>>> from turbda_kit.surrogate.export import load_surrogate
>>> from turbda_kit.data.shards import open_shards
>>> model, _ = load_surrogate("runs/03_train_vit/surrogate.pt")      # doctest: +SKIP
>>> catalog = open_shards("runs/02_preprocess/shards")                # doctest: +SKIP
>>> truth, hours = split_trajectory(catalog, "test")                  # doctest: +SKIP
>>> forecast = rollout(model, truth[:4], 10, 12.0, catalog.normaliser)  # (10, 4, 2, 64, 64) K
>>> scores = rollout_rmse(model, truth, 10, 12.0, catalog.normaliser)   # doctest: +SKIP
>>> scores.rmse[0], scores.persistence_rmse[0]         # 12-h RMSE per variable, K
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.datasets import TrajectoryPairs
from ..data.normaliser import Normaliser
from ..data.shards import ShardCatalog, open_shards
from ..errors import InputError

__all__ = ["ForecastFunction", "iter_rollout", "rollout", "trajectory_windows",
           "rmse_per_variable", "RolloutScores", "rollout_rmse", "split_trajectory",
           "SplitRollout", "score_test_split", "TrajectoryPairs"]

ForecastFunction = Callable[[Tensor, Tensor], Tensor]
"""``f(fields (B, V, N, N), lead_time_hours (B,)) -> (B, V, N, N)`` on normalised fields:
a ViT, ``TrainResult.predict``, or any such function. (A type alias for the functions the
rollout accepts, not a model protocol: the forecast-model interface is
``turbda_kit.models.base.ForecastModel``.)"""


# ----------------------------------------------------------------------------- checks


def _check_fields(name: str, fields: Any, ndim: int, layout: str) -> Tensor:
    if not isinstance(fields, Tensor):
        raise InputError(f"{name} must be a torch.Tensor {layout}, got {type(fields).__name__}")
    if fields.dim() != ndim:
        raise InputError(f"{name} must have shape {layout}, got {tuple(fields.shape)}")
    if not fields.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got {fields.dtype}")
    return fields


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}={value!r} must be an integer >= 1")
    return int(value)


def _check_lead(lead_time_hours: Any) -> float:
    if isinstance(lead_time_hours, bool) or not isinstance(lead_time_hours, (int, float)) \
            or not math.isfinite(lead_time_hours) or lead_time_hours <= 0:
        raise InputError(f"lead_time_hours={lead_time_hours!r} must be a number of hours > 0")
    return float(lead_time_hours)


def _model_device_dtype(model: ForecastFunction, fallback: Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's parameters (else of ``fallback``)."""
    if isinstance(model, nn.Module):
        for parameter in model.parameters():
            if parameter.is_floating_point():
                # Fields follow float64 weights; otherwise they stay float32 (a
                # low-precision model casts inside, as under autocast).
                dtype = parameter.dtype if parameter.dtype == torch.float64 else torch.float32
                return parameter.device, dtype
    return fallback.device, fallback.dtype if fallback.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _evaluating(model: ForecastFunction) -> Iterator[None]:
    """Eval mode and no autograd for the rollout; the caller's mode is restored after."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


# ----------------------------------------------------------------------------- rollouts


def iter_rollout(model: ForecastFunction, initial: Tensor, n_steps: int, lead_time_hours: float,
                 normaliser: Normaliser | None = None, *, normalised: bool = False
                 ) -> Iterator[Tensor]:
    """Yield the autoregressive forecasts one step at a time, in physical units.

    Parameters
    ----------
    model : nn.Module or callable
        ``model(fields (B, V, N, N), lead_time_hours (B,)) -> (B, V, N, N)`` on normalised
        fields. Its device (and float64 if its weights are float64) is used.
    initial : Tensor, shape (B, V, N, N)
        Initial states: physical (K), or normalised when ``normalised=True``.
    n_steps : int
        Forecast steps (>= 1).
    lead_time_hours : float
        Lead time of one step, hours (> 0); step ``k`` (from 1) is valid at
        ``k * lead_time_hours``.
    normaliser : Normaliser or None
        Maps physical fields to the model's normalised space and back. ``None``: the model
        works in the units of ``initial`` (and ``normalised`` must be False).
    normalised : bool
        Whether ``initial`` is already normalised.

    Yields
    ------
    Tensor, shape (B, V, N, N)
        Forecast of step 1, 2, ..., ``n_steps`` in physical units, on the model's device.

    Notes
    -----
    The generator holds one state; stop iterating early to roll out less. The model is
    in eval mode and autograd is off while the generator runs, so do not interleave it
    with training of the same model.
    """
    initial = _check_fields("initial", initial, 4, "(B, V, N, N)")
    n_steps = _check_positive_int("n_steps", n_steps)
    lead = _check_lead(lead_time_hours)
    if normalised and normaliser is None:
        raise InputError("normalised=True needs a normaliser to return physical units")
    device, dtype = _model_device_dtype(model, initial)
    state = initial.to(device=device, dtype=dtype)
    if normaliser is not None and not normalised:
        state = normaliser.normalise(state)
    leads = torch.full((state.shape[0],), lead, device=device, dtype=dtype)
    with _evaluating(model):
        for _ in range(n_steps):
            state = model(state, leads).to(dtype)
            yield state if normaliser is None else normaliser.denormalise(state)


def rollout(model: ForecastFunction, initial: Tensor, n_steps: int, lead_time_hours: float,
            normaliser: Normaliser | None = None, *, normalised: bool = False) -> Tensor:
    """Autoregressive forecasts of ``n_steps`` steps, stacked, in physical units.

    Parameters
    ----------
    model, initial, n_steps, lead_time_hours, normaliser, normalised
        As for :func:`iter_rollout`.

    Returns
    -------
    Tensor, shape (n_steps, B, V, N, N)
        ``out[k]`` is the forecast valid ``(k + 1) * lead_time_hours`` after ``initial``, in
        K for SQG data; on the model's device.
    """
    return torch.stack(list(iter_rollout(model, initial, n_steps, lead_time_hours, normaliser,
                                         normalised=normalised)))


# ----------------------------------------------------------------------------- scores


def trajectory_windows(trajectory: Tensor, n_steps: int, steps_per_lead: int = 1,
                       stride: int = 1) -> tuple[Tensor, Tensor]:
    """Initial states and their verifying truths from one trajectory.

    Parameters
    ----------
    trajectory : Tensor, shape (T, V, N, N)
        Consecutive states, equally spaced in time.
    n_steps : int
        Forecast steps per window.
    steps_per_lead : int
        Trajectory steps per forecast step (lead / trajectory spacing).
    stride : int
        Trajectory steps between consecutive initial times.

    Returns
    -------
    initial : Tensor, shape (B, V, N, N)
        States at ``t_i = i * stride`` for every ``i`` with a complete window.
    truth : Tensor, shape (n_steps, B, V, N, N)
        ``truth[k, i] = trajectory[t_i + (k + 1) * steps_per_lead]`` (views, no copy of
        the trajectory beyond the stacking).
    """
    trajectory = _check_fields("trajectory", trajectory, 4, "(T, V, N, N)")
    n_steps = _check_positive_int("n_steps", n_steps)
    steps_per_lead = _check_positive_int("steps_per_lead", steps_per_lead)
    stride = _check_positive_int("stride", stride)
    span = n_steps * steps_per_lead
    if trajectory.shape[0] <= span:
        raise InputError(f"trajectory has {trajectory.shape[0]} states but a window of "
                         f"n_steps={n_steps} x steps_per_lead={steps_per_lead} needs "
                         f"{span + 1}: use fewer steps or a longer trajectory")
    starts = torch.arange(0, trajectory.shape[0] - span, stride, device=trajectory.device)
    offsets = torch.arange(1, n_steps + 1, device=trajectory.device) * steps_per_lead
    truth = trajectory[starts[None, :] + offsets[:, None]]
    return trajectory[starts], truth


def rmse_per_variable(forecast: Tensor, truth: Tensor) -> Tensor:
    """Root-mean-square error per variable, pooled over cases and grid points.

    Parameters
    ----------
    forecast, truth : Tensor, shape (..., V, N, N)
        Same shape and units.

    Returns
    -------
    Tensor, shape (V,), float64
        ``sqrt(mean over (..., N, N) of (forecast - truth)^2)``, in the fields' units — the
        definition of the trainer's ``val_rmse_<var>`` scores.
    """
    if forecast.shape != truth.shape or forecast.dim() < 3:
        raise InputError(f"forecast {tuple(forecast.shape)} and truth {tuple(truth.shape)} must "
                         "have the same shape (..., V, N, N)")
    squared = (forecast.double() - truth.double()).square()
    return squared.transpose(0, -3).reshape(squared.shape[-3], -1).mean(dim=1).sqrt()


@dataclass(frozen=True)
class RolloutScores:
    """RMSE of a rollout against the truth, per lead step and variable, with baselines.

    Attributes
    ----------
    lead_hours : numpy.ndarray, shape (n_steps,)
        Lead time of each step, hours.
    rmse : numpy.ndarray, shape (n_steps, V)
        Surrogate RMSE (physical units, K for SQG), pooled over all windows and grid points.
    persistence_rmse : numpy.ndarray, shape (n_steps, V)
        RMSE of persistence (the initial state as the forecast at every lead).
    climatology_rmse : numpy.ndarray or None, shape (n_steps, V)
        RMSE of a fixed climatology field, when one was given.
    variables : tuple of str
        Variable names (``var0, var1, ...`` when unknown).
    n_cases : int
        Number of windows (initial times) scored.
    """

    lead_hours: np.ndarray
    rmse: np.ndarray
    persistence_rmse: np.ndarray
    climatology_rmse: np.ndarray | None
    variables: tuple[str, ...]
    n_cases: int

    @staticmethod
    def _pooled(rmse: np.ndarray) -> np.ndarray:
        return np.sqrt(np.mean(np.square(rmse), axis=-1))

    @property
    def rmse_all(self) -> np.ndarray:
        """``(n_steps,)`` RMSE pooled over variables, ``sqrt(mean_v rmse_v^2)``."""
        return self._pooled(self.rmse)

    @property
    def persistence_rmse_all(self) -> np.ndarray:
        """``(n_steps,)`` persistence RMSE pooled over variables."""
        return self._pooled(self.persistence_rmse)

    @property
    def skill_vs_persistence(self) -> np.ndarray:
        """``(n_steps,)`` ``1 - rmse_all / persistence_rmse_all`` (> 0: better than persistence;
        ``-inf`` where persistence is exact)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 - self.rmse_all / self.persistence_rmse_all

    def to_dataset(self):
        """The scores as a CF-1.8 ``xarray.Dataset`` with dims ``(lead, variable)``; lead in
        hours (``forecast_period``), RMSE in K."""
        import xarray as xr

        from ..cf import VariableInfo, describe

        data = {"rmse": (("lead", "variable"), self.rmse),
                "persistence_rmse": (("lead", "variable"), self.persistence_rmse)}
        if self.climatology_rmse is not None:
            data["climatology_rmse"] = (("lead", "variable"), self.climatology_rmse)
        pooled = f"pooled over {self.n_cases} windows and the grid"
        ds = xr.Dataset(data, coords={"lead": ("lead", self.lead_hours),
                                      "variable": list(self.variables)},
                        attrs={"n_cases": self.n_cases})
        return describe(ds, {
            "rmse": VariableInfo(f"RMSE of the surrogate's rollout against the truth, {pooled}",
                                 "K"),
            "persistence_rmse": VariableInfo("RMSE of persistence (the initial state) against "
                                             f"the truth, {pooled}", "K"),
            "climatology_rmse": VariableInfo("RMSE of the climatology against the truth, "
                                             f"{pooled}", "K"),
            "lead": VariableInfo("lead time of the forecast", "h", "forecast_period"),
            "variable": VariableInfo("forecast variable", ""),
        }, title="turbda_kit surrogate rollout scores")

    def to_dict(self) -> dict[str, Any]:
        """The scores as JSON-ready lists (``*_K`` per lead and variable, ``*_all_K`` pooled)."""
        out: dict[str, Any] = {
            "n_test_windows": self.n_cases, "lead_hours": self.lead_hours.tolist(),
            "variables": list(self.variables), "rmse_K": self.rmse.tolist(),
            "persistence_rmse_K": self.persistence_rmse.tolist(),
            "rmse_all_K": self.rmse_all.tolist(),
            "persistence_rmse_all_K": self.persistence_rmse_all.tolist()}
        if self.climatology_rmse is not None:
            out["climatology_rmse_K"] = self.climatology_rmse.tolist()
            out["climatology_rmse_all_K"] = self._pooled(self.climatology_rmse).tolist()
        return out

    def table(self) -> str:
        """A plain-text table: lead, then surrogate / persistence RMSE per variable."""
        head = "lead (h) " + "".join(f"| {v + ' ViT':>14} {v + ' pers.':>14} "
                                     for v in self.variables)
        rows = [head]
        for k, lead in enumerate(self.lead_hours):
            row = f"{lead:8.1f} " + "".join(f"| {self.rmse[k, j]:14.4f} "
                                            f"{self.persistence_rmse[k, j]:14.4f} "
                                            for j in range(len(self.variables)))
            rows.append(row)
        return "\n".join(rows)


def rollout_rmse(model: ForecastFunction, trajectory: Tensor, n_steps: int, lead_time_hours: float,
                 normaliser: Normaliser | None = None, *, hours_per_step: float | None = None,
                 stride: int = 1, batch_size: int = 64, climatology: Tensor | None = None,
                 variables: Sequence[str] | None = None) -> RolloutScores:
    """Score autoregressive rollouts from every window of a truth trajectory.

    Parameters
    ----------
    model : nn.Module or callable
        See :func:`iter_rollout`.
    trajectory : Tensor, shape (T, V, N, N)
        Truth in physical units (K), equally spaced by ``hours_per_step``.
    n_steps : int
        Forecast steps per window.
    lead_time_hours : float
        Lead of one forecast step, hours; a whole multiple of ``hours_per_step``.
    normaliser : Normaliser or None
        See :func:`iter_rollout`.
    hours_per_step : float or None
        Spacing of ``trajectory``, hours (default: ``lead_time_hours``).
    stride : int
        Trajectory steps between initial times of consecutive windows.
    batch_size : int
        Windows rolled out together (bounds memory; the scores do not depend on it).
    climatology : Tensor, shape (V, N, N), optional
        A fixed forecast (e.g. the training-split time mean) scored as a third baseline.
    variables : sequence of str, optional
        Names for the result (default: ``normaliser.variables`` when it has them).

    Returns
    -------
    RolloutScores
        RMSE per lead step and variable, pooled over all windows and grid points.
    """
    trajectory = _check_fields("trajectory", trajectory, 4, "(T, V, N, N)")
    lead = _check_lead(lead_time_hours)
    batch_size = _check_positive_int("batch_size", batch_size)
    spacing = lead if hours_per_step is None else _check_lead(hours_per_step)
    ratio = lead / spacing
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise InputError(f"lead_time_hours={lead} is not a whole multiple of the trajectory "
                         f"spacing hours_per_step={spacing}")
    n_vars = trajectory.shape[1]
    if climatology is not None:
        climatology = _check_fields("climatology", climatology, 3, "(V, N, N)")
        if climatology.shape != trajectory.shape[1:]:
            raise InputError(f"climatology has shape {tuple(climatology.shape)}; the "
                             f"trajectory's states are {tuple(trajectory.shape[1:])}")
    if variables is None:
        variables = getattr(normaliser, "variables", None) or [f"var{j}" for j in range(n_vars)]
    variables = tuple(str(v) for v in variables)
    if len(variables) != n_vars:
        raise InputError(f"variables={variables} names {len(variables)} channels; the "
                         f"trajectory has {n_vars}")
    initial, truth = trajectory_windows(trajectory, n_steps, int(round(ratio)), stride)
    n_cases = initial.shape[0]

    sums = {"model": torch.zeros(n_steps, n_vars, dtype=torch.float64),
            "persistence": torch.zeros(n_steps, n_vars, dtype=torch.float64),
            "climatology": torch.zeros(n_steps, n_vars, dtype=torch.float64)}

    def squared_sum(forecast: Tensor, verifying: Tensor) -> Tensor:
        err = forecast.double() - verifying.to(forecast.device).double()
        return err.square().sum(dim=(0, 2, 3)).cpu()

    for begin in range(0, n_cases, batch_size):
        chunk = slice(begin, min(begin + batch_size, n_cases))
        start = initial[chunk]
        for k, forecast in enumerate(iter_rollout(model, start, n_steps, lead, normaliser)):
            verifying = truth[k, chunk]
            sums["model"][k] += squared_sum(forecast, verifying)
            sums["persistence"][k] += squared_sum(start, verifying)
            if climatology is not None:
                sums["climatology"][k] += squared_sum(climatology.expand_as(start), verifying)
    count = n_cases * trajectory.shape[-1] * trajectory.shape[-2]
    as_rmse = {name: (total / count).sqrt().numpy() for name, total in sums.items()}
    return RolloutScores(lead_hours=lead * np.arange(1, n_steps + 1, dtype=np.float64),
                         rmse=as_rmse["model"], persistence_rmse=as_rmse["persistence"],
                         climatology_rmse=as_rmse["climatology"] if climatology is not None
                         else None, variables=variables, n_cases=n_cases)


# ----------------------------------------------------------------------------- truth


def split_trajectory(root: Any, split: str = "test", variables: Sequence[str] | None = None
                     ) -> tuple[Tensor, float]:
    """One split of a shard root as a single trajectory in physical units.

    Training samples pair states within a shard only (as ClimaX does); a rollout needs the
    states across shard and day boundaries, so this joins the split's shards in time order.

    Parameters
    ----------
    root : path-like or ShardCatalog
        A root written by :func:`turbda_kit.data.preprocess.preprocess`
        (see :func:`turbda_kit.data.shards.open_shards`).
    split : {"train", "val", "test"}
    variables : sequence of str, optional
        Channels (default all, stored order).

    Returns
    -------
    trajectory : Tensor, shape (T, V, N, N), float32, CPU
        Consecutive states in K.
    hours_per_step : float
        Their spacing, hours.

    Raises
    ------
    InputError
        If the split's days are not consecutive or a day misses shards (the states would
        not be equally spaced), or the spacing is unknown.
    """
    catalog = root if isinstance(root, ShardCatalog) else open_shards(os.fspath(root), variables)
    refs = catalog.shards(split)
    if not refs:
        raise InputError(f"split {split!r} of {catalog.root} holds no shards")
    if catalog.hours_per_step is None:
        raise InputError(f"{catalog.root} has no manifest.json giving the time between steps")
    shards_per_day = len({ref.shard for ref in refs})
    expected = [(day, shard) for day in range(refs[0].day, refs[-1].day + 1)
                for shard in range(shards_per_day)]
    found = [(ref.day, ref.shard) for ref in refs]
    if found != expected:
        missing = sorted(set(expected) - set(found))[:5]
        raise InputError(f"split {split!r} of {catalog.root} is not contiguous (missing "
                         f"(day, shard) {missing}...): a rollout needs consecutive states")
    data = np.concatenate([catalog.load(ref) for ref in refs]).astype(np.float32, copy=False)
    return torch.from_numpy(data), float(catalog.hours_per_step)


@dataclass(frozen=True)
class SplitRollout:
    """A surrogate's rollout on the test split (:func:`score_test_split`).

    Attributes
    ----------
    scores : RolloutScores
        RMSE per lead against the truth, persistence and the training climatology (K).
    truth, forecast : ndarray, shape (steps, ny, nx)
        The first variable of the truth and of the forecast from the first test state, at
        leads 1 ... steps (K).
    lead_hours : float
        Hours per forecast step.
    """

    scores: RolloutScores
    truth: np.ndarray
    forecast: np.ndarray
    lead_hours: float


def score_test_split(model: ForecastFunction, catalog: ShardCatalog, max_steps: int,
                     lead_steps: int = 1) -> SplitRollout:
    """Score autoregressive forecasts on a shard root's test split (notebook 03's last cell).

    Parameters
    ----------
    model : ForecastFunction
        The surrogate on normalised fields (e.g. ``read_surrogate(path).model``).
    catalog : ShardCatalog
        The shard root (:func:`turbda_kit.data.shards.open_shards`); its normaliser, step
        length and training climatology are used.
    max_steps : int
        Forecast steps to score, at most; fewer when the test split is shorter.
    lead_steps : int
        Data steps per forecast step.

    Returns
    -------
    SplitRollout
    """
    if max_steps < 1 or lead_steps < 1:
        raise InputError(f"max_steps={max_steps}, lead_steps={lead_steps}: both must be >= 1")
    trajectory, hours = split_trajectory(catalog, "test")
    steps = max(1, min(max_steps, (len(trajectory) - 1) // lead_steps))
    lead_hours = lead_steps * hours
    norm = catalog.normaliser
    climatology = torch.from_numpy(catalog.climatology("train")).float()
    scores = rollout_rmse(model, trajectory, steps, lead_hours, norm, hours_per_step=hours,
                          climatology=climatology)
    forecast = rollout(model, trajectory[:1], steps, lead_hours, norm)[:, 0, 0].numpy()
    truth = trajectory[lead_steps::lead_steps][:steps, 0].numpy()
    return SplitRollout(scores, truth, forecast, lead_hours)
