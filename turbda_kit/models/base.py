"""The forecast-model interface shared by physics models and surrogates, and state checks.

A forecast model maps an ensemble-batched state ``(*batch, *state_shape)`` forward in
time. It is a :class:`typing.Protocol`, so a spectral SQG model and a neural surrogate are
interchangeable by shape, not by inheritance (see ``docs/design.md``). Every consumer —
the cycling engine, the experiment builder, the coupled runs — asks for this one
protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["ForecastModel", "check_state"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


@runtime_checkable
class ForecastModel(Protocol):
    """What the filters and cycling loops need from a forecast model.

    Attributes
    ----------
    state_shape : tuple of int
        Shape of one member's state (SQG: ``(2, N, N)``; Lorenz-96: ``(n,)``).
    dt : float
        Length of one step in the model's time unit (seconds for SQG and the ViT
        surrogate, model time units (MTU) for Lorenz-96).
    time_unit_seconds : float
        Seconds of simulated time per unit of ``dt``: 1.0 for SQG and the surrogate;
        432000 (5 days) for Lorenz-96, Lorenz's (1996) calibration of one MTU against the
        error-doubling time of the atmosphere. The cycling engine's model time
        (``time_hours``) and real-time factor use it.

    Examples
    --------
    >>> from turbda_kit.models.lorenz96 import Lorenz96
    >>> isinstance(Lorenz96(40), ForecastModel)
    True
    """

    state_shape: tuple[int, ...]
    dt: float
    time_unit_seconds: float

    def step(self, state: Tensor) -> Tensor:
        """Advance ``(*batch, *state_shape)`` by one step; same shape, dtype and device."""
        ...

    def advance(self, state: Tensor, n_steps: int) -> Tensor:
        """Advance ``(*batch, *state_shape)`` by ``n_steps`` steps."""
        ...


def check_state(state: Tensor, state_shape: tuple[int, ...], name: str = "state",
                dtypes: tuple[torch.dtype, ...] = _FLOAT_DTYPES, finite: bool = True) -> Tensor:
    """Validate a model state at an API boundary and return it unchanged.

    Parameters
    ----------
    state : Tensor, shape ``(*batch, *state_shape)``
        The state to check; any number of leading batch/ensemble dimensions.
    state_shape : tuple of int
        Required trailing (per-member) shape.
    name : str
        Name used in error messages (the caller's parameter name).
    dtypes : tuple of torch.dtype
        Allowed dtypes (default float32 and float64).
    finite : bool
        Also require every value to be finite (one reduction over the tensor; on a GPU
        this synchronises with the host).

    Returns
    -------
    Tensor
        ``state`` itself.

    Raises
    ------
    InputError
        Not a tensor, wrong trailing shape, wrong dtype, or NaN/inf values.

    Examples
    --------
    >>> check_state(torch.zeros(3, 2, 8, 8), (2, 8, 8)).shape
    torch.Size([3, 2, 8, 8])
    """
    if not isinstance(state, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (*batch, {_fmt(state_shape)}), "
                         f"got {type(state).__name__}")
    n = len(state_shape)
    if state.dim() < n or tuple(state.shape[state.dim() - n:]) != tuple(state_shape):
        raise InputError(f"{name} has shape {tuple(state.shape)}; expected (*batch, "
                         f"{_fmt(state_shape)}) with any number of leading batch dimensions")
    if state.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise InputError(f"{name} has dtype {str(state.dtype).replace('torch.', '')}; "
                         f"allowed: {allowed} (convert with .to(torch.float64))")
    if finite and state.numel() and not bool(torch.isfinite(state).all()):
        bad = int((~torch.isfinite(state)).sum())
        raise InputError(f"{name} contains {bad} NaN/inf value(s); every value must be finite "
                         f"(a diverged forecast or a bad initial condition?)")
    return state


def _fmt(shape: tuple[int, ...]) -> str:
    return ", ".join(str(s) for s in shape)
