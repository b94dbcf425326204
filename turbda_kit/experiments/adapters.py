"""Glue between models, filters and the cycling engine (no maths of its own).

* :class:`KelvinModel` runs an SQG model on states in K (the engine's and the data's
  units) while the model itself works in PV.
* :func:`ensf_filter` and :func:`letkf_filter` turn a filter's pure analysis function and
  its settings into the engine's ``analysis(forecast, obs, H, obs_error_std, generator)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..errors import InputError
from ..filters.ensf import EnSFConfig, ensf_analysis
from ..filters.letkf import LETKFConfig, letkf_analysis, plan_localization
from ..filters.localization import grid_point_positions
from ..models.sqg import SQGModel, pv_to_theta, theta_to_pv


class KelvinModel:
    """An :class:`~turbda_kit.models.sqg.SQGModel` whose states are temperatures in K.

    Parameters
    ----------
    model : SQGModel

    Attributes
    ----------
    state_shape : tuple of int
        ``(2, N, N)``.
    dt : float
        Model time step (s).
    time_unit_seconds : float
        1 (``dt`` is in seconds), for the engine's real-time meter.
    """

    time_unit_seconds = 1.0

    def __init__(self, model: SQGModel):
        self.model = model
        self.params = model.params
        self.state_shape = (2, model.params.N, model.params.N)
        self.dt = model.params.dt

    def __repr__(self) -> str:
        return f"KelvinModel({self.model!r})"

    def step(self, state: Tensor) -> Tensor:
        """One step of a state in K, shape ``(..., 2, N, N)``."""
        return self.advance(state, 1)

    def advance(self, state: Tensor, n_steps: int) -> Tensor:
        """``n_steps`` steps of a state in K, shape ``(..., 2, N, N)``."""
        pv = theta_to_pv(state, self.params)
        return pv_to_theta(self.model.advance(pv, n_steps), self.params)


def ensf_filter(config: EnSFConfig, reference_spread: float | None = None):
    """The engine's analysis function for EnSF with ``config``.

    Parameters
    ----------
    config : EnSFConfig
    reference_spread : float, optional
        Reference for ``config.spread_cap`` (e.g. the initial ensemble spread).
    """

    def analysis(forecast: Tensor, obs: Tensor, obs_operator, obs_error_std, generator
                 ) -> Tensor:
        return ensf_analysis(forecast, obs, obs_operator, obs_error_std, generator, config,
                             reference_spread=reference_spread)

    analysis.filter_name = "EnSF"  # type: ignore[attr-defined]
    return analysis


def letkf_filter(config: LETKFConfig, state_positions: Tensor | None = None,
                 domain_lengths: Sequence[float] | None = None):
    """The engine's analysis function for LETKF with ``config`` on a fixed geometry.

    Parameters
    ----------
    config : LETKFConfig
    state_positions : Tensor, shape (*state_shape, n_dims), optional
        Physical position of every state point (e.g.
        :func:`turbda_kit.filters.localization.sqg_positions`); needed when localising.
    domain_lengths : sequence of float, optional
        Periods of the horizontal axes (same units as the positions).

    Notes
    -----
    The localisation plan (local observation sets and weights) is computed once per
    observation network and reused while the operator object stays the same.
    """
    cache: dict[str, object] = {}

    def analysis(forecast: Tensor, obs: Tensor, obs_operator, obs_error_std, generator
                 ) -> Tensor:
        obs_ensemble = obs_operator(forecast)
        if state_positions is None:
            return letkf_analysis(forecast, obs_ensemble, obs, obs_error_std, config=config)
        if cache.get("operator") is not obs_operator:
            locations = getattr(obs_operator, "locations", None)
            if locations is None:
                raise InputError(f"{obs_operator!r} has no locations: LETKF localisation "
                                 "needs them")
            positions = state_positions.reshape(-1, state_positions.shape[-1])
            obs_positions = grid_point_positions(state_positions, locations)
            cache["operator"] = obs_operator
            cache["plan"] = plan_localization(positions.to(forecast.device),
                                              obs_positions.to(forecast.device),
                                              domain_lengths, config, precompute=True)
        return letkf_analysis(forecast, obs_ensemble, obs, obs_error_std, config=config,
                              plan=cache["plan"])

    analysis.filter_name = "LETKF"  # type: ignore[attr-defined]
    return analysis
