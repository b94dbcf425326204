"""The EnSF in a spectral basis: a homogeneous prior for dense observations of a periodic field.

With every grid point observed, the EnSF's paired prior score works point by point: each
value is pulled to its own forecast member and to its own observation, so the analysis
can do no better than the per-point combination ``(1/sigma_b^2 + 1/sigma_o^2)^(-1/2)``.
Observation noise is white (equal variance at every wavenumber) while forecast errors of
a turbulent field are red (large at large scales, small at small ones); a point-by-point
update lets the small-scale noise in. The LETKF avoids it through its localised spatial
covariances.

This filter runs the same EnSF in coordinates where the forecast covariance is close to
diagonal: the **orthonormal 2-D discrete Hartley transform** of each level of a doubly
periodic field (``H x = Re F x - Im F x`` with the unitary DFT ``F``; real, orthogonal,
its own inverse). For a statistically homogeneous field the covariance is diagonal in
Fourier space, and identity observations with independent errors of one standard
deviation ``sigma_o`` stay identity observations with the same errors after an orthogonal
transform. Each coordinate is standardised by a forecast spread that is the ensemble
variance averaged over its wavenumber shell ``round(|k|)`` (per level): with 20 members a
single mode's variance is too noisy, and the shell average is the spectral analogue of
covariance localisation (a homogeneous, isotropic covariance). In those units the EnSF
(paired score, no further normalisation) sees each mode's own prior spread, so it weights
the observations where the forecast is uncertain (large scales) and ignores their noise
where it is not (small scales) — a Wiener filter, computed by the diffusion model.

Only for identity observations of every value of a ``(..., N_y, N_x)`` periodic state with
one error std (the SQG dense linear presets); anything else is refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import InputError
from ..obs.operators import Identity
from .base import FilterGeometry, register_filter
from .ensf import EnSFConfig, ensf_analysis

__all__ = ["SpectralEnSF", "SpectralEnSFConfig", "check_dense_identity", "hartley2",
           "shell_spread"]


@dataclass(frozen=True)
class SpectralEnSFConfig:
    """Settings of the spectral EnSF.

    Parameters
    ----------
    ensf : EnSFConfig
        The EnSF run on the standardised spectral coordinates; ``normalize`` must be False
        (the standardisation is this filter's).
    spectrum : {"shell", "mode"}
        The spread of each coordinate: the ensemble variance averaged over its wavenumber
        shell (``"shell"``) or the mode's own (``"mode"``; noisy with few members).
    spread_floor : float
        Smallest spread, as a fraction of the largest shell spread of its level: keeps
        modes the ensemble has no spread in from dividing by zero.
    """

    ensf: EnSFConfig = field(default_factory=lambda: EnSFConfig(n_steps=100))
    spectrum: str = "shell"
    spread_floor: float = 1e-6

    def __post_init__(self) -> None:
        if not isinstance(self.ensf, EnSFConfig):
            raise InputError(f"SpectralEnSFConfig.ensf must be an EnSFConfig, got "
                             f"{type(self.ensf).__name__}")
        if self.ensf.normalize:
            raise InputError("SpectralEnSFConfig.ensf.normalize must be False: the spectral "
                             "EnSF standardises its coordinates by the shell spread itself")
        if self.spectrum not in ("shell", "mode"):
            raise InputError(f"SpectralEnSFConfig.spectrum={self.spectrum!r}: choose 'shell' "
                             "or 'mode'")
        if not (isinstance(self.spread_floor, (int, float)) and 0 < self.spread_floor < 1):
            raise InputError(f"SpectralEnSFConfig.spread_floor={self.spread_floor!r}: must be "
                             "in (0, 1)")


def hartley2(x: Tensor) -> Tensor:
    """Orthonormal 2-D discrete Hartley transform over the last two dimensions.

    Parameters
    ----------
    x : Tensor, shape ``(..., N_y, N_x)``, real

    Returns
    -------
    Tensor, same shape and dtype
        ``Re F x - Im F x`` with the unitary DFT ``F``; ``hartley2(hartley2(x)) == x`` up to
        rounding, and norms are preserved.
    """
    spectrum = torch.fft.fft2(x, norm="ortho")
    return spectrum.real - spectrum.imag


def _shells(ny: int, nx: int, device: torch.device) -> tuple[Tensor, int]:
    ky = torch.fft.fftfreq(ny, 1.0 / ny, device=device)
    kx = torch.fft.fftfreq(nx, 1.0 / nx, device=device)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    index = torch.round(radius).to(torch.long)
    return index, int(index.max()) + 1


def shell_spread(coefficients: Tensor, floor: float = 1e-6, shells: bool = True) -> Tensor:
    """Forecast spread of every spectral coordinate, shell-averaged per level.

    Parameters
    ----------
    coefficients : Tensor, shape ``(members, ..., N_y, N_x)``
        The ensemble in Hartley coordinates.
    floor : float
        Smallest spread relative to the largest of its level.
    shells : bool
        Average the variance over wavenumber shells ``round(|k|)`` (else per mode).

    Returns
    -------
    Tensor, shape ``(..., N_y, N_x)``
        Standard deviations (units of the state).
    """
    variance = coefficients.var(dim=0, unbiased=True)
    if shells:
        ny, nx = variance.shape[-2:]
        index, count = _shells(ny, nx, variance.device)
        flat = variance.reshape(-1, ny * nx)
        sums = flat.new_zeros(flat.shape[0], count).index_add_(1, index.reshape(-1), flat)
        sizes = torch.bincount(index.reshape(-1), minlength=count).to(flat.dtype)
        variance = (sums / sizes)[:, index.reshape(-1)].reshape(variance.shape)
    spread = variance.sqrt()
    top = spread.flatten(-2).amax(dim=-1)[..., None, None]
    return torch.maximum(spread, top * floor)


def check_dense_identity(forecast_ensemble: Tensor, obs: Tensor, obs_operator,
                         obs_error_std, who: str, instead: str = "") -> tuple[tuple[int, ...],
                                                                            float]:
    """Check a filter call of the spectral filters: identity observations of every value
    of a field with at least two dimensions, one error std.

    Returns
    -------
    (tuple of int, float)
        The state shape and the error std.

    Raises
    ------
    InputError
        Naming ``who`` and, for another operator, what to use ``instead``.
    """
    if not isinstance(obs_operator, Identity):
        hint = f" ({instead})" if instead else ""
        raise InputError(f"{who} needs identity observations of every value; got "
                         f"{obs_operator!r}{hint}")
    state_shape = tuple(forecast_ensemble.shape[1:])
    if len(state_shape) < 2:
        raise InputError(f"{who} needs a 2-D periodic field per level; the state has shape "
                         f"{state_shape}")
    if tuple(obs_operator.state_shape) != state_shape or obs.numel() != math.prod(state_shape):
        raise InputError(f"obs has {obs.numel()} values of a state of "
                         f"{tuple(obs_operator.state_shape)}, the ensemble's state is "
                         f"{state_shape}: {who} needs every value")
    sigma = torch.as_tensor(obs_error_std)
    if sigma.numel() != 1:
        raise InputError(f"{who} needs one observation error std for every value (an "
                         "orthogonal transform keeps only those independent)")
    return state_shape, float(sigma)


class SpectralEnSF:
    """The spectral EnSF as a :class:`~turbda_kit.filters.base.Filter` (``"ensf_spectral"``).

    Parameters
    ----------
    config : SpectralEnSFConfig
    """

    name = "ensf_spectral"

    def __init__(self, config: SpectralEnSFConfig = SpectralEnSFConfig()):
        if not isinstance(config, SpectralEnSFConfig):
            raise InputError(f"config must be a SpectralEnSFConfig, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"SpectralEnSF({self.config!r})"

    def __call__(self, forecast_ensemble: Tensor, obs: Tensor, obs_operator, obs_error_std,
                 generator: torch.Generator | int) -> Tensor:
        """Analysis ensemble ``(member, *state_shape)``.

        Parameters
        ----------
        forecast_ensemble : Tensor, shape ``(members, ..., N_y, N_x)``
            A periodic field (e.g. SQG's ``(members, 2, N, N)``).
        obs : Tensor, shape ``(n_state,)``
            Observations of every value, in the state's order.
        obs_operator : Identity
        obs_error_std : float or 0-d Tensor
            One error std for every observation (state units).
        generator : torch.Generator or int

        Raises
        ------
        InputError
            Not identity observations of every value, per-observation errors, a state with
            fewer than two dimensions; everything :func:`ensf_analysis` refuses.
        """
        state_shape, sigma = check_dense_identity(forecast_ensemble, obs, obs_operator,
                                                  obs_error_std, "the spectral EnSF",
                                                  "use ensf or ensf_twostage")
        members = forecast_ensemble.shape[0]
        n = math.prod(state_shape)
        work = forecast_ensemble.to(torch.float64)
        coefficients = hartley2(work)                               # (M, ..., Ny, Nx)
        mean = coefficients.mean(dim=0)
        spread = shell_spread(coefficients, self.config.spread_floor,
                              self.config.spectrum == "shell")
        prior = ((coefficients - mean) / spread).reshape(members, n)
        target = ((hartley2(obs.reshape(state_shape).to(torch.float64)) - mean)
                  / spread).reshape(n)
        errors = (sigma / spread).reshape(n)
        dtype = forecast_ensemble.dtype
        analysed = ensf_analysis(prior.to(dtype), target.to(dtype), Identity((n,)),
                                 errors.to(dtype), generator, self.config.ensf)
        back = analysed.to(torch.float64).reshape(members, *state_shape) * spread + mean
        return hartley2(back).to(dtype)


def _make_spectral(settings: SpectralEnSFConfig | None, geometry: FilterGeometry
                   ) -> SpectralEnSF:
    return SpectralEnSF(settings if settings is not None else SpectralEnSFConfig())


register_filter("ensf_spectral", _make_spectral, SpectralEnSFConfig)


def spectral_config_from(ensf: EnSFConfig, **changes) -> SpectralEnSFConfig:
    """A spectral EnSF whose inner EnSF is ``ensf`` without its normalisation."""
    return SpectralEnSFConfig(ensf=dataclasses.replace(ensf, normalize=False), **changes)
