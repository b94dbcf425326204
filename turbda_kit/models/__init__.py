"""Forecast models: step functions over ensemble-batched tensors (SQG, Lorenz-96), all
satisfying the one :class:`ForecastModel` protocol."""

from .base import ForecastModel, check_state
from .lorenz96 import (
    LORENZ96_TIME_UNIT_SECONDS,
    L96Workspace,
    Lorenz96,
    l96_tendency,
    l96_tendency_slab,
)
from .sqg import (
    SQG_PRESETS,
    SQGModel,
    SQGParams,
    SQGPreset,
    bao2024_at_resolution,
    bao2024_sqg64,
    equilibrium_pv,
    make_stepper,
    pv_to_theta,
    random_initial_state,
    sqg_preset,
    theta_to_pv,
)

__all__ = [
    "LORENZ96_TIME_UNIT_SECONDS",
    "SQG_PRESETS",
    "ForecastModel",
    "L96Workspace",
    "Lorenz96",
    "SQGModel",
    "SQGParams",
    "SQGPreset",
    "bao2024_at_resolution",
    "bao2024_sqg64",
    "check_state",
    "equilibrium_pv",
    "l96_tendency",
    "l96_tendency_slab",
    "make_stepper",
    "pv_to_theta",
    "random_initial_state",
    "sqg_preset",
    "theta_to_pv",
]
