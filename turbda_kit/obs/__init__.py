"""Observation operators, observation networks and noise processes."""

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
    "register_operator",
    "without_missing",
]
