"""Forecast skill and reference baselines of a cycling run, scored as the run goes.

An analysis RMSE means little alone; beside it a run can report (``run_cycling(...,
skill=SkillConfig(...))``):

* **forecast skill** — every ``every`` cycles after spin-up a forecast is launched from
  the analysis (its ensemble mean, or the whole ensemble) and scored against the truth
  of the cycles ``lead_cycles`` later: RMSE of the forecast (ensemble mean) by lead time;
* **persistence** — the truth at the launch cycle as the forecast, scored the same way
  on the same launches;
* **climatology** — the truth's time-mean field over the scored cycles as the forecast
  of every one of them (a sample climatology: the RMSE is the truth's temporal standard
  deviation averaged over the grid, in quadrature);
* **observations only** — where every point is observed linearly, the observations
  themselves as the analysis (NaN otherwise): about the observation error.

The free run is the filter ``"free"`` of the same experiment. Launches are kept only
when their longest lead fits in the run, so every lead is scored on the same launches.
Forecasts advance with the run's model, one cycle per cycle, all pending launches in
one batched call; a checkpoint carries them, so a resumed run scores what an
uninterrupted one does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..obs.networks import observed_points
from ..obs.operators import Identity

__all__ = ["LAUNCH_KINDS", "SkillConfig", "SkillTracker", "dense_linear_obs_rmse",
           "skill_summary"]

#: What a forecast is launched from: the analysis ensemble mean, or every member.
LAUNCH_KINDS = ("mean", "ensemble")


@dataclass(frozen=True)
class SkillConfig:
    """Which forecasts to launch and score, and whether to score the baselines.

    Parameters
    ----------
    lead_cycles : tuple of int
        Lead times in cycles (distinct, >= 1): ``(1, 2, 4, 6)`` is 12/24/48/72 h at 12-h
        cycles (:meth:`from_hours`).
    every : int
        A forecast is launched every ``every`` cycles after spin-up (>= 1), starting with
        the first scored cycle.
    launch : {"mean", "ensemble"}
        Forecast the analysis ensemble mean (one model run per launch) or every member
        (the forecast ensemble's mean is scored).
    baselines : bool
        Also score persistence, climatology and (dense linear networks) the observations.
    """

    lead_cycles: tuple[int, ...] = (1, 2, 4, 6)
    every: int = 5
    launch: str = "mean"
    baselines: bool = True

    def __post_init__(self) -> None:
        leads = tuple(self.lead_cycles) if isinstance(self.lead_cycles, (list, tuple)) else ()
        if not leads or any(not isinstance(k, int) or isinstance(k, bool) or k < 1
                            for k in leads) or len(set(leads)) != len(leads):
            raise InputError(f"SkillConfig.lead_cycles={self.lead_cycles!r}: must be distinct "
                             f"integers >= 1 (cycles)")
        object.__setattr__(self, "lead_cycles", tuple(sorted(leads)))
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise InputError(f"SkillConfig.every={self.every!r}: must be an integer >= 1")
        if self.launch not in LAUNCH_KINDS:
            raise InputError(f"SkillConfig.launch={self.launch!r}: choose one of {LAUNCH_KINDS}")

    @classmethod
    def from_hours(cls, lead_hours: Sequence[float], cycle_hours: float, **changes: Any
                   ) -> SkillConfig:
        """Leads given in hours, each a whole number of ``cycle_hours`` cycles.

        Raises
        ------
        InputError
            A lead that is not a positive multiple of the cycle.
        """
        if not cycle_hours > 0:
            raise InputError(f"cycle_hours={cycle_hours!r}: must be > 0")
        leads = []
        for hours in lead_hours:
            cycles = float(hours) / cycle_hours
            if not hours > 0 or abs(cycles - round(cycles)) > 1e-9:
                raise InputError(f"forecast lead {hours!r} h is not a positive multiple of the "
                                 f"{cycle_hours:g}-h cycle")
            leads.append(int(round(cycles)))
        return cls(lead_cycles=tuple(leads), **changes)

    @property
    def max_lead(self) -> int:
        """The longest lead, in cycles."""
        return self.lead_cycles[-1]


def dense_linear_obs_rmse(obs_operator: Any, obs: Tensor, truth: Tensor) -> float:
    """RMSE of the observations as an analysis, when they observe every point linearly.

    Parameters
    ----------
    obs_operator : ObsOperator
    obs : Tensor, shape (n_obs,)
    truth : Tensor, shape state_shape

    Returns
    -------
    float
        ``sqrt(mean((y - x_true)^2))`` (state units), or NaN when the network is not dense
        and linear.
    """
    found = observed_points(obs_operator)
    if found is None:
        return math.nan
    indices, pointwise = found
    n = truth.numel()
    if not (isinstance(pointwise, Identity) and indices.numel() == n
            and torch.equal(indices, torch.arange(n))):
        return math.nan
    return float((obs.to(truth.dtype) - truth.reshape(-1)).square().mean().sqrt())


class SkillTracker:
    """Launches, advances and scores the forecasts of one run; accumulates the baselines.

    Parameters
    ----------
    config : SkillConfig
    model : ForecastModel
        The run's model (forecasts advance with ``model.advance``).
    steps_per_cycle : int
    n_cycles, spinup_cycles : int
        The run's length and the cycles left out of the scores.
    """

    def __init__(self, config: SkillConfig, model: Any, steps_per_cycle: int, n_cycles: int,
                 spinup_cycles: int):
        if not isinstance(config, SkillConfig):
            raise InputError(f"skill must be a SkillConfig, got {type(config).__name__}")
        self.config = config
        self.model = model
        self.steps_per_cycle = int(steps_per_cycle)
        self.n_cycles = int(n_cycles)
        self.spinup_cycles = int(spinup_cycles)
        n_leads = len(config.lead_cycles)
        # Sums over launches of the per-launch RMSE (mean over launches at the end).
        self.forecast_sum = np.zeros(n_leads)
        self.persistence_sum = np.zeros(n_leads)
        self.counts = np.zeros(n_leads, dtype=np.int64)
        self.pending: list[dict[str, Any]] = []   # launch, age, state, truth
        self.truth_sum: Tensor | None = None
        self.truth_sq_sum: Tensor | None = None
        self.truth_count = 0

    # ---- per cycle -------------------------------------------------------------------
    def launches_at(self, cycle: int) -> bool:
        """Whether a forecast is launched from the analysis of ``cycle``."""
        scored = cycle - self.spinup_cycles - 1
        return (scored >= 0 and scored % self.config.every == 0
                and cycle + self.config.max_lead <= self.n_cycles)

    def update(self, cycle: int, analysis: Tensor, truth: Tensor) -> None:
        """Advance pending forecasts to ``cycle``, score those at a lead, launch a new one.

        Parameters
        ----------
        cycle : int
        analysis : Tensor, shape (member, *state_shape)
            This cycle's analysis ensemble.
        truth : Tensor, shape state_shape
            This cycle's (scored) truth.
        """
        if self.pending:
            states = torch.cat([item["state"] for item in self.pending])
            states = self.model.advance(states, self.steps_per_cycle)
            first = 0
            for item in self.pending:
                size = item["state"].shape[0]
                item["state"] = states[first:first + size]
                first += size
                item["age"] += 1
                if item["age"] in self.config.lead_cycles:
                    lead = self.config.lead_cycles.index(item["age"])
                    mean = item["state"].mean(0)
                    self.forecast_sum[lead] += float((mean - truth).square().mean().sqrt())
                    self.persistence_sum[lead] += float(
                        (item["truth"] - truth).square().mean().sqrt())
                    self.counts[lead] += 1
            self.pending = [item for item in self.pending if item["age"] < self.config.max_lead]
        if self.config.baselines and cycle > self.spinup_cycles:
            values = truth.detach().to(torch.float64)
            if self.truth_sum is None:
                self.truth_sum = torch.zeros_like(values)
                self.truth_sq_sum = torch.zeros_like(values)
            self.truth_sum += values
            self.truth_sq_sum += values * values
            self.truth_count += 1
        if self.launches_at(cycle):
            start = (analysis.mean(0, keepdim=True) if self.config.launch == "mean"
                     else analysis).detach().clone()
            self.pending.append({"launch": cycle, "age": 0, "state": start,
                                 "truth": truth.detach().clone()})

    # ---- results ---------------------------------------------------------------------
    def forecast_rmse(self) -> np.ndarray:
        """Mean RMSE over launches by lead (NaN where no launch was scored)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.forecast_sum / np.maximum(self.counts, 1),
                            np.nan)

    def persistence_rmse(self) -> np.ndarray:
        """Mean RMSE of persistence over the same launches, by lead."""
        return np.where(self.counts > 0, self.persistence_sum / np.maximum(self.counts, 1),
                        np.nan)

    def climatology_rmse(self) -> float:
        """RMSE of the truth's time mean (over the scored cycles) as their forecast."""
        if not self.truth_count:
            return math.nan
        mean = self.truth_sum / self.truth_count
        variance = (self.truth_sq_sum / self.truth_count - mean * mean).clamp_min(0.0)
        return float(variance.mean().sqrt())

    def data_vars(self, cycle_hours: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Dataset variables and the ``lead_time`` coordinate.

        Returns
        -------
        data_vars : dict
            ``rmse_forecast_lead``, ``n_forecasts_lead`` (and with baselines
            ``rmse_persistence_lead``, ``rmse_climatology``) for an ``xarray.Dataset``.
        coords : dict
            ``lead_time`` (h).
        """
        leads = np.asarray(self.config.lead_cycles, dtype=np.float64) * cycle_hours
        data_vars: dict[str, Any] = {
            "rmse_forecast_lead": ("lead_time", self.forecast_rmse()),
            "n_forecasts_lead": ("lead_time", self.counts.copy()),
        }
        if self.config.baselines:
            data_vars["rmse_persistence_lead"] = ("lead_time", self.persistence_rmse())
            data_vars["rmse_climatology"] = ((), self.climatology_rmse())
        return data_vars, {"lead_time": ("lead_time", leads)}

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors on the CPU)."""
        return {
            "forecast_sum": torch.from_numpy(self.forecast_sum.copy()),
            "persistence_sum": torch.from_numpy(self.persistence_sum.copy()),
            "counts": torch.from_numpy(self.counts.copy()),
            "pending": [{"launch": item["launch"], "age": item["age"],
                         "state": item["state"].cpu(), "truth": item["truth"].cpu()}
                        for item in self.pending],
            "truth_sum": None if self.truth_sum is None else self.truth_sum.cpu(),
            "truth_sq_sum": None if self.truth_sq_sum is None else self.truth_sq_sum.cpu(),
            "truth_count": self.truth_count,
        }

    def load_state_dict(self, saved: dict[str, Any], device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output onto ``device``."""
        self.forecast_sum = saved["forecast_sum"].numpy().copy()
        self.persistence_sum = saved["persistence_sum"].numpy().copy()
        self.counts = saved["counts"].numpy().copy()
        self.pending = [{"launch": int(item["launch"]), "age": int(item["age"]),
                         "state": item["state"].to(device), "truth": item["truth"].to(device)}
                        for item in saved["pending"]]
        self.truth_sum = None if saved["truth_sum"] is None else saved["truth_sum"].to(device)
        self.truth_sq_sum = None if saved["truth_sq_sum"] is None else \
            saved["truth_sq_sum"].to(device)
        self.truth_count = int(saved["truth_count"])


def skill_summary(ds) -> dict[str, Any]:
    """The skill and baseline scores of a cycling Dataset as JSON-ready numbers.

    Parameters
    ----------
    ds : xarray.Dataset
        A :func:`~turbda_kit.experiments.cycling.run_cycling` result (made with ``skill``).

    Returns
    -------
    dict
        ``forecast_rmse_by_lead_hours`` (``{"12": ..., ...}``), ``forecasts_per_lead``,
        and when scored ``persistence_rmse_by_lead_hours``, ``climatology_rmse``,
        ``obs_only_rmse``; empty for a run without skill. NaN becomes None.
    """
    def clean(value: Any) -> float | None:
        value = float(value)
        return None if math.isnan(value) else value

    if "rmse_forecast_lead" not in ds:
        return {}
    leads = [f"{float(hours):g}" for hours in ds["lead_time"].values]
    out: dict[str, Any] = {
        "forecast_rmse_by_lead_hours": dict(zip(leads, map(
            clean, ds["rmse_forecast_lead"].values))),
        "forecasts_per_lead": int(ds["n_forecasts_lead"].max()),
    }
    if "rmse_persistence_lead" in ds:
        out["persistence_rmse_by_lead_hours"] = dict(zip(leads, map(
            clean, ds["rmse_persistence_lead"].values)))
    if "rmse_climatology" in ds:
        out["climatology_rmse"] = clean(ds["rmse_climatology"].values)
    if "mean_rmse_obs_only" in ds.attrs:
        out["obs_only_rmse"] = clean(ds.attrs["mean_rmse_obs_only"])
    return out
