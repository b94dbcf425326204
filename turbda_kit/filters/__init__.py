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
from .ensemble_space import (
    batched_eigh,
    cross_validated_transforms,
    lattice_gram,
    nerger_weights,
    transforms_from_gram,
)
from .ensf import EnSF, EnSFConfig, EnSFResult, ensf_analysis, ensf_analysis_detailed
from .ensf_local import (
    LocalEnSF,
    LocalEnSFConfig,
    ensemble_space_ensf_transforms,
    sde_noise,
)
from .ensf_spectral import SpectralEnSF, SpectralEnSFConfig, hartley2, shell_spread
from .ensf_twostage import TwoStageEnSF, TwoStageEnSFConfig, regression_increments
from .letkf import LETKF, LETKFConfig, etkf_analysis, letkf_analysis, uses_convolution
from .localization import (
    LatticeGeometry,
    LocalizationPlan,
    gaspari_cohn,
    grid_point_positions,
    grid_positions,
    lattice_geometry,
    plan_localization,
    sqg_positions,
)
from .spectral_wiener import SpectralWiener, SpectralWienerConfig, spectral_wiener_analysis

__all__ = [
    "LETKF",
    "LocalEnSF",
    "LocalEnSFConfig",
    "ensemble_space_ensf_transforms",
    "sde_noise",
    "SpectralEnSF",
    "SpectralEnSFConfig",
    "SpectralWiener",
    "SpectralWienerConfig",
    "hartley2",
    "shell_spread",
    "EnSF",
    "EnSFConfig",
    "EnSFResult",
    "Filter",
    "FilterFactory",
    "FilterGeometry",
    "FunctionFilter",
    "LETKFConfig",
    "LatticeGeometry",
    "TwoStageEnSF",
    "TwoStageEnSFConfig",
    "LocalizationPlan",
    "as_filter",
    "available_filters",
    "batched_eigh",
    "cross_validated_transforms",
    "ensf_analysis",
    "ensf_analysis_detailed",
    "etkf_analysis",
    "filter_settings_type",
    "gaspari_cohn",
    "grid_point_positions",
    "grid_positions",
    "lattice_geometry",
    "lattice_gram",
    "letkf_analysis",
    "make_filter",
    "nerger_weights",
    "plan_localization",
    "register_filter",
    "regression_increments",
    "spectral_wiener_analysis",
    "sqg_positions",
    "transforms_from_gram",
    "uses_convolution",
]
