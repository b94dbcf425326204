"""Assemble a cycling experiment from a preset: model, truth, ensemble, observations, filter.

:func:`build_experiment` looks every named part up in its registry — the forecast model
(:func:`turbda_kit.experiments.setups.model_setup`), the observation operator
(:func:`turbda_kit.obs.operators.make_operator`) and the filter
(:func:`turbda_kit.filters.base.make_filter`) — so the SQG, Lorenz-96 and coupled ViT
experiments share one path, and :class:`Experiment` hands everything to
:func:`~turbda_kit.experiments.cycling.run_cycling`.

>>> from turbda_kit.experiments import build_experiment, get_preset
>>> preset = get_preset("sakov2008").replace(n_cycles=20, spinup_cycles=5)
>>> ds = build_experiment(preset, "letkf", seed=1).run(show_progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import xarray as xr
from torch import Tensor

from ..errors import InputError
from ..filters.base import Filter, available_filters, make_filter
from ..models.base import ForecastModel
from ..obs.networks import NetworkSampler
from ..obs.noise import ShockProcess
from ..obs.operators import ObsOperator, make_operator
from ..random_streams import cycle_generator
from .cycling import (
    CyclingConfig,
    ObsNetwork,
    cycle_observations,
    operator_error_std,
    run_cycling,
)
from .initial import ensemble_around_truth
from .presets import DAPreset, get_preset
from .setups import ModelSetup, model_setup
from .skill import SkillConfig
from .truth import ArrayTruth, ModelTruth, TruthSource

__all__ = ["FREE_RUN", "Experiment", "build_experiment"]

#: The filter name of a run without analyses (forecasts only).
FREE_RUN = "free"


@dataclass
class Experiment:
    """Everything :func:`turbda_kit.experiments.cycling.run_cycling` needs, built from a preset.

    Attributes
    ----------
    preset : DAPreset
        The preset, with ``steps_per_cycle`` as the model runs it.
    filter_name : str
        A registered filter or ``"free"``.
    model : ForecastModel
    analysis : Filter or None
        None for a free run.
    obs_operator : ObsOperator or ObsNetwork
    truth : TruthSource
    initial_ensemble : Tensor, shape (member, *state_shape)
    config : CyclingConfig
    shocks : ShockProcess or None
    attrs : dict
        Settings recorded in the output Dataset.
    name : str
        Recorded as ``attrs["experiment"]`` and part of the checkpoint fingerprint
        (default ``"<preset>:<filter>"``).
    diagnostics : callable, optional
        Extra per-cycle variables (see :func:`run_cycling`).
    skill : SkillConfig, optional
        Forecast skill by lead and baselines (:mod:`turbda_kit.experiments.skill`).
    """

    preset: DAPreset
    filter_name: str
    model: ForecastModel
    analysis: Filter | None
    obs_operator: ObsOperator | ObsNetwork
    truth: TruthSource
    initial_ensemble: Tensor
    config: CyclingConfig
    shocks: ShockProcess | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    diagnostics: Callable[..., dict[str, float]] | None = None
    skill: SkillConfig | None = None

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{self.preset.name}:{self.filter_name}"

    def run(self, out_dir: str | os.PathLike | None = None, show_progress: bool | None = None,
            **kwargs: Any) -> xr.Dataset:
        """Run the experiment; returns the engine's Dataset (``kwargs`` go to it)."""
        kwargs.setdefault("diagnostics", self.diagnostics)
        kwargs.setdefault("skill", self.skill)
        return run_cycling(self.model, self.analysis, self.obs_operator, self.truth,
                           self.initial_ensemble, self.config, out_dir=out_dir,
                           name=self.name, shocks=self.shocks, attrs=self.attrs,
                           show_progress=show_progress, **kwargs)


