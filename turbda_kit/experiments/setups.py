"""Forecast models by name: how a preset's ``model`` string becomes a ready model.

Each registered builder turns a :class:`~turbda_kit.experiments.presets.DAPreset` (its
``model_settings`` and cycle length) into a :class:`ModelSetup`: the
:class:`~turbda_kit.models.base.ForecastModel` in the experiment's state units, the
steps per cycle, the grid geometry a localising filter needs, and how to spin up a truth
on the fly. :func:`~turbda_kit.experiments.builder.build_experiment` asks for one by
name and never looks at the kind itself.

Registered kinds:

* ``"sqg"`` — :class:`~turbda_kit.models.sqg.SQGModel` stepping temperatures in K;
  ``model_settings = {"preset": <SQG preset>}``; override ``N`` to run the same physics
  on another grid (:func:`~turbda_kit.models.sqg.bao2024_at_resolution`) or any
  :class:`~turbda_kit.models.sqg.SQGParams` field.
* ``"lorenz96"`` — :class:`~turbda_kit.models.lorenz96.Lorenz96` with ``n``, ``forcing``,
  ``dt``.
* ``"vit"`` — a trained surrogate passed in by the caller (``model=``, e.g.
  :class:`~turbda_kit.surrogate.forecast_model.SurrogateModel`) on the grid of the SQG
  preset named in ``model_settings`` (at ``N``); it needs a stored truth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import InputError
from ..filters.base import FilterGeometry
from ..filters.localization import sqg_positions
from ..models.base import ForecastModel
from ..models.lorenz96 import Lorenz96
from ..models.sqg import (
    DAY_SECONDS,
    SQGModel,
    SQGParams,
    bao2024_at_resolution,
    pv_to_theta,
    random_initial_state,
    sqg_preset,
)
from ..registry import Registry

if TYPE_CHECKING:  # presets import nothing from here; this is for annotations only
    from .presets import DAPreset

__all__ = ["ModelBuilder", "ModelSetup", "available_models", "model_setup", "register_model"]

SpinUp = Callable[[torch.Generator, torch.device, torch.dtype, float], Tensor]
"""``spin_up(generator, device, dtype, spinup_days) -> (*state_shape)``: a truth state on
the attractor, in the experiment's state units."""


@dataclass(frozen=True)
class ModelSetup:
    """A forecast model ready for a cycling experiment, and what the builder needs of it.

    Attributes
    ----------
    model : ForecastModel
        Steps states in the experiment's units (K for SQG and the ViT).
    steps_per_cycle : int
        Model steps between analyses.
    geometry : FilterGeometry
        Positions of the state points (localisation).
    dtype : torch.dtype
        Default dtype of the states.
    divergence_rmse : float
        Default RMSE at which a run is stopped as diverged (state units).
    settings : dict
        Model settings recorded with the results (``attrs["model_settings"]``).
    spin_up : callable or None
        Makes a truth state on the fly (:data:`SpinUp`); None: the model needs a stored
        truth.
    """

    model: ForecastModel
    steps_per_cycle: int
    geometry: FilterGeometry
    dtype: torch.dtype
    divergence_rmse: float
    settings: dict[str, Any] = field(default_factory=dict)
    spin_up: SpinUp | None = None


ModelBuilder = Callable[["DAPreset", dict[str, Any], ForecastModel | None], ModelSetup]
"""``builder(preset, overrides, model) -> ModelSetup``; ``model`` is the caller's ready
model for kinds that take one (else None)."""

_MODELS: Registry[ModelBuilder] = Registry("model")


def register_model(kind: str, builder: ModelBuilder, *, replace: bool = False) -> None:
    """Make presets with ``model=kind`` build their model with ``builder``."""
    _MODELS.register(kind, builder, replace=replace)


def model_setup(preset: DAPreset, overrides: Mapping[str, Any] | None = None,
                model: ForecastModel | None = None) -> ModelSetup:
    """The :class:`ModelSetup` of ``preset``'s model.

    Parameters
    ----------
    preset : DAPreset
    overrides : dict, optional
        Model-setting changes (SQG parameters, ``{"N": 32}``; Lorenz-96 settings).
    model : ForecastModel, optional
        A ready model, for kinds built elsewhere (``"vit"``).

    Raises
    ------
    InputError
        Unknown model kind, a model passed to a kind that builds its own (or none to one
        that needs it), or settings the model refuses.
    """
    return _MODELS.get(preset.model)(preset, dict(overrides or {}), model)


