"""A two-stage EnSF that also updates the points nobody observes.

The EnSF's paired prior score has no cross-covariance: each state value is pulled to its
own prior member, so with partial observations the unobserved points keep (a noisy copy
of) their prior. The two-stage filter adds the missing coupling the way serial ensemble
filters do (Anderson 2003, "a local least squares framework"):

1. **EnSF at the observed points.** The forecast ensemble restricted to the observed
   points, ``X_o`` (member, p), is analysed by :func:`~turbda_kit.filters.ensf.ensf_analysis`
   with the operator restricted to them (:func:`~turbda_kit.obs.networks.observed_points`),
   giving increments ``dX_o = X_o^a - X_o^f`` (member, p). Any nonlinearity of the
   observations is handled here, by the diffusion model.
2. **Localised ensemble regression** of those increments onto every other point ``u``::

       dX_u = (rho_uo * P_uo) (rho_oo * P_oo + lambda I)^{-1} dX_o       (member by member)

   ``P`` is the forecast ensemble covariance, ``rho`` the Gaspari-Cohn taper of the
   distance between points (the kit's :mod:`~turbda_kit.filters.localization`; half-width
   as the LETKF's), ``*`` the Schur product, ``lambda = ridge * mean(diag P_oo)``.

For a linear-Gaussian problem whose first stage is the Kalman update with the localised
covariance ``B = rho * P``, the regression step reproduces the Kalman update of the
unobserved points exactly (``ridge = 0``): with ``H`` selecting the observed points,
``K_u = B_uo S^-1 = B_uo B_oo^-1 K_o``. When every point is observed there is nothing to
regress and the filter *is* the EnSF (same call, same numbers). Derivation and limits in
``docs/ensf.md``.

The regression solves one dense ``p x p`` system per analysis (Cholesky, float64): fine
for the SQG 64² networks (p up to a few thousand, a fraction of a second), not meant for
tens of thousands of observations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..errors import InputError
from ..obs.networks import observed_points
from .base import FilterGeometry, register_filter
from .ensf import EnSFConfig, ensf_analysis, inflate_anomalies
from .localization import gaspari_cohn, pairwise_distances

__all__ = [
    "TwoStageEnSF",
    "TwoStageEnSFConfig",
    "localization_matrix",
    "regression_increments",
]


@dataclass(frozen=True)
class TwoStageEnSFConfig:
    """Settings of the two-stage EnSF.

    Parameters
    ----------
    ensf : EnSFConfig
        The first stage (EnSF at the observed points).
    localization_radius : float
        Horizontal Gaspari-Cohn half-width ``c`` of the regression (position units: m for
        SQG), > 0; ``math.inf``: no localisation (then ``ridge`` must be > 0: the ensemble
        covariance of many points is singular).
    vertical_localization_radius : float or None
        Vertical half-width (the last position column); None: none.
    ridge : float
        ``lambda`` relative to the mean forecast variance at the observed points, >= 0.
        The EnSF's increments are not confined to the ensemble's subspace: their
        small-scale part meets small eigenvalues of the localised covariance and is
        amplified by up to about ``1 / sqrt(ridge)``; 0.1 (default) bounds that to ~3.
        On the sparse SQG presets 0.1 beat 0.01 and kept a run stable that 0.01 lost
        (``docs/tuning.md``); 0 is the exact regression.
    relax_unobserved : bool
        Apply the EnSF's ``spread_relaxation`` (RTPS) to the unobserved points as well.
    chunk_size : int
        Unobserved points regressed together (bounds a ``chunk_size x p`` work array).
    """

    ensf: EnSFConfig = field(default_factory=EnSFConfig)
    localization_radius: float = math.inf
    vertical_localization_radius: float | None = None
    ridge: float = 0.1
    relax_unobserved: bool = True
    chunk_size: int = 2048

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> InputError:
            return InputError(f"TwoStageEnSFConfig.{name}={getattr(self, name)!r}: {rule}")

        if not isinstance(self.ensf, EnSFConfig):
            raise bad("ensf", "must be an EnSFConfig")
        if not (isinstance(self.localization_radius, (int, float))
                and self.localization_radius > 0):
            raise bad("localization_radius", "must be a length > 0 (math.inf for none)")
        vertical = self.vertical_localization_radius
        if vertical is not None and not (isinstance(vertical, (int, float)) and vertical > 0):
            raise bad("vertical_localization_radius", "must be None or a length > 0")
        if not (isinstance(self.ridge, (int, float)) and math.isfinite(self.ridge)
                and self.ridge >= 0):
            raise bad("ridge", "must be a finite number >= 0")
        if math.isinf(self.localization_radius) and self.ridge == 0:
            raise bad("ridge", "must be > 0 without localisation (the ensemble covariance "
                      "of more points than members is singular)")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise bad("chunk_size", "must be an integer >= 1")


def localization_matrix(positions_a: Tensor, positions_b: Tensor,
                        domain_lengths: Sequence[float], half_width: float,
                        vertical_half_width: float | None = None) -> Tensor:
    """Gaspari-Cohn taper between two point sets, ``(n_a, n_b)``.

    Parameters
    ----------
    positions_a, positions_b : Tensor, shape (n, n_dims)
        Horizontal coordinates first (one per ``domain_lengths`` entry), optionally a
        vertical one last.
    domain_lengths : sequence of float
        Periods of the horizontal axes (``math.inf``: bounded).
    half_width : float
        Horizontal half-width (``math.inf``: taper 1).
    vertical_half_width : float or None
        Vertical half-width; None: no vertical taper.

    Returns
    -------
    Tensor, shape (n_a, n_b), in [0, 1]
    """
    n_horizontal = len(domain_lengths)
    if math.isinf(half_width):
        taper = positions_a.new_ones(positions_a.shape[0], positions_b.shape[0])
    else:
        distance = pairwise_distances(positions_a[:, :n_horizontal],
                                      positions_b[:, :n_horizontal], domain_lengths)
        taper = gaspari_cohn(distance, half_width)
    if vertical_half_width is not None:
        if positions_a.shape[1] <= n_horizontal:
            raise InputError("vertical_localization_radius is set but the positions have no "
                             "vertical column")
        vertical = (positions_a[:, n_horizontal, None] - positions_b[None, :, n_horizontal]).abs()
        taper = taper * gaspari_cohn(vertical, vertical_half_width)
    return taper


def regression_increments(observed_forecast: Tensor, target_forecast: Tensor,
                          observed_increments: Tensor, observed_positions: Tensor | None,
                          target_positions: Tensor | None,
                          domain_lengths: Sequence[float] | None,
                          config: TwoStageEnSFConfig) -> Tensor:
    """The second stage: regress increments at observed points onto target points.

    ``dX_t = (rho_to * P_to) (rho_oo * P_oo + lambda I)^{-1} dX_o``, each member's
    increment regressed with the same (localised ensemble) covariances.

    Parameters
    ----------
    observed_forecast : Tensor, shape (member, p)
        Forecast ensemble at the observed points (state units).
    target_forecast : Tensor, shape (member, q)
        Forecast ensemble at the points to update.
    observed_increments : Tensor, shape (member, p)
        Analysis minus forecast at the observed points (the first stage's).
    observed_positions, target_positions : Tensor, shape (p, n_dims) / (q, n_dims), optional
        Positions (needed with a finite localisation radius).
    domain_lengths : sequence of float, optional
        Horizontal periods of the positions.
    config : TwoStageEnSFConfig
        Radii, ridge, chunk size.

    Returns
    -------
    Tensor, shape (member, q)
        Increments at the target points, dtype of ``target_forecast``.
    """
    members, p = observed_forecast.shape
    if members < 2:
        raise InputError(f"the regression needs >= 2 members, got {members}")
    if observed_increments.shape != observed_forecast.shape or \
            target_forecast.shape[0] != members:
        raise InputError(f"shapes disagree: observed forecast {tuple(observed_forecast.shape)}, "
                         f"increments {tuple(observed_increments.shape)}, target forecast "
                         f"{tuple(target_forecast.shape)}")
    localized = not math.isinf(config.localization_radius) or \
        config.vertical_localization_radius is not None
    if localized and (observed_positions is None or target_positions is None
                      or domain_lengths is None):
        raise InputError("a localised regression needs the positions of the points and the "
                         "domain lengths (FilterGeometry)")
    work = torch.float64
    observed_anomalies = observed_forecast.to(work)
    observed_anomalies = observed_anomalies - observed_anomalies.mean(0)
    scale = 1.0 / (members - 1)

    def taper(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if not localized:
            return None
        return localization_matrix(a.to(work), b.to(work), domain_lengths,
                                   config.localization_radius,
                                   config.vertical_localization_radius)

    covariance = (observed_anomalies.T @ observed_anomalies).mul_(scale)       # (p, p)
    rho = taper(observed_positions, observed_positions)
    if rho is not None:
        covariance.mul_(rho)
    ridge = config.ridge * float(covariance.diagonal().mean())
    covariance.diagonal().add_(ridge)
    factor, info = torch.linalg.cholesky_ex(covariance)
    if int(info) != 0:
        raise InputError("the localised covariance of the observed points is singular: raise "
                         "TwoStageEnSFConfig.ridge or use a finite localization_radius")
    weights = torch.cholesky_solve(observed_increments.to(work).T, factor)     # (p, m)
    del covariance, factor

    q = target_forecast.shape[1]
    out = target_forecast.new_empty(members, q)
    target = target_forecast.to(work)
    target = target - target.mean(0)
    for first in range(0, q, config.chunk_size):
        stop = min(first + config.chunk_size, q)
        cross = (target[:, first:stop].T @ observed_anomalies).mul_(scale)   # (q_c, p)
        rho = taper(None if target_positions is None else target_positions[first:stop],
                    observed_positions)
        if rho is not None:
            cross.mul_(rho)
        out[:, first:stop] = (cross @ weights).T.to(out.dtype)
    return out


def _relax_spread_(analysis: Tensor, forecast: Tensor, factor: float) -> None:
    """RTPS in place on ``(member, q)``: ``std_a <- std_a + factor (std_f - std_a)``."""
    std_f = forecast.std(0)
    std_a, mean_a = torch.std_mean(analysis, 0)
    target = std_a + factor * (std_f - std_a)
    ratio = torch.where(std_a > 0, target / std_a.clamp_min(torch.finfo(analysis.dtype).tiny),
                        torch.ones_like(std_a))
    analysis.sub_(mean_a).mul_(ratio).add_(mean_a)


class TwoStageEnSF:
    """The two-stage EnSF as a :class:`~turbda_kit.filters.base.Filter` (``"ensf_twostage"``).

    Parameters
    ----------
    config : TwoStageEnSFConfig
    state_positions : Tensor, shape (*state_shape, n_dims) or (n_state, n_dims), optional
        Position of every state point (e.g. :func:`~turbda_kit.filters.localization.sqg_positions`);
        needed with a finite localisation radius.
    domain_lengths : sequence of float, optional
        Horizontal periods of the positions.

    Notes
    -----
    The operator must observe grid points one by one (identity, arctan, subsets,
    :class:`~turbda_kit.obs.networks.PointNetwork`): the first stage needs the observed
    points, the second their positions.
    """

    name = "ensf_twostage"

    def __init__(self, config: TwoStageEnSFConfig = TwoStageEnSFConfig(),
                 state_positions: Tensor | None = None,
                 domain_lengths: Sequence[float] | None = None):
        if not isinstance(config, TwoStageEnSFConfig):
            raise InputError(f"config must be a TwoStageEnSFConfig, got {type(config).__name__}")
        self.config = config
        self.state_positions = None if state_positions is None else torch.as_tensor(
            state_positions)
        self.domain_lengths = None if domain_lengths is None else tuple(domain_lengths)

    def __repr__(self) -> str:
        return f"TwoStageEnSF({self.config!r})"

    def __call__(self, forecast_ensemble: Tensor, obs: Tensor, obs_operator, obs_error_std,
                 generator: torch.Generator | int) -> Tensor:
        """Analysis ensemble ``(member, *state_shape)``.

        Raises
        ------
        InputError
            An operator that does not observe grid points; a localised regression without
            positions; everything :func:`~turbda_kit.filters.ensf.ensf_analysis` refuses.
        """
        found = observed_points(obs_operator)
        if found is None:
            raise InputError(f"{obs_operator!r} does not observe grid points one by one; the "
                             "two-stage EnSF needs identity, arctan, subset or PointNetwork "
                             "observations")
        indices, pointwise = found
        members = forecast_ensemble.shape[0]
        flat = forecast_ensemble.reshape(members, -1)
        n = flat.shape[1]
        if indices.numel() == n and torch.equal(indices, torch.arange(n)):
            return ensf_analysis(forecast_ensemble, obs, obs_operator, obs_error_std,
                                 generator, self.config.ensf)
        # Prior inflation acts on the whole forecast, so that the regression sees the
        # covariances the first stage used; the first stage then takes it as given.
        stage_one = self.config.ensf
        if stage_one.prior_inflation != 1.0:
            flat = inflate_anomalies(flat, stage_one.prior_inflation)
            stage_one = replace(stage_one, prior_inflation=1.0)
        device = forecast_ensemble.device
        observed_index = indices.to(device)
        unobserved = torch.ones(n, dtype=torch.bool, device=device)
        unobserved[observed_index] = False
        unobserved_index = unobserved.nonzero().squeeze(1)

        observed_forecast = flat.index_select(1, observed_index)
        observed_analysis = ensf_analysis(observed_forecast, obs, pointwise, obs_error_std,
                                          generator, stage_one)
        positions = None
        if self.state_positions is not None:
            positions = self.state_positions.reshape(n, -1).to(device)
        target_forecast = flat.index_select(1, unobserved_index)
        increments = regression_increments(
            observed_forecast, target_forecast, observed_analysis - observed_forecast,
            None if positions is None else positions[observed_index],
            None if positions is None else positions[unobserved_index],
            self.domain_lengths, self.config)
        target_analysis = target_forecast + increments
        relaxation = self.config.ensf.spread_relaxation
        if self.config.relax_unobserved and relaxation is not None:
            _relax_spread_(target_analysis, target_forecast, relaxation)
        analysis = flat.clone()
        analysis[:, observed_index] = observed_analysis
        analysis[:, unobserved_index] = target_analysis
        return analysis.view_as(forecast_ensemble)


def _make_twostage(settings: TwoStageEnSFConfig | None, geometry: FilterGeometry
                   ) -> TwoStageEnSF:
    return TwoStageEnSF(settings if settings is not None else TwoStageEnSFConfig(),
                        geometry.state_positions, geometry.domain_lengths)


register_filter("ensf_twostage", _make_twostage, TwoStageEnSFConfig)
