"""Observation networks as data: which grid points are observed, how, and how often.

A network is described by a small frozen dataclass, :class:`ObsNetworkSpec` — the number
of observed points (``None``: all of them), whether the points are drawn once or anew
every cycle, which vertical levels may be observed (``(0,)``: the surface only) and the
fraction of the observations that are ``arctan`` of the state (the rest are the state
itself). :meth:`ObsNetworkSpec.build` turns it into what the cycling engine takes:

* a fixed network: one :class:`PointNetwork` operator, its points drawn from the
  ``(seed, 0, "obs_network")`` stream;
* a network drawn every cycle: a :class:`NetworkSampler`, called by the engine as
  ``sampler(cycle, generator)`` with the ``(seed, cycle, "obs_network")`` generator, so a
  resumed run sees the same networks as an uninterrupted one.

:class:`PointNetwork` observes chosen points, some through ``arctan(scale * x)`` and the
rest linearly, with analytic likelihood scores and Gauss-Newton diagonal (so the EnSF's
implicit likelihood step works) and grid-index ``locations`` (so the LETKF localises). It
carries its own per-observation error standard deviations (``obs_error_std``, shape
``(n_obs,)``): linear observations in state units, arctan ones dimensionless; the engine
uses them in place of the single ``CyclingConfig.obs_error_std``.

Examples
--------
>>> import torch
>>> spec = ObsNetworkSpec(n_obs=100, arctan_fraction=0.5, resample="fixed")
>>> H = spec.build((2, 16, 16), obs_error_std=1.0, seed=0)
>>> H.n_obs, int(H.arctan_mask.sum())
(100, 50)
>>> H(torch.zeros(3, 2, 16, 16)).shape
torch.Size([3, 100])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..random_streams import cycle_generator
from .operators import (
    Arctan,
    Identity,
    ObsOperator,
    Subset,
    _grid_coordinates,
    _prod,
    _validate_state_shape,
)

__all__ = [
    "RESAMPLE_KINDS",
    "NetworkSampler",
    "ObsNetworkSpec",
    "PointNetwork",
    "observed_points",
]

#: How often the observed points are drawn: once per run, or anew every cycle.
RESAMPLE_KINDS = ("fixed", "every_cycle")


class PointNetwork(ObsOperator):
    """Observe chosen state points, a subset of them through ``arctan``.

    ``H(x)_k = arctan(scale * x[i_k])`` where ``arctan_mask[k]``, else ``x[i_k]``.

    Parameters
    ----------
    state_shape : tuple of int
        Per-member state shape.
    indices : sequence of int or Tensor, shape (n_obs,)
        Flat (row-major) indices of the observed points, distinct.
    arctan_mask : Tensor of bool, shape (n_obs,), optional
        Which observations are ``arctan`` (default: none, a plain subset).
    arctan_scale : float
        ``scale`` in ``arctan(scale * x)`` (1/state units), finite and non-zero.
    obs_error_std : Tensor of shape (n_obs,) or float, optional
        The error standard deviation of each observation (state units for linear ones,
        dimensionless for arctan ones). None: the caller's single value is used.

    Attributes
    ----------
    n_obs : int
    indices : Tensor, int64, shape (n_obs,)
    arctan_mask : Tensor, bool, shape (n_obs,)
    locations : Tensor, shape (n_obs, len(state_shape))
        Grid indices of the observed points (array-axis order), as for
        :class:`~turbda_kit.obs.operators.Subset`.
    """

    def __init__(self, state_shape: Sequence[int], indices: Sequence[int] | Tensor,
                 arctan_mask: Tensor | None = None, arctan_scale: float = 1.0,
                 obs_error_std: Tensor | float | None = None):
        subset = Subset(state_shape, indices)     # validates shape and indices
        self.state_shape = subset.state_shape
        self.indices = subset.indices
        self.n_obs = subset.n_obs
        if arctan_mask is None:
            arctan_mask = torch.zeros(self.n_obs, dtype=torch.bool)
        if not isinstance(arctan_mask, Tensor) or arctan_mask.dtype != torch.bool \
                or tuple(arctan_mask.shape) != (self.n_obs,):
            raise InputError(f"arctan_mask must be a boolean tensor of shape ({self.n_obs},) "
                             f"(one flag per observation)")
        if not math.isfinite(float(arctan_scale)) or float(arctan_scale) == 0.0:
            raise InputError(f"arctan_scale={arctan_scale!r}: must be a finite non-zero number")
        self.arctan_mask = arctan_mask.cpu()
        self.arctan_scale = float(arctan_scale)
        if isinstance(obs_error_std, Tensor):
            if tuple(obs_error_std.shape) != (self.n_obs,) or not bool(
                    (obs_error_std > 0).all()):
                raise InputError(f"obs_error_std must have shape ({self.n_obs},) with every "
                                 f"value > 0")
        self.obs_error_std = obs_error_std
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return (f"PointNetwork(state_shape={self.state_shape}, n_obs={self.n_obs}, "
                f"n_arctan={int(self.arctan_mask.sum())})")

    @property
    def units(self) -> str | None:
        """``"1"`` when any observation is arctan (dimensionless), else None (state units)."""
        return "1" if bool(self.arctan_mask.any()) else None

    @property
    def locations(self) -> Tensor:
        """Grid indices of the observed points, ``(n_obs, len(state_shape))``."""
        return _grid_coordinates(self.indices, self.state_shape, None)

    def pointwise(self) -> ObsOperator:
        """The same observations as an operator on the observed values alone, ``(n_obs,)``.

        Identity or :class:`~turbda_kit.obs.operators.Arctan` (elementwise, the EnSF's
        tiled path) when all observations are of one kind, else a ``PointNetwork`` on
        ``(n_obs,)`` observing every value in order.
        """
        n_arctan = int(self.arctan_mask.sum())
        if n_arctan == 0:
            return Identity((self.n_obs,))
        if n_arctan == self.n_obs:
            return Arctan((self.n_obs,), scale=self.arctan_scale)
        return PointNetwork((self.n_obs,), torch.arange(self.n_obs), self.arctan_mask,
                            self.arctan_scale, self.obs_error_std)

    def _on(self, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = (self.indices.to(like.device),
                                self.arctan_mask.to(like.device))
        return self._cache[key]

    def _values_and_slope(self, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Observed values ``v``, ``H`` at them, and ``dH/dv`` (all ``(*batch, n_obs)``)."""
        index, mask = self._on(state)
        values = self._flat(state).index_select(-1, index)
        scaled = values * self.arctan_scale
        observed = torch.where(mask, torch.atan(scaled), values)
        slope = torch.where(mask, self.arctan_scale / (1.0 + scaled * scaled),
                            torch.ones_like(values))
        return values, observed, slope

    def _scatter(self, state: Tensor, values: Tensor, out: Tensor | None) -> Tensor:
        index, _ = self._on(state)
        batch = state.shape[:state.dim() - len(self.state_shape)]
        if out is None:
            out = state.new_zeros(state.shape)
        else:
            out.zero_()
        out.view(*batch, -1).index_copy_(-1, index, values.expand(*batch, self.n_obs)
                                         .contiguous().to(state.dtype))
        return out

    def _apply(self, state: Tensor) -> Tensor:
        return self._values_and_slope(state)[1]

    def _vjp(self, state: Tensor, cotangent: Tensor) -> Tensor:
        _, _, slope = self._values_and_slope(state)
        return self._scatter(state, cotangent * slope, None)

    def _likelihood_score(self, state, obs, inv_var, out, work):
        _, observed, slope = self._values_and_slope(state)
        return self._scatter(state, (obs - observed) * inv_var * slope, out)

    def _gauss_newton_diagonal(self, state, inv_var, out):
        _, _, slope = self._values_and_slope(state)
        return self._scatter(state, slope * slope * inv_var, out)