def available_models() -> tuple[str, ...]:
    """Model kinds a preset may name."""
    return _MODELS.names()


def _steps_per_cycle(preset: DAPreset, step_seconds: float) -> int:
    """Steps per cycle: from ``preset.cycle_seconds`` when set (a whole number), else the
    preset's ``steps_per_cycle``."""
    if not preset.cycle_seconds:
        return preset.steps_per_cycle
    steps = preset.cycle_seconds / step_seconds
    if abs(steps - round(steps)) > 1e-9:
        raise InputError(f"a {preset.cycle_seconds} s cycle is not a whole number of "
                         f"dt = {step_seconds} s steps")
    return int(round(steps))


def _no_model(preset: DAPreset, model: ForecastModel | None) -> None:
    if model is not None:
        raise InputError(f"preset {preset.name} builds its own {preset.model} model; pass "
                         "model= only for presets whose model is built elsewhere ('vit')")


def _sqg_params(preset: DAPreset, overrides: dict[str, Any]) -> SQGParams:
    if "N" in overrides:
        # Other grids keep the physics: dt and hyperdiffusion scale with the grid.
        params = bao2024_at_resolution(int(overrides.pop("N")))
    else:
        params = sqg_preset(preset.model_settings["preset"]).params
    return params.replace(**overrides) if overrides else params


def _sqg_geometry(params: SQGParams) -> FilterGeometry:
    return FilterGeometry(sqg_positions(params.N, params.L, params.H), (params.L, params.L))


def _sqg(preset: DAPreset, overrides: dict[str, Any], model: ForecastModel | None
         ) -> ModelSetup:
    _no_model(preset, model)
    params = _sqg_params(preset, overrides)

    def spin_up(generator: torch.Generator, device: torch.device, dtype: torch.dtype,
                spinup_days: float) -> Tensor:
        # Spun up in PV, the model's own variable, and converted once at the end.
        pv = random_initial_state(params, generator, device=device, dtype=dtype)
        steps = int(round(spinup_days * DAY_SECONDS / params.dt))
        pv = SQGModel(params).advance(pv, steps) if steps else pv
        return pv_to_theta(pv, params)

    return ModelSetup(SQGModel(params, state_units="K"), _steps_per_cycle(preset, params.dt),
                      _sqg_geometry(params), torch.float32, 100.0, params.to_dict(), spin_up)


def _lorenz96(preset: DAPreset, overrides: dict[str, Any], model: ForecastModel | None
              ) -> ModelSetup:
    _no_model(preset, model)
    settings = {**preset.model_settings, **overrides}
    l96 = Lorenz96(**settings)
    n = l96.n
    positions = torch.arange(n, dtype=torch.float64).reshape(n, 1)

    def spin_up(generator: torch.Generator, device: torch.device, dtype: torch.dtype,
                spinup_days: float) -> Tensor:
        del spinup_days  # 1000 steps from F + N(0, 1) reach the attractor at any dt used here
        x0 = l96.forcing + torch.randn(l96.state_shape, generator=generator,
                                       dtype=dtype).to(device)
        return l96.advance(x0, 1000)

    return ModelSetup(l96, preset.steps_per_cycle, FilterGeometry(positions, (float(n),)),
                      torch.float64, 20.0, settings, spin_up)


def _vit(preset: DAPreset, overrides: dict[str, Any], model: ForecastModel | None
         ) -> ModelSetup:
    if model is None:
        raise InputError(f"preset {preset.name} runs a trained surrogate: pass "
                         "build_experiment(..., model=SurrogateModel.from_files(...))")
    params = _sqg_params(preset, overrides)
    grid = (2, params.N, params.N)
    if tuple(model.state_shape) != grid:
        raise InputError(f"the surrogate steps states of shape {tuple(model.state_shape)}, the "
                         f"experiment's grid is {grid}: use truth data of the surrogate's "
                         "training grid")
    steps = _steps_per_cycle(preset, float(model.dt) * float(model.time_unit_seconds))
    settings = {"forecast_model": type(model).__name__, **params.to_dict()}
    # A diverging surrogate is scored, not stopped: only absurd errors end the run.
    return ModelSetup(model, steps, _sqg_geometry(params), torch.float32, 1e3, settings)


register_model("sqg", _sqg)
register_model("lorenz96", _lorenz96)
register_model("vit", _vit)
