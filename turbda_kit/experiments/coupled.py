"""Coupled ViT + EnSF forecasting and its physics baselines, on one shared truth.

A thin driver over :func:`~turbda_kit.experiments.builder.build_experiment`: each run of
SC24 Fig. 4 is a preset and a filter (:data:`COUPLED_RUNS`), and the published scores are
the presets' ``reported`` values.

* ``vit_only`` — EnSF analyses the initial ensemble once, then the ViT runs
  autoregressively (the paper's "ViT Only"; preset ``sc24_vit_only``);
* ``vit_ensf`` — EnSF calibrates the ensemble every cycle before the next ViT step
  (``sc24_vit_ensf``);
* ``vit_ensf_shocks`` — as ``vit_ensf`` with the jump-noise process on the truth
  (``sc24_vit_ensf_shocks``);
* ``sqg_letkf``, ``sqg_ensf``, ``sqg_free`` — the SQG model with LETKF, EnSF or no filter
  (preset ``yin2024_sqg_shocks``; the shock process when ``shocks=True``);
* ``vit_ensf_twostage``, ``sqg_ensf_twostage`` — the two-stage EnSF
  (:mod:`turbda_kit.filters.ensf_twostage`) with the ViT or SQG, for sparse networks.

All share the truth, the observation network (every grid point, linear, 1 K error, or
the network of ``network_preset``), the initial ensemble and every observation draw
(named by seed and cycle). ViT runs also record, per cycle, from the same analysis mean:
``surrogate_drift``, the RMSE (K) between the ViT's 12-h forecast and the SQG model's,
and each one's 12-h forecast RMSE against the truth (``rmse_forecast_surrogate``,
``rmse_forecast_physics``): the surrogate's forecast skill beside the physics model's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import xarray as xr

from ..errors import DivergenceError, InputError
from ..models.base import ForecastModel
from ..models.sqg import SQGModel, bao2024_at_resolution
from .builder import Experiment, build_experiment
from .presets import DAPreset, get_preset
from .skill import SkillConfig

__all__ = ["COUPLED_EXPERIMENTS", "COUPLED_RUNS", "coupled_experiment", "on_network",
           "run_coupled", "surrogate_drift_diagnostic"]

#: Each coupled run as (preset, filter).
COUPLED_RUNS: dict[str, tuple[str, str]] = {
    "vit_only": ("sc24_vit_only", "free"),
    "vit_ensf": ("sc24_vit_ensf", "ensf"),
    "vit_ensf_shocks": ("sc24_vit_ensf_shocks", "ensf"),
    "sqg_letkf": ("yin2024_sqg_shocks", "letkf"),
    "sqg_ensf": ("yin2024_sqg_shocks", "ensf"),
    "sqg_free": ("yin2024_sqg_shocks", "free"),
    "vit_ensf_twostage": ("sc24_vit_ensf", "ensf_twostage"),
    "sqg_ensf_twostage": ("yin2024_sqg_shocks", "ensf_twostage"),
}
COUPLED_EXPERIMENTS = tuple(COUPLED_RUNS)


def surrogate_drift_diagnostic(surrogate: ForecastModel, physics: ForecastModel, steps: int
                               ) -> Callable[..., dict[str, float]]:
    """Diagnostics callback: ViT and SQG one-cycle forecasts of the same analysis mean.

    Per cycle: ``surrogate_drift`` (RMSE between the two forecasts) and each forecast's
    RMSE against the truth of the cycle (``rmse_forecast_surrogate``,
    ``rmse_forecast_physics``), all in the state's units. A state the SQG model cannot
    step (its CFL check fails, as it can for a long ViT-only rollout whose fields have
    drifted away from SQG's) gives NaN for the SQG values of that cycle instead of stopping
    the experiment: the diagnostic is undefined there, the experiment is not.

    Parameters
    ----------
    surrogate : ForecastModel
        One step is one cycle.
    physics : ForecastModel
        The SQG model on states in K; ``steps`` of it make one cycle.
    steps : int
    """

    def rms(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.sqrt(((a - b) ** 2).mean()))

    def diagnose(cycle, start_ensemble, forecast, analysis, truth) -> dict[str, float]:
        mean = start_ensemble.mean(dim=0, keepdim=True)
        vit = surrogate.advance(mean, 1)
        true = truth.to(vit.dtype).reshape(vit.shape)
        out = {"rmse_forecast_surrogate": rms(vit, true)}
        try:
            sqg = physics.advance(mean.to(torch.float64), steps).to(vit.dtype)
        except DivergenceError:
            return {**out, "surrogate_drift": math.nan, "rmse_forecast_physics": math.nan}
        return {**out, "surrogate_drift": rms(vit, sqg), "rmse_forecast_physics": rms(sqg, true)}

    return diagnose


def coupled_experiment(kind: str, truth_trajectory, *, surrogate: ForecastModel | None = None,
                       n_cycles: int | None = None, n_members: int | None = None,
                       spinup_cycles: int | None = None, shocks: bool | None = None,
                       truth_stride: int = 1, seed: int = 0, device="cpu", drift: bool = True,
                       ensf_settings: Mapping[str, Any] | None = None,
                       letkf_settings: Mapping[str, Any] | None = None,
                       vit_ensf_settings: Mapping[str, Any] | None = None,
                       network_preset: str | None = None,
                       network_changes: Mapping[str, Any] | None = None,
                       skill: SkillConfig | None = None) -> Experiment:
    """One coupled or baseline experiment, ready to run.

    Parameters
    ----------
    kind : str
        One of :data:`COUPLED_EXPERIMENTS`.
    truth_trajectory : array-like, shape (n_times, 2, N, N)
        The shared truth in K (a nature run's ``theta``), ``truth_stride`` times per 12-h
        cycle.
    surrogate : ForecastModel, optional
        The trained surrogate (:class:`~turbda_kit.surrogate.forecast_model.SurrogateModel`),
        one step per cycle; needed for the ``vit_*`` runs; its grid must be the truth's.
    n_cycles, n_members, spinup_cycles : int, optional
        Override the preset's (300, 20, 100).
    shocks : bool, optional
        Jump noise for the SQG baselines (default: their preset's, on); the ViT runs follow
        their presets (``vit_ensf_shocks`` only).
    truth_stride : int
        Stored times per cycle (:func:`turbda_kit.experiments.truth.truth_every`).
    seed : int
    device : torch.device or str
    drift : bool
        Record ``surrogate_drift`` for ViT runs (one SQG forecast per cycle).
    ensf_settings, letkf_settings : dict, optional
        Field changes of every run's EnSF / LETKF config over its preset's.
    vit_ensf_settings : dict, optional
        Further EnSF changes for the ``vit_*`` runs only (their presets already hold the
        tuned :data:`~turbda_kit.experiments.presets.VIT_ENSF_SETTINGS`).
    network_preset : str, optional
        A preset with an observation network (e.g. ``"sqgturb_lgetkf_cv"``,
        ``"bao2024_sqg_sparse_mixed"``): every run observes its network with its
        observation errors; the SQG runs become that preset (its filter settings and
        shocks; ``shocks`` still overrides), the ViT runs keep their EnSF settings and
        take the preset's two-stage localisation.
    network_changes : dict, optional
        :class:`~turbda_kit.obs.networks.ObsNetworkSpec` field changes over that network
        (e.g. ``{"n_obs": 256}`` on a small grid).
    skill : SkillConfig, optional
        Score forecasts launched from the analyses by lead time, with the baselines
        (:mod:`turbda_kit.experiments.skill`); forecasts use the run's own model.

    Returns
    -------
    Experiment
        Named ``kind`` (so ``run`` records ``attrs["experiment"] = kind``).
    """
    if kind not in COUPLED_RUNS:
        raise InputError(f"unknown experiment {kind!r}; choose from {', '.join(COUPLED_RUNS)}")
    preset_name, filter_name = COUPLED_RUNS[kind]
    preset: DAPreset = get_preset(preset_name)
    network = get_preset(network_preset) if network_preset else None
    if network_changes:
        if network is None:
            raise InputError("network_changes needs a network_preset to change")
        network = network.with_network(dict(network_changes))
    if network is not None and preset.model != "vit":
        preset = on_network(preset, network)
    changes: dict[str, Any] = {k: v for k, v in (("n_cycles", n_cycles), ("n_members", n_members),
                                                 ("spinup_cycles", spinup_cycles)) if v is not None}
    if preset.model != "vit" and shocks is not None:
        changes["shocks"] = shocks
    preset = _with_ensf(preset.replace(**changes), ensf_settings)
    preset = preset.with_filter_settings("letkf", letkf_settings)
    if preset.model == "vit":
        if surrogate is None:
            raise InputError(f"experiment {kind} needs a trained surrogate (SurrogateModel)")
        preset = _with_ensf(preset, vit_ensf_settings)
        if network is not None:  # after the EnSF changes: the two-stage's first stage is them
            preset = on_network(preset, network)
    n_grid = int(truth_trajectory.shape[-1])
    experiment = build_experiment(preset, filter_name, truth_trajectory=truth_trajectory,
                                  truth_stride=truth_stride, seed=seed, device=device,
                                  model_overrides={"N": n_grid}, save_means=True,
                                  model=surrogate if preset.model == "vit" else None,
                                  skill=skill)
    experiment.name = kind
    experiment.attrs["experiment_kind"] = kind
    if preset.model == "vit" and drift:
        physics = SQGModel(bao2024_at_resolution(n_grid), state_units="K")
        steps = int(round(surrogate.dt * surrogate.time_unit_seconds / physics.dt))
        experiment.diagnostics = surrogate_drift_diagnostic(surrogate, physics, steps)
    return experiment


def _with_ensf(preset: DAPreset, changes: Mapping[str, Any] | None) -> DAPreset:
    """EnSF changes, for the EnSF and for the two-stage filter's first stage alike."""
    if not changes:
        return preset
    if preset.ensf_twostage is not None:
        preset = preset.with_filter_settings("ensf_twostage", {"ensf": dict(changes)})
    return preset.with_filter_settings("ensf", changes)


def on_network(preset: DAPreset, network: DAPreset) -> DAPreset:
    """``preset`` observing ``network``'s observation network.

    Parameters
    ----------
    preset : DAPreset
        An SQG or ViT preset (e.g. ``get_preset("sc24_vit_ensf")``).
    network : DAPreset
        A preset with an observation network (``sqgturb_lgetkf_cv``,
        ``bao2024_sqg_sparse_mixed``).

    Returns
    -------
    DAPreset
        For SQG, ``network`` itself (its filters and shocks). For the ViT, ``preset`` with
        the network's observations and errors, its EnSF kept, and the network's two-stage
        localisation around that EnSF (what :func:`coupled_experiment` runs with
        ``network_preset``, and ``tools/sweep_filters.py --network`` tunes).
    """
    if network.network is None:
        raise InputError(f"network_preset={network.name!r} has no observation network; "
                         "choose a preset with one (e.g. sqgturb_lgetkf_cv, "
                         "bao2024_sqg_sparse_mixed)")
    if preset.model != "vit":
        return network  # the SQG baselines are the network preset's own experiment
    # The ViT keeps its (physical-unit) EnSF; the two-stage regression takes the network
    # preset's localisation. SC24's published scores are for the dense network: dropped.
    twostage = network.filter_settings("ensf_twostage")
    return preset.replace(
        name=f"{preset.name}+{network.name}", network=network.network, obs=network.obs,
        obs_error_std=network.obs_error_std, reported={},
        ensf_twostage=dataclasses.replace(twostage, ensf=preset.ensf))


def run_coupled(kind: str, truth_trajectory, *, out_dir=None, show_progress: bool | None = None,
                **kwargs: Any) -> xr.Dataset:
    """Run one coupled or baseline experiment; returns the cycling engine's Dataset.

    ``run_coupled(kind, truth, surrogate=..., ...)`` is
    ``coupled_experiment(kind, truth, ...).run(out_dir, show_progress)``; ``kwargs`` are
    :func:`coupled_experiment`'s.

    Parameters
    ----------
    out_dir : path-like, optional
        Checkpoints (resume) and the divergence state.
    show_progress : bool, optional
        Progress lines (default: rank 0).
    """
    return coupled_experiment(kind, truth_trajectory, **kwargs).run(
        out_dir=out_dir, show_progress=show_progress)