def build_experiment(preset: DAPreset | str, filter_name: str, *, truth_trajectory=None,
                     truth_stride: int = 1, seed: int = 0, device: torch.device | str = "cpu",
                     dtype: torch.dtype | None = None, save_means: bool = False,
                     checkpoint_every: int = 10, divergence_rmse: float | None = None,
                     spinup_days: float = 100.0,
                     model_overrides: dict[str, Any] | None = None,
                     model: ForecastModel | None = None,
                     skill: SkillConfig | None = None) -> Experiment:
    """Assemble a cycling experiment from a preset.

    Parameters
    ----------
    preset : DAPreset or str
        A preset or its name; use ``preset.replace(n_cycles=..., n_members=...)`` for
        shorter or smaller runs.
    filter_name : str
        A registered filter (``"ensf"``, ``"letkf"``; :func:`turbda_kit.filters.available_filters`)
        or ``"free"`` (no analyses).
    truth_trajectory : array-like, shape (n_times, *state_shape), optional
        Stored truth (SQG: a nature run's ``theta`` in K, one time per cycle unless
        ``truth_stride`` says otherwise). Default: a truth run on the fly by the model,
        started from a spun-up state (not possible for a surrogate).
    truth_stride : int
        Stored times per cycle in ``truth_trajectory``
        (:func:`turbda_kit.experiments.truth.truth_every`).
    seed : int
        Root seed (initial ensemble, observations, filter noise, shocks).
    device : torch.device or str
    dtype : torch.dtype, optional
        Default float32 for SQG and the ViT, float64 for Lorenz-96.
    save_means : bool
        Store truth and ensemble means per cycle (for field plots).
    checkpoint_every : int
        Cycles between checkpoints when the run has an ``out_dir``.
    divergence_rmse : float, optional
        Stop above this RMSE (default: the model's, 100 K for SQG, 1000 K for the ViT, 20
        for Lorenz-96).
    spinup_days : float
        SQG on-the-fly truth: model days of spin-up from the random initial state.
    model_overrides : dict, optional
        SQG parameter changes (``{"N": 32}`` selects ``bao2024_at_resolution(32)``, whose
        dt and hyperdiffusion scale with the grid; for the ViT it names the truth's grid)
        or Lorenz-96 settings.
    model : ForecastModel, optional
        The ready model of a preset whose model is built elsewhere (``model="vit"``: a
        trained :class:`~turbda_kit.surrogate.forecast_model.SurrogateModel`).
    skill : SkillConfig, optional
        Score forecasts launched from the analyses by lead time and the baselines
        (persistence, climatology, observations only;
        :mod:`turbda_kit.experiments.skill`); e.g.
        ``SkillConfig.from_hours([12, 24, 48, 72], 12.0, every=5)``.

    Returns
    -------
    Experiment

    Raises
    ------
    InputError
        Unknown filter, model kind or observation operator; a truth that is too short or
        on another grid; a missing surrogate.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    if filter_name != FREE_RUN and filter_name not in available_filters():
        raise InputError(f"unknown filter {filter_name!r}; choose from "
                         f"{', '.join((*available_filters(), FREE_RUN))}")
    device = torch.device(device)
    setup = model_setup(preset, model_overrides, model)
    preset = preset.replace(steps_per_cycle=setup.steps_per_cycle)
    dtype = dtype or setup.dtype
    state_shape = tuple(setup.model.state_shape)
    truth, truth0 = _truth(preset, setup, truth_trajectory, truth_stride, seed, device, dtype,
                           spinup_days)
    initial = ensemble_around_truth(truth0, preset.n_members, preset.initial_spread,
                                    cycle_generator(seed, 0, "initial", device))
    if preset.network is not None:
        obs_operator = preset.network.build(state_shape, preset.obs_error_std, seed)
    else:
        obs_operator = make_operator(preset.obs, state_shape)
    if preset.initial_filter is not None:
        # Cycle 0's observations, drawn from the same streams the engine uses every cycle.
        first = make_filter(preset.initial_filter, preset.filter_settings(preset.initial_filter),
                            setup.geometry)
        operator0 = (obs_operator(0, cycle_generator(seed, 0, "obs_network", "cpu"))
                     if isinstance(obs_operator, NetworkSampler) else obs_operator)
        std0 = operator_error_std(operator0, preset.obs_error_std)
        obs0 = cycle_observations(operator0, truth0, std0, seed, 0)
        initial = first(initial, obs0, operator0, std0,
                        cycle_generator(seed, 0, "analysis", device))
    analysis = None if filter_name == FREE_RUN else make_filter(
        filter_name, preset.filter_settings(filter_name), setup.geometry)
    config = CyclingConfig(n_cycles=preset.n_cycles, steps_per_cycle=setup.steps_per_cycle,
                           obs_error_std=preset.obs_error_std,
                           spinup_cycles=preset.spinup_cycles, seed=seed,
                           checkpoint_every=checkpoint_every,
                           divergence_rmse=divergence_rmse or setup.divergence_rmse,
                           save_means=save_means)
    shocks = ShockProcess(torch.Generator(device=device)) if preset.shocks else None
    used = {filter_name, preset.initial_filter}
    attrs = {"preset": preset.name, "filter": filter_name,
             "obs": preset.obs if preset.network is None else "network",
             "obs_network": "" if preset.network is None else repr(preset.network),
             "model_settings": repr(setup.settings), "model": preset.model,
             "source": preset.source,
             **{f"{name}_settings": repr(settings) if name in used else ""
                for name, settings in preset.filters.items()},
             "initial_filter": preset.initial_filter or "",
             "reported_rmse": preset.reported.get(filter_name, math.nan)}
    return Experiment(preset, filter_name, setup.model, analysis, obs_operator, truth, initial,
                      config, shocks, attrs, skill=skill)


def _truth(preset: DAPreset, setup: ModelSetup, truth_trajectory, truth_stride: int, seed: int,
           device: torch.device, dtype: torch.dtype, spinup_days: float
           ) -> tuple[TruthSource, Tensor]:
    """The truth source and its state at cycle 0."""
    state_shape = tuple(setup.model.state_shape)
    if truth_trajectory is not None:
        truth = ArrayTruth(truth_trajectory, stride=truth_stride, device=device, dtype=dtype)
        if truth.n_cycles_available() < preset.n_cycles:
            raise InputError(f"the truth trajectory covers {truth.n_cycles_available()} cycles; "
                             f"preset {preset.name} runs {preset.n_cycles}: pass a longer nature "
                             f"run or preset.replace(n_cycles=...)")
        truth0 = truth.state(0)
        if tuple(truth0.shape) != state_shape:
            raise InputError(f"truth grid {tuple(truth0.shape)} does not match the model grid "
                             f"{state_shape}")
        return truth, truth0
    if setup.spin_up is None:
        raise InputError(f"preset {preset.name} ({preset.model}) cannot run a truth on the fly: "
                         "pass truth_trajectory= (e.g. a nature run's theta)")
    truth0 = setup.spin_up(cycle_generator(seed, 0, "initial", "cpu"), device, dtype,
                           spinup_days)
    return ModelTruth(setup.model, truth0, setup.steps_per_cycle), truth0