def observed_points(obs_operator: Any) -> tuple[Tensor, ObsOperator] | None:
    """The observed grid points of an operator and the operator restricted to them.

    Parameters
    ----------
    obs_operator : ObsOperator
        :class:`~turbda_kit.obs.operators.Identity`, ``Arctan``, ``Subset``, ``Subset @
        Arctan``, ``Subset @ Identity`` or :class:`PointNetwork`.

    Returns
    -------
    (indices, pointwise) or None
        ``indices`` (int64, ``(n_obs,)``): flat state index of each observation;
        ``pointwise``: an operator on ``(n_obs,)`` states with ``pointwise(x[..., indices])
        == obs_operator(x)``. None when the operator does not observe grid points one by
        one (e.g. a user's differentiable operator).
    """
    from .operators import Composed  # noqa: PLC0415 - local to keep the public surface small

    if isinstance(obs_operator, PointNetwork):
        return obs_operator.indices, obs_operator.pointwise()
    if isinstance(obs_operator, Identity):
        return torch.arange(obs_operator.n_obs), Identity((obs_operator.n_obs,))
    if isinstance(obs_operator, Arctan):
        return (torch.arange(obs_operator.n_obs),
                Arctan((obs_operator.n_obs,), scale=obs_operator.scale))
    if isinstance(obs_operator, Subset):
        return obs_operator.indices, Identity((obs_operator.n_obs,))
    if isinstance(obs_operator, Composed) and isinstance(obs_operator.outer, Subset) \
            and isinstance(obs_operator.inner, (Identity, Arctan)) \
            and obs_operator.outer.state_shape == obs_operator.inner.state_shape:
        n = obs_operator.n_obs
        inner = obs_operator.inner
        return obs_operator.outer.indices, (Arctan((n,), scale=inner.scale)
                                            if isinstance(inner, Arctan) else Identity((n,)))
    return None


