"""The spectral Wiener filter: what a homogeneous, isotropic prior allows at best.

A reference for the spectral EnSF (:mod:`turbda_kit.filters.ensf_spectral`). In the same
coordinates (the orthonormal 2-D Hartley transform of each level), with the same prior
(the forecast mean and the ensemble variance averaged over wavenumber shells, ``s^2`` per
coordinate) and identity observations of every value with one error ``sigma_o`` (still
independent, of variance ``sigma_o^2``, after the orthogonal transform), the Gaussian
posterior of every coordinate is closed-form::

    K = s^2 / (s^2 + sigma_o^2)
    mean_a = mean + K (y - mean)
    anomalies_a = anomalies * sqrt(1 - K)       (a deterministic square root)

An EnSF whose prior score were this homogeneous Gaussian would sample this posterior; the
filter therefore measures how far the homogeneous prior, rather than the score-based
sampler, limits the spectral EnSF. ``inflation`` multiplies the prior variances (and the
anomalies by its square root) before the update; ``rtps`` relaxes each coordinate's
anomaly scaling ``sqrt(1 - K)`` towards 1 (relaxation to the prior spread).

Only for identity observations of every value of a ``(..., N_y, N_x)`` periodic state
with one error std; anything else is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from .base import FilterGeometry, register_filter
from .ensf_spectral import check_dense_identity, hartley2, shell_spread

__all__ = ["SpectralWiener", "SpectralWienerConfig", "spectral_wiener_analysis"]


@dataclass(frozen=True)
class SpectralWienerConfig:
    """Settings of the spectral Wiener filter.

    Parameters
    ----------
    inflation : float
        Factor on the prior variances, >= 1 is usual, > 0.
    rtps : float
        Relaxation of the anomaly scaling towards the prior's, in [0, 1].
    spectrum : {"shell", "mode"}
        Shell-averaged variances or each mode's own (as in the spectral EnSF).
    spread_floor : float
        Smallest spread relative to the largest of its level, in (0, 1).
    """

    inflation: float = 1.0
    rtps: float = 0.0
    spectrum: str = "shell"
    spread_floor: float = 1e-6

    def __post_init__(self) -> None:
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value)

        if not (number(self.inflation) and self.inflation > 0):
            raise InputError(f"SpectralWienerConfig.inflation={self.inflation!r}: must be a "
                             "number > 0 (1: none)")
        if not (number(self.rtps) and 0 <= self.rtps <= 1):
            raise InputError(f"SpectralWienerConfig.rtps={self.rtps!r}: must be in [0, 1]")
        if self.spectrum not in ("shell", "mode"):
            raise InputError(f"SpectralWienerConfig.spectrum={self.spectrum!r}: choose "
                             "'shell' or 'mode'")
        if not (number(self.spread_floor) and 0 < self.spread_floor < 1):
            raise InputError(f"SpectralWienerConfig.spread_floor={self.spread_floor!r}: "
                             "must be in (0, 1)")


def spectral_wiener_analysis(forecast: Tensor, obs: Tensor, obs_error_std: float,
                             config: SpectralWienerConfig = SpectralWienerConfig()) -> Tensor:
    """The analysis ensemble of the spectral Wiener filter (module docstring).

    Parameters
    ----------
    forecast : Tensor, shape ``(members, ..., N_y, N_x)``
        A periodic field per level; at least two members.
    obs : Tensor, shape ``(..., N_y, N_x)`` or flat
        Observations of every value (state units).
    obs_error_std : float
        One observation error std (state units), > 0.
    config : SpectralWienerConfig

    Returns
    -------
    Tensor, shape and dtype of ``forecast``
        Computed in float64.
    """
    members, *shape = forecast.shape
    if members < 2 or len(shape) < 2:
        raise InputError(f"the spectral Wiener filter needs >= 2 members of a 2-D field per "
                         f"level; got an ensemble of shape {tuple(forecast.shape)}")
    if obs.numel() != math.prod(shape):
        raise InputError(f"obs has {obs.numel()} values for a state of {tuple(shape)}: the "
                         "spectral Wiener filter needs every value")
    if not (math.isfinite(obs_error_std) and obs_error_std > 0):
        raise InputError(f"obs_error_std={obs_error_std!r}: must be a finite number > 0")
    coefficients = hartley2(forecast.to(torch.float64))
    mean = coefficients.mean(dim=0)
    prior_var = shell_spread(coefficients, config.spread_floor,
                             config.spectrum == "shell").square() * config.inflation
    obs_var = obs_error_std ** 2
    gain = prior_var / (prior_var + obs_var)
    target = hartley2(obs.reshape(shape).to(torch.float64))
    scale = torch.sqrt(1.0 - gain)
    scale = scale + config.rtps * (1.0 - scale)
    analysis = mean + gain * (target - mean) \
        + (coefficients - mean) * (scale * math.sqrt(config.inflation))
    return hartley2(analysis).to(forecast.dtype)


class SpectralWiener:
    """The spectral Wiener filter as a :class:`~turbda_kit.filters.base.Filter`
    (``"wiener_spectral"``).

    Parameters
    ----------
    config : SpectralWienerConfig
    """

    name = "wiener_spectral"

    def __init__(self, config: SpectralWienerConfig = SpectralWienerConfig()):
        if not isinstance(config, SpectralWienerConfig):
            raise InputError(f"config must be a SpectralWienerConfig, got "
                             f"{type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"SpectralWiener({self.config!r})"

    def __call__(self, forecast_ensemble: Tensor, obs: Tensor, obs_operator, obs_error_std,
                 generator: torch.Generator | int | None = None) -> Tensor:
        """Analysis ensemble ``(member, *state_shape)`` (deterministic: ``generator`` unused).

        Raises
        ------
        InputError
            Not identity observations of every value, per-observation errors, a state with
            fewer than two dimensions.
        """
        _, sigma = check_dense_identity(forecast_ensemble, obs, obs_operator, obs_error_std,
                                        "the spectral Wiener filter")
        return spectral_wiener_analysis(forecast_ensemble, obs, sigma, self.config)


def _make(settings: SpectralWienerConfig | None, geometry: FilterGeometry) -> SpectralWiener:
    return SpectralWiener(settings if settings is not None else SpectralWienerConfig())


register_filter("wiener_spectral", _make, SpectralWienerConfig)
