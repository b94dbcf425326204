"""The filter interface the cycling engine calls, and filters by name.

A *filter* is one analysis step with its settings bound: a callable that takes the
forecast ensemble and this cycle's observations and returns the analysis ensemble. It is
a :class:`typing.Protocol`, so any function-like object with a ``name`` fits (EnSF,
LETKF, a test's nudging stand-in); the maths stays in the pure analysis functions of
:mod:`~turbda_kit.filters.ensf` and :mod:`~turbda_kit.filters.letkf`.

The registry maps a preset's filter name to a factory ``(settings, geometry) -> Filter``:
:func:`make_filter("letkf", LETKFConfig(...), geometry) <make_filter>`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import InputError
from ..registry import Registry

__all__ = [
    "Filter",
    "FunctionFilter",
    "FilterFactory",
    "FilterGeometry",
    "as_filter",
    "available_filters",
    "filter_settings_type",
    "make_filter",
    "register_filter",
]


@runtime_checkable
class Filter(Protocol):
    """One analysis step as the cycling engine calls it.

    Attributes
    ----------
    name : str
        Short name (the registry's, e.g. ``"ensf"``), recorded with the results.

    Notes
    -----
    ``filter(forecast_ensemble, obs, obs_operator, obs_error_std, generator)``:

    * ``forecast_ensemble`` — Tensor ``(member, *state_shape)`` in state units;
    * ``obs`` — Tensor ``(n_obs,)`` in observation units;
    * ``obs_operator`` — ``H: (*batch, *state_shape) -> (*batch, n_obs)``
      (:class:`~turbda_kit.obs.operators.ObsOperator`);
    * ``obs_error_std`` — float or Tensor ``(n_obs,)``, > 0, observation units;
    * ``generator`` — ``torch.Generator`` on the ensemble's device (deterministic filters
      ignore it);

    returns the analysis ensemble, same shape, dtype and device as the forecast.
    """

    name: str

    def __call__(self, forecast_ensemble: Tensor, obs: Tensor, obs_operator: Any,
                 obs_error_std: float | Tensor, generator: torch.Generator) -> Tensor: ...


class FunctionFilter:
    """A plain analysis function with the engine's call signature, as a :class:`Filter`.

    Parameters
    ----------
    function : callable
        ``function(forecast_ensemble, obs, obs_operator, obs_error_std, generator)``.
    name : str
        Recorded with the results.
    """

    def __init__(self, function: Callable[..., Tensor], name: str):
        if not callable(function):
            raise InputError(f"function must be callable, got {type(function).__name__}")
        self.function, self.name = function, str(name)

    def __repr__(self) -> str:
        return f"FunctionFilter({self.function!r}, name={self.name!r})"

    def __call__(self, forecast_ensemble: Tensor, obs: Tensor, obs_operator: Any,
                 obs_error_std: float | Tensor, generator: torch.Generator) -> Tensor:
        return self.function(forecast_ensemble, obs, obs_operator, obs_error_std, generator)


def as_filter(function: Callable[..., Tensor], name: str) -> Filter:
    """Wrap an analysis function (e.g. a test's stand-in) as a named :class:`Filter`.

    Examples
    --------
    >>> keep = as_filter(lambda forecast, obs, H, std, generator: forecast, "none")
    >>> keep.name
    'none'
    """
    return FunctionFilter(function, name)


@dataclass(frozen=True)
class FilterGeometry:
    """Where the state points are: what a localising filter needs to know of the grid.

    Attributes
    ----------
    state_positions : Tensor, shape (*state_shape, n_dims), optional
        Physical position of every state point: horizontal coordinates first (one per
        entry of ``domain_lengths``), optionally a vertical one last (e.g.
        :func:`~turbda_kit.filters.localization.sqg_positions`, metres).
    domain_lengths : tuple of float, optional
        Period of each horizontal axis (``math.inf`` for a bounded one), same units.
    """

    state_positions: Tensor | None = None
    domain_lengths: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.state_positions is None) != (self.domain_lengths is None):
            raise InputError("FilterGeometry needs both state_positions and domain_lengths, "
                             "or neither")
        if self.domain_lengths is not None:
            object.__setattr__(self, "domain_lengths",
                               tuple(float(length) for length in self.domain_lengths))


FilterFactory = Callable[[Any, FilterGeometry], Filter]
"""``factory(settings, geometry) -> Filter``; ``settings`` None means the filter's defaults."""


@dataclass(frozen=True)
class _Entry:
    factory: FilterFactory
    settings_type: type | None


_FILTERS: Registry[_Entry] = Registry("filter")


def register_filter(name: str, factory: FilterFactory, settings_type: type | None = None, *,
                    replace: bool = False) -> None:
    """Make :func:`make_filter` build ``factory(settings, geometry)`` for ``name``.

    Parameters
    ----------
    name : str
        Registry name (``"ensf"``, ``"letkf"``); what presets and notebooks say.
    factory : callable
        ``(settings, geometry) -> Filter``.
    settings_type : type, optional
        The settings class (e.g. :class:`~turbda_kit.filters.letkf.LETKFConfig`):
        :func:`make_filter` refuses settings of another type.
    replace : bool
        Allow overriding an existing entry.
    """
    _FILTERS.register(name, _Entry(factory, settings_type), replace=replace)


def make_filter(name: str, settings: Any = None,
                geometry: FilterGeometry | None = None) -> Filter:
    """The filter called ``name`` with ``settings`` on ``geometry``.

    Parameters
    ----------
    name : str
        A registered name (:func:`available_filters`).
    settings : object, optional
        The filter's settings (``EnSFConfig``, ``LETKFConfig``); None: its defaults.
    geometry : FilterGeometry, optional
        State positions for localising filters (default: none).

    Raises
    ------
    InputError
        Unknown name, or settings of the wrong type.

    Examples
    --------
    >>> from turbda_kit.filters import LETKFConfig, make_filter
    >>> make_filter("letkf", LETKFConfig(inflation="rtps", inflation_factor=0.5)).name
    'letkf'
    """
    entry = _FILTERS.get(name)
    if settings is not None and entry.settings_type is not None and not isinstance(
            settings, entry.settings_type):
        raise InputError(f"filter {name!r} takes {entry.settings_type.__name__} settings, got "
                         f"{type(settings).__name__}")
    return entry.factory(settings, geometry if geometry is not None else FilterGeometry())


def filter_settings_type(name: str) -> type | None:
    """The settings class registered for filter ``name`` (None when it declared none)."""
    return _FILTERS.get(name).settings_type


def available_filters() -> tuple[str, ...]:
    """Names :func:`make_filter` accepts."""
    return _FILTERS.names()