@dataclass(frozen=True)
class ObsNetworkSpec:
    """An observation network: how many points, which levels, which operators, how often.

    Parameters
    ----------
    n_obs : int or None
        Number of observed points (>= 1), drawn uniformly without replacement from the
        candidate points. None: every candidate point.
    resample : {"fixed", "every_cycle"}
        ``"fixed"``: the points are drawn once (the ``(seed, 0, "obs_network")`` stream) and
        kept; ``"every_cycle"``: drawn anew every cycle (sqgturb's random network).
    levels : tuple of int or None
        Indices along the state's first axis that may be observed (SQG: 0 the surface, 1
        the lid; ``(0,)`` surface only). None: all. Needs a state of two or more axes.
    arctan_fraction : float
        Fraction of the observations (rounded to a whole number, chosen at random among
        the observed points with the points) that are ``arctan(arctan_scale * x)``, in
        [0, 1]; the rest observe ``x`` itself.
    arctan_scale : float
        ``scale`` of the arctan observations (1/state units), finite and non-zero.
    arctan_error_std : float or None
        Error standard deviation of the arctan observations (dimensionless), > 0. None:
        the run's ``obs_error_std`` (right only when every observation is arctan).

    Raises
    ------
    InputError
        A field outside its range (on construction), or a network that does not fit the
        state (:meth:`check`).
    """

    n_obs: int | None = None
    resample: str = "fixed"
    levels: tuple[int, ...] | None = None
    arctan_fraction: float = 0.0
    arctan_scale: float = 1.0
    arctan_error_std: float | None = None

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> InputError:
            return InputError(f"ObsNetworkSpec.{name}={getattr(self, name)!r}: {rule}")

        if self.n_obs is not None and (not isinstance(self.n_obs, int)
                                       or isinstance(self.n_obs, bool) or self.n_obs < 1):
            raise bad("n_obs", "must be None (every point) or an integer >= 1")
        if self.resample not in RESAMPLE_KINDS:
            raise bad("resample", f"choose one of {RESAMPLE_KINDS}")
        if self.levels is not None:
            levels = tuple(self.levels) if isinstance(self.levels, (list, tuple)) else None
            if not levels or any(not isinstance(v, int) or isinstance(v, bool) or v < 0
                                 for v in levels) or len(set(levels)) != len(levels):
                raise bad("levels", "must be None or distinct level indices >= 0, e.g. (0,) "
                          "for the surface only")
            object.__setattr__(self, "levels", levels)
        fraction = self.arctan_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0.0 <= float(fraction) <= 1.0:
            raise bad("arctan_fraction", "must be a number in [0, 1]")
        if not math.isfinite(float(self.arctan_scale)) or float(self.arctan_scale) == 0.0:
            raise bad("arctan_scale", "must be a finite non-zero number")
        if self.arctan_error_std is not None and not (
                math.isfinite(float(self.arctan_error_std)) and self.arctan_error_std > 0):
            raise bad("arctan_error_std", "must be None or a finite number > 0")

    def replace(self, **changes: Any) -> ObsNetworkSpec:
        """A copy with some fields changed; unknown field names are refused.

        Raises
        ------
        InputError
            A name that is not a field (the valid ones are listed), or a bad value.
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InputError(f"unknown ObsNetworkSpec field(s) {unknown}; valid: "
                             f"{', '.join(sorted(names))}")
        if isinstance(changes.get("levels"), list):
            changes["levels"] = tuple(changes["levels"])
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """The network in words, e.g. ``"2048 random points redrawn every cycle, 50% arctan
        (error 0.01)"``."""
        where = "" if self.levels is None else f" on level(s) {', '.join(map(str, self.levels))}"
        if self.n_obs is None:
            text = f"every point{where}"
        else:
            how = "redrawn every cycle" if self.resample == "every_cycle" else "fixed"
            text = f"{self.n_obs} random points{where}, {how}"
        if self.arctan_fraction:
            error = ("" if self.arctan_error_std is None
                     else f" (error {self.arctan_error_std:g})")
            text += f", {self.arctan_fraction:.0%} arctan{error}"
        return text

    @property
    def is_dense(self) -> bool:
        """Every point of every level observed."""
        return self.n_obs is None and self.levels is None

    def candidates(self, state_shape: Sequence[int]) -> Tensor:
        """Flat indices of the points that may be observed (int64, sorted)."""
        shape = self.check(state_shape)
        size = _prod(shape)
        if self.levels is None:
            return torch.arange(size)
        per_level = size // shape[0]
        return torch.cat([torch.arange(level * per_level, (level + 1) * per_level)
                          for level in sorted(self.levels)])

    def check(self, state_shape: Sequence[int]) -> tuple[int, ...]:
        """Validate the network against a state shape; returns the shape.

        Raises
        ------
        InputError
            Levels on a one-axis state or beyond its first axis; more points than there
            are candidates.
        """
        shape = _validate_state_shape(state_shape)
        if self.levels is not None:
            if len(shape) < 2:
                raise InputError(f"ObsNetworkSpec.levels={self.levels} needs a state with "
                                 f"levels on its first axis; state_shape is {shape}: use "
                                 f"levels=None")
            if max(self.levels) >= shape[0]:
                raise InputError(f"ObsNetworkSpec.levels={self.levels}: the state has "
                                 f"{shape[0]} levels (indices 0..{shape[0] - 1})")
        available = _prod(shape) if self.levels is None else \
            _prod(shape[1:]) * len(self.levels)
        if self.n_obs is not None and self.n_obs > available:
            raise InputError(f"ObsNetworkSpec.n_obs={self.n_obs} is more than the {available} "
                             f"points that may be observed in state_shape {shape}"
                             + ("" if self.levels is None else f" at levels {self.levels}"))
        return shape

    def draw(self, state_shape: Sequence[int], generator: torch.Generator,
             obs_error_std: float) -> PointNetwork:
        """One network: the observed points and which of them are arctan.

        Parameters
        ----------
        state_shape : tuple of int
        generator : torch.Generator
            CPU generator; the points are ``randperm`` of the candidates, the arctan ones
            a ``randperm`` of the observations.
        obs_error_std : float
            Error std of the linear observations (state units), > 0.

        Returns
        -------
        PointNetwork
        """
        if not (isinstance(obs_error_std, (int, float)) and obs_error_std > 0):
            raise InputError(f"obs_error_std={obs_error_std!r}: must be a number > 0")
        candidates = self.candidates(state_shape)
        n_obs = candidates.numel() if self.n_obs is None else self.n_obs
        if n_obs == candidates.numel():
            chosen = candidates
        else:
            chosen = torch.sort(candidates[torch.randperm(candidates.numel(),
                                                          generator=generator)[:n_obs]]).values
        n_arctan = int(round(float(self.arctan_fraction) * n_obs))
        mask = torch.zeros(n_obs, dtype=torch.bool)
        if 0 < n_arctan < n_obs:
            mask[torch.randperm(n_obs, generator=generator)[:n_arctan]] = True
        elif n_arctan == n_obs:
            mask[:] = True
        arctan_std = obs_error_std if self.arctan_error_std is None else self.arctan_error_std
        std = None
        if n_arctan and arctan_std != obs_error_std:
            std = torch.where(mask, torch.tensor(float(arctan_std), dtype=torch.float64),
                              torch.tensor(float(obs_error_std), dtype=torch.float64))
        return PointNetwork(state_shape, chosen, mask, self.arctan_scale, std)

    def build(self, state_shape: Sequence[int], obs_error_std: float, seed: int
              ) -> PointNetwork | NetworkSampler:
        """What the cycling engine takes: a fixed operator or a per-cycle sampler.

        Parameters
        ----------
        state_shape : tuple of int
        obs_error_std : float
            Error std of the linear observations (the preset's), > 0.
        seed : int
            The run's root seed (a fixed network draws from ``(seed, 0, "obs_network")``).
        """
        self.check(state_shape)
        if self.resample == "fixed":
            return self.draw(state_shape, cycle_generator(seed, 0, "obs_network"),
                             obs_error_std)
        return NetworkSampler(self, tuple(state_shape), float(obs_error_std))


@dataclass(frozen=True)
class NetworkSampler:
    """A network drawn anew every cycle: ``sampler(cycle, generator) -> PointNetwork``.

    The cycling engine calls it with the ``(seed, cycle, "obs_network")`` generator.

    Attributes
    ----------
    spec : ObsNetworkSpec
    state_shape : tuple of int
    obs_error_std : float
        Error std of the linear observations.
    """

    spec: ObsNetworkSpec
    state_shape: tuple[int, ...]
    obs_error_std: float

    def __call__(self, cycle: int, generator: torch.Generator) -> PointNetwork:
        """The network of ``cycle`` (the cycle only names the stream the generator is)."""
        del cycle
        return self.spec.draw(self.state_shape, generator, self.obs_error_std)
