"""Data-assimilation filters (EnSF, LETKF): pure analysis functions, config dataclasses,
the :class:`Filter` interface the cycling engine calls and a registry of filters by name."""

from .base import (
    Filter,
    FilterFactory,
    FilterGeometry,
    FunctionFilter,
    as_filter,
    available_filters,
    filter_settings_type,
    make_filter,
    register_filter,
)
from .ensf import EnSF, EnSFConfig, EnSFResult, ensf_analysis, ensf_analysis_detailed
from .letkf import LETKF, LETKFConfig, etkf_analysis, letkf_analysis
from .localization import (
    LocalizationPlan,
    gaspari_cohn,
    grid_point_positions,
    grid_positions,
    plan_localization,
    sqg_positions,
)

__all__ = [
    "LETKF",
    "EnSF",
    "EnSFConfig",
    "EnSFResult",
    "Filter",
    "FilterFactory",
    "FilterGeometry",
    "FunctionFilter",
    "LETKFConfig",
    "LocalizationPlan",
    "as_filter",
    "available_filters",
    "ensf_analysis",
    "ensf_analysis_detailed",
    "etkf_analysis",
    "filter_settings_type",
    "gaspari_cohn",
    "grid_point_positions",
    "grid_positions",
    "letkf_analysis",
    "make_filter",
    "plan_localization",
    "register_filter",
    "sqg_positions",
]
