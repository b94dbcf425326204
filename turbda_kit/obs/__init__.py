"""Observation operators, observation networks and noise processes."""

from .networks import NetworkSampler, ObsNetworkSpec, PointNetwork, observed_points
from .noise import ShockProcess, ShockRecord, gaussian_noise, observe
from .operators import (
    Arctan,
    Composed,
    DifferentiableObs,
    Identity,
    ObsOperator,
    OperatorFactory,
    Subset,
    available_operators,
    check_obs,
    compose,
    inverse_variance,
    likelihood_score,
    make_operator,
    register_operator,
    without_missing,
)

__all__ = [
    "Arctan",
    "Composed",
    "DifferentiableObs",
    "Identity",
    "NetworkSampler",
    "ObsNetworkSpec",
    "PointNetwork",
    "ObsOperator",
    "OperatorFactory",
    "ShockProcess",
    "ShockRecord",
    "Subset",
    "available_operators",
    "check_obs",
    "compose",
    "gaussian_noise",
    "inverse_variance",
    "likelihood_score",
    "make_operator",
    "observe",
    "observed_points",
    "register_operator",
    "without_missing",
]
