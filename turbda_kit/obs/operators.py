"""Observation operators ``H: (*batch, *state_shape) -> (*batch, n_obs)`` with likelihood scores.

Every operator here is a callable with attributes ``state_shape``, ``n_obs`` and
``locations``, and two derivative methods:

* ``vjp(state, cotangent)``: ``J_H(state)^T cotangent``, shape ``(*batch, *state_shape)``;
* ``likelihood_score(state, obs, obs_error_std)``: the gradient with respect to ``state``
  of the Gaussian log-likelihood ``-|H(x) - y|^2 / (2 sigma^2)``, i.e.
  ``J_H^T (y - H(x)) / sigma^2``.

Identity, arctan and subset operators have analytic, allocation-light scores (``out=`` and
a scratch buffer ``work=`` can be passed); compositions chain the ``vjp`` of their parts;
:class:`DifferentiableObs` wraps any differentiable user callable and uses autograd.

Missing observations: ``likelihood_score`` **refuses** observations containing NaN with an
:class:`~turbda_kit.errors.InputError`. To assimilate the valid ones, drop the missing ones
first with :func:`without_missing`, which returns a smaller operator and observation vector.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> H = Subset.random((40,), 10, g) @ Arctan((40,), scale=1.0)   # arctan, then 10 of 40
>>> H(torch.zeros(5, 40)).shape
torch.Size([5, 10])
>>> H.locations.shape   # grid coordinates of the observed points
torch.Size([10, 1])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from ..registry import Registry

__all__ = [
    "Arctan",
    "Composed",
    "DifferentiableObs",
    "Identity",
    "ObsOperator",
    "OperatorFactory",
    "Subset",
    "available_operators",
    "check_obs",
    "compose",
    "inverse_variance",
    "likelihood_score",
    "make_operator",
    "register_operator",
    "without_missing",
]


def _prod(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _grid_coordinates(flat_index: Tensor, state_shape: tuple[int, ...],
                      grid_spacing: Sequence[float] | None) -> Tensor:
    """Unravel flat indices to ``(n, ndim)`` grid coordinates times the grid spacing."""
    coords = []
    rest = flat_index.to(torch.int64)
    for size in reversed(state_shape):
        coords.append(rest % size)
        rest = rest // size
    grid = torch.stack(coords[::-1], dim=-1).to(torch.float64)
    if grid_spacing is not None:
        grid = grid * torch.as_tensor(grid_spacing, dtype=torch.float64)
    return grid


def inverse_variance(obs_error_std: float | Tensor, n_obs: int,
                     like: Tensor | None = None) -> float | Tensor:
    """Validate ``obs_error_std`` and return ``1 / obs_error_std**2``.

    Parameters
    ----------
    obs_error_std : float or Tensor of shape ``()`` or ``(n_obs,)``
        Observation error standard deviation(s), finite and > 0 (observation units).
    n_obs : int
        Number of observations.
    like : Tensor, optional
        Tensor whose dtype/device a tensor result takes.

    Returns
    -------
    float or Tensor of shape ``(n_obs,)``
    """
    if isinstance(obs_error_std, Tensor):
        if obs_error_std.dim() == 0:
            return inverse_variance(float(obs_error_std), n_obs)
        if tuple(obs_error_std.shape) != (n_obs,):
            raise InputError(f"obs_error_std has shape {tuple(obs_error_std.shape)}; expected a "
                             f"scalar or shape ({n_obs},) (one std per observation)")
        if not bool(torch.isfinite(obs_error_std).all()) or not bool((obs_error_std > 0).all()):
            raise InputError(f"obs_error_std must be finite and > 0 for every observation; "
                             f"min={float(obs_error_std.min())}")
        inv = obs_error_std.reciprocal().square()
        return inv if like is None else inv.to(device=like.device, dtype=like.dtype)
    value = float(obs_error_std)
    if not value > 0 or math.isinf(value):
        raise InputError(f"obs_error_std={obs_error_std!r}: must be a finite number > 0")
    return 1.0 / (value * value)


def check_obs(obs: Tensor, n_obs: int, name: str = "obs") -> Tensor:
    """Validate observations at an API boundary: shape ``(..., n_obs)``, no NaN/inf.

    Raises
    ------
    InputError
        Not a tensor, last dimension not ``n_obs``, or non-finite values (use
        :func:`without_missing` to drop missing observations first).
    """
    if not isinstance(obs, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (..., {n_obs}), got "
                         f"{type(obs).__name__}")
    if obs.dim() == 0 or obs.shape[-1] != n_obs:
        raise InputError(f"{name} has shape {tuple(obs.shape)}; the observation operator "
                         f"returns {n_obs} observations, so expected shape (..., {n_obs})")
    if not bool(torch.isfinite(obs).all()):
        bad = int((~torch.isfinite(obs)).sum())
        raise InputError(f"{name} contains {bad} NaN/inf value(s); missing observations are "
                         f"refused: drop them with turbda_kit.obs.operators.without_missing"
                         f"(operator, obs)")
    return obs


class ObsOperator:
    """Base class: shape checks, composition with ``@``, and the likelihood score.

    Subclasses implement ``_apply(state)`` on ``(*batch, *state_shape)`` and
    ``_vjp(state, cotangent)``; elementwise and subset operators override
    ``_likelihood_score`` with an allocation-light analytic form.

    Attributes
    ----------
    state_shape : tuple of int
        Per-member state shape the operator accepts.
    n_obs : int
        Number of observations it returns.
    elementwise : bool
        True when observation ``k`` depends only on state value ``k`` (``n_obs`` equals
        the state size, in flattened order).
    """

    state_shape: tuple[int, ...]
    n_obs: int
    elementwise: bool = False
    #: Elementwise operators may provide ``pointwise_score_(x, obs, inv_var, out, work)``:
    #: the likelihood score on any block of values (no shape checks; ``obs`` and
    #: ``inv_var`` broadcastable to ``x``; ``out``/``work`` shaped like ``x``). Since
    #: observation ``k`` depends only on state value ``k``, the score of a set of columns
    #: needs only their observations, which lets the EnSF work through the state in
    #: cache-sized tiles. None when not available.
    pointwise_score_: Callable | None = None
    #: Elementwise operators may also provide ``pointwise_curvature_(x, inv_var, out)``:
    #: the diagonal Gauss-Newton curvature ``h'(x)^2 / sigma^2`` of the negative
    #: log-likelihood on any block of values (what the EnSF's linearly implicit likelihood
    #: step divides by). None when not available.
    pointwise_curvature_: Callable | None = None

    # ---- public API -------------------------------------------------------------
    def __call__(self, state: Tensor) -> Tensor:
        """``H(state)``: ``(*batch, *state_shape) -> (*batch, n_obs)``."""
        self._check_state(state)
        return self._apply(state)

    def vjp(self, state: Tensor, cotangent: Tensor) -> Tensor:
        """``J_H(state)^T cotangent``.

        Parameters
        ----------
        state : Tensor, shape ``(*batch, *state_shape)``
        cotangent : Tensor, shape ``(*batch, n_obs)`` (or broadcastable to it)

        Returns
        -------
        Tensor, shape ``(*batch, *state_shape)``
        """
        self._check_state(state)
        return self._vjp(state, cotangent)

    def likelihood_score(self, state: Tensor, obs: Tensor, obs_error_std: float | Tensor,
                         out: Tensor | None = None, work: Tensor | None = None) -> Tensor:
        """Gradient of ``-|H(x) - y|^2 / (2 sigma^2)`` with respect to ``x``.

        Parameters
        ----------
        state : Tensor, shape ``(*batch, *state_shape)``
            Where to evaluate (the ensemble, say).
        obs : Tensor, shape ``(n_obs,)`` or ``(*batch, n_obs)``
            Observations ``y``; NaN/inf are refused (see :func:`without_missing`).
        obs_error_std : float or Tensor of shape ``(n_obs,)``
            ``sigma``, > 0, in observation units.
        out : Tensor, optional
            Output buffer shaped like ``state`` (must not alias it).
        work : Tensor, optional
            Scratch buffer shaped like ``state`` (used by :class:`Arctan`).

        Returns
        -------
        Tensor, shape ``(*batch, *state_shape)``
            Units of 1 / state units.
        """
        self._check_state(state)
        check_obs(obs, self.n_obs)
        inv_var = inverse_variance(obs_error_std, self.n_obs, like=state)
        return self._likelihood_score(state, obs.to(dtype=state.dtype), inv_var, out, work)

    def gauss_newton_diagonal(self, state: Tensor, obs_error_std: float | Tensor,
                              out: Tensor | None = None) -> Tensor:
        """Diagonal of ``J_H(x)^T R^-1 J_H(x)``: the Gauss-Newton curvature of the negative
        log-likelihood, per state value.

        Exact for operators whose Jacobian has one non-zero per row and column (identity,
        arctan, subsets), which are the ones that provide it.

        Parameters
        ----------
        state : Tensor, shape ``(*batch, *state_shape)``
        obs_error_std : float or Tensor of shape ``(n_obs,)``
            ``sigma``, > 0, in observation units.
        out : Tensor, optional
            Output buffer shaped like ``state``.

        Returns
        -------
        Tensor, shape ``(*batch, *state_shape)``
            Units of 1 / state units squared; >= 0.

        Raises
        ------
        InputError
            If the operator has no cheap diagonal (composed or user-supplied operators).
        """
        self._check_state(state)
        inv_var = inverse_variance(obs_error_std, self.n_obs, like=state)
        if out is None:
            out = torch.empty_like(state)
        return self._gauss_newton_diagonal(state, inv_var, out)

    @property
    def has_gauss_newton_diagonal(self) -> bool:
        """Whether :meth:`gauss_newton_diagonal` is available for this operator."""
        return type(self)._gauss_newton_diagonal is not ObsOperator._gauss_newton_diagonal

    @property
    def locations(self) -> Tensor | None:
        """Observation positions ``(n_obs, ndim)`` in grid units, or None if unknown."""
        return None

    def __matmul__(self, inner: ObsOperator) -> Composed:
        return compose(self, inner)

    # ---- for subclasses / the filters (no validation) ---------------------------
    def _apply(self, state: Tensor) -> Tensor:
        raise NotImplementedError

    def _vjp(self, state: Tensor, cotangent: Tensor) -> Tensor:
        raise NotImplementedError

    def _likelihood_score(self, state: Tensor, obs: Tensor, inv_var: float | Tensor,
                          out: Tensor | None, work: Tensor | None) -> Tensor:
        residual = obs - self._apply(state)          # (*batch, n_obs)
        residual = residual * inv_var
        score = self._vjp(state, residual)
        if out is None:
            return score
        return out.copy_(score)

    def _gauss_newton_diagonal(self, state: Tensor, inv_var: float | Tensor,
                               out: Tensor) -> Tensor:
        raise InputError(f"{type(self).__name__} has no cheap Gauss-Newton diagonal; use an "
                         f"identity, arctan or subset operator, or the explicit likelihood step")

    def _check_state(self, state: Tensor) -> None:
        if not isinstance(state, Tensor):
            raise InputError(f"state must be a torch.Tensor, got {type(state).__name__}")
        k = len(self.state_shape)
        if state.dim() < k or tuple(state.shape[state.dim() - k:]) != self.state_shape:
            raise InputError(f"state has shape {tuple(state.shape)}; this operator expects "
                             f"(*batch, {', '.join(map(str, self.state_shape))})")

    def _flat(self, state: Tensor) -> Tensor:
        return state.reshape(*state.shape[:state.dim() - len(self.state_shape)], -1)

    def _unflat(self, flat: Tensor) -> Tensor:
        return flat.reshape(*flat.shape[:-1], *self.state_shape)


def _validate_state_shape(state_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in state_shape)
    if not shape or any(s < 1 for s in shape):
        raise InputError(f"state_shape={tuple(state_shape)}: must be a non-empty tuple of "
                         f"positive sizes, e.g. (n,) for Lorenz-96 or (2, N, N) for SQG")
    return shape


class _Elementwise(ObsOperator):
    elementwise = True

    def __init__(self, state_shape: Sequence[int], grid_spacing: Sequence[float] | None = None):
        self.state_shape = _validate_state_shape(state_shape)
        self.n_obs = _prod(self.state_shape)
        self.grid_spacing = None if grid_spacing is None else tuple(float(g) for g in grid_spacing)

    @property
    def locations(self) -> Tensor:
        """Grid coordinates of every state point, ``(n_obs, len(state_shape))``."""
        return _grid_coordinates(torch.arange(self.n_obs), self.state_shape, self.grid_spacing)

    def _as_state(self, values: Tensor | float) -> Tensor | float:
        # (..., n_obs) observation-space tensor -> broadcastable to (..., *state_shape).
        if isinstance(values, Tensor) and values.dim() > 0:
            return values.reshape(*values.shape[:-1], *self.state_shape)
        return values

    def _likelihood_score(self, state, obs, inv_var, out, work):
        if out is None:
            out = torch.empty_like(state)
        return self.pointwise_score_(state, self._as_state(obs), self._as_state(inv_var), out,
                                     work)

    def _gauss_newton_diagonal(self, state, inv_var, out):
        return self.pointwise_curvature_(state, self._as_state(inv_var), out)


class Identity(_Elementwise):
    """Observe every state value: ``H(x) = flatten(x)``.

    Parameters
    ----------
    state_shape : tuple of int
        Per-member state shape.
    grid_spacing : sequence of float, optional
        Grid spacing per state dimension, to express ``locations`` in grid units.
    """

    def __repr__(self) -> str:
        return f"Identity(state_shape={self.state_shape})"

    def _apply(self, state: Tensor) -> Tensor:
        return self._flat(state)

    def _vjp(self, state: Tensor, cotangent: Tensor) -> Tensor:
        return self._unflat(cotangent.expand(*state.shape[:state.dim() - len(self.state_shape)],
                                             self.n_obs))

    def pointwise_score_(self, x: Tensor, obs: Tensor, inv_var: float | Tensor, out: Tensor,
                         work: Tensor | None = None) -> Tensor:
        """``(y - x) / sigma^2`` elementwise; ``obs``/``inv_var`` broadcast against ``x``."""
        torch.sub(obs, x, out=out)
        return out.mul_(inv_var)

    def pointwise_curvature_(self, x: Tensor, inv_var: float | Tensor, out: Tensor) -> Tensor:
        """``1 / sigma^2`` at every value of ``x`` (into ``out``, shaped like ``x``)."""
        if isinstance(inv_var, Tensor):
            return out.copy_(inv_var.expand_as(out))
        return out.fill_(inv_var)


class Arctan(_Elementwise):
    """Observe ``atan(scale * x)`` at every state value (the EnSF paper's nonlinear operator).

    Parameters
    ----------
    state_shape : tuple of int
        Per-member state shape.
    scale : float
        Multiplies the state before the arctan (1 / state units), != 0.
    grid_spacing : sequence of float, optional
        Grid spacing per state dimension, for ``locations``.
    """

    def __init__(self, state_shape: Sequence[int], scale: float = 1.0,
                 grid_spacing: Sequence[float] | None = None):
        super().__init__(state_shape, grid_spacing)
        if not math.isfinite(float(scale)) or float(scale) == 0.0:
            raise InputError(f"scale={scale!r}: must be a finite non-zero number")
        self.scale = float(scale)

    def __repr__(self) -> str:
        return f"Arctan(state_shape={self.state_shape}, scale={self.scale})"

    def _apply(self, state: Tensor) -> Tensor:
        return torch.atan(self._flat(state) * self.scale)

    def _atan_scaled_(self, x: Tensor, out: Tensor) -> Tensor:
        # torch.atan, not atan2(x, 1/s): on CPU atan2's SIMD body and scalar tail round
        # differently (~7% of float32 values differ by an ulp), so results would depend on
        # where an element falls in an array; atan is position-independent, which keeps a
        # slab's analysis bit-identical to the same slab of the full state.
        if self.scale == 1.0:
            return torch.atan(x, out=out)
        return torch.mul(x, self.scale, out=out).atan_()

    def _vjp(self, state: Tensor, cotangent: Tensor) -> Tensor:
        derivative = self.scale / (1.0 + (self.scale * state) ** 2)
        return self._as_state(cotangent) * derivative

    def pointwise_score_(self, x: Tensor, obs: Tensor, inv_var: float | Tensor, out: Tensor,
                         work: Tensor | None = None) -> Tensor:
        """``s (y - atan(s x)) / (1 + (s x)^2) / sigma^2`` elementwise, into ``out``.

        ``obs``/``inv_var`` broadcast against ``x``; ``work`` is a scratch buffer shaped
        like ``x``. Four to five passes: ``work <- (1 + s^2 x^2) / (s / sigma^2)`` (one
        addcmul), ``out <- atan(s x)``, ``out <- (y - out) / work``.
        """
        s = self.scale
        if work is None:
            work = torch.empty_like(out)
        scalar_var = not isinstance(inv_var, Tensor)
        factor = s * inv_var if scalar_var else 1.0
        torch.addcmul(x.new_tensor(1.0 / factor), x, x, value=s * s / factor, out=work)
        self._atan_scaled_(x, out)
        torch.sub(obs, out, out=out)
        out.div_(work)
        if not scalar_var:
            out.mul_(inv_var).mul_(s)
        return out

    def pointwise_curvature_(self, x: Tensor, inv_var: float | Tensor, out: Tensor) -> Tensor:
        """``h'(x)^2 / sigma^2 = s^2 / (1 + (s x)^2)^2 / sigma^2`` elementwise, into ``out``."""
        s = self.scale
        torch.addcmul(x.new_tensor(1.0), x, x, value=s * s, out=out)
        out.square_().reciprocal_()
        return out.mul_(inv_var).mul_(s * s)


class Subset(ObsOperator):
    """Observe the state at chosen points: ``H(x) = flatten(x)[..., indices]``.

    Parameters
    ----------
    state_shape : tuple of int
        Per-member state shape.
    indices : sequence of int or Tensor
        Flat (row-major) indices into the state, distinct, in ``[0, prod(state_shape))``.
    grid_spacing : sequence of float, optional
        Grid spacing per state dimension, so ``locations`` are in grid units (e.g.
        ``(H, dy, dx)`` in metres for SQG). Default: index units.

    Notes
    -----
    For SQG (``state_shape = (2, N, N)``) a flat index ``k`` is the point
    ``(z, y, x) = unravel(k)``; ``locations`` returns those coordinates.
    """

    def __init__(self, state_shape: Sequence[int], indices: Sequence[int] | Tensor,
                 grid_spacing: Sequence[float] | None = None):
        self.state_shape = _validate_state_shape(state_shape)
        size = _prod(self.state_shape)
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu()
        if idx.numel() == 0:
            raise InputError("indices is empty: a subset operator needs at least one point")
        if int(idx.min()) < 0 or int(idx.max()) >= size:
            raise InputError(f"indices must lie in [0, {size}) for state_shape "
                             f"{self.state_shape}; got min={int(idx.min())}, max={int(idx.max())}")
        if torch.unique(idx).numel() != idx.numel():
            raise InputError("indices contains repeated points: each point may be observed once")
        self.indices = idx
        self.n_obs = idx.numel()
        self.grid_spacing = None if grid_spacing is None else tuple(float(g) for g in grid_spacing)
        self._device_indices: dict[torch.device, Tensor] = {}

    @classmethod
    def random(cls, state_shape: Sequence[int], n_obs: int, generator: torch.Generator,
               grid_spacing: Sequence[float] | None = None) -> Subset:
        """A subset of ``n_obs`` distinct points drawn uniformly (sorted), e.g. once per cycle.

        Parameters
        ----------
        state_shape : tuple of int
            Per-member state shape.
        n_obs : int
            Number of observed points, in ``[1, prod(state_shape)]``.
        generator : torch.Generator
            Source of randomness.
        grid_spacing : sequence of float, optional
            As for :class:`Subset`.
        """
        shape = _validate_state_shape(state_shape)
        size = _prod(shape)
        if not isinstance(n_obs, int) or not 1 <= n_obs <= size:
            raise InputError(f"n_obs={n_obs!r}: must be an integer in [1, {size}]")
        perm = torch.randperm(size, generator=generator, device=generator.device)
        return cls(shape, torch.sort(perm[:n_obs]).values, grid_spacing)

    @classmethod
    def from_mask(cls, mask: Tensor, grid_spacing: Sequence[float] | None = None) -> Subset:
        """Observe where the boolean ``mask`` (shape ``state_shape``) is True."""
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise InputError("mask must be a boolean torch.Tensor shaped like one member's state")
        return cls(tuple(mask.shape), torch.nonzero(mask.reshape(-1)).reshape(-1), grid_spacing)

    def __repr__(self) -> str:
        return f"Subset(state_shape={self.state_shape}, n_obs={self.n_obs})"

    @property
    def locations(self) -> Tensor:
        """Grid coordinates of the observed points, ``(n_obs, len(state_shape))``."""
        return _grid_coordinates(self.indices, self.state_shape, self.grid_spacing)

    def indices_on(self, device: torch.device) -> Tensor:
        """The flat indices on ``device`` (cached)."""
        device = torch.device(device)
        if device not in self._device_indices:
            self._device_indices[device] = self.indices.to(device)
        return self._device_indices[device]

    def _apply(self, state: Tensor) -> Tensor:
        return self._flat(state).index_select(-1, self.indices_on(state.device))

    def _vjp(self, state: Tensor, cotangent: Tensor) -> Tensor:
        batch = state.shape[:state.dim() - len(self.state_shape)]
        flat = state.new_zeros(*batch, _prod(self.state_shape))
        flat.index_copy_(-1, self.indices_on(state.device),
                         cotangent.to(state.dtype).expand(*batch, self.n_obs).contiguous())
        return self._unflat(flat)

    def _likelihood_score(self, state, obs, inv_var, out, work):
        idx = self.indices_on(state.device)
        flat_state = self._flat(state)
        residual = torch.sub(obs, flat_state.index_select(-1, idx)).mul_(inv_var)
        batch = state.shape[:state.dim() - len(self.state_shape)]
        if out is None:
            out = state.new_zeros(state.shape)
        else:
            out.zero_()
        out_flat = out.view(*batch, -1)
        out_flat.index_copy_(-1, idx, residual.expand(*batch, self.n_obs).contiguous())
        return out

    def _gauss_newton_diagonal(self, state, inv_var, out):
        idx = self.indices_on(state.device)
        batch = state.shape[:state.dim() - len(self.state_shape)]
        values = torch.as_tensor(inv_var, dtype=state.dtype, device=state.device)
        out.zero_()
        out.view(*batch, -1).index_copy_(-1, idx, values.expand(*batch, self.n_obs).contiguous())
        return out


class Composed(ObsOperator):
    """``outer(inner(x))``: inner's ``n_obs`` outputs are the state of ``outer``.

    ``outer.state_shape`` must hold ``inner.n_obs`` values (inner's output is reshaped to
    it). The likelihood score chains the vector-Jacobian products of both parts, so it is
    analytic whenever the parts are.

    Parameters
    ----------
    outer, inner : ObsOperator
    """

    def __init__(self, outer: ObsOperator, inner: ObsOperator):
        if _prod(outer.state_shape) != inner.n_obs:
            raise InputError(f"cannot compose {outer!r} after {inner!r}: the outer operator "
                             f"takes {_prod(outer.state_shape)} values, the inner returns "
                             f"{inner.n_obs}")
        self.outer = outer
        self.inner = inner
        self.state_shape = inner.state_shape
        self.n_obs = outer.n_obs
        self.elementwise = outer.elementwise and inner.elementwise

    def __repr__(self) -> str:
        return f"Composed({self.outer!r} @ {self.inner!r})"

    @property
    def locations(self) -> Tensor | None:
        """Positions of the composed observations, derived from the parts.

        A subset after an elementwise operator (``Subset @ Arctan``) gives the subset's
        locations; an elementwise operator after anything gives the inner locations; a
        subset after an operator with locations picks those locations.
        """
        if (isinstance(self.outer, Subset) and self.inner.elementwise
                and self.outer.state_shape == self.inner.state_shape):
            return self.outer.locations
        if self.outer.elementwise:
            return self.inner.locations
        inner_locations = self.inner.locations
        if isinstance(self.outer, Subset) and inner_locations is not None:
            return inner_locations[self.outer.indices]
        return None

    def _to_outer_state(self, values: Tensor) -> Tensor:
        return values.reshape(*values.shape[:-1], *self.outer.state_shape)

    def _apply(self, state: Tensor) -> Tensor:
        return self.outer._apply(self._to_outer_state(self.inner._apply(state)))

    def _vjp(self, state: Tensor, cotangent: Tensor) -> Tensor:
        middle = self._to_outer_state(self.inner._apply(state))
        back = self.outer._vjp(middle, cotangent)
        return self.inner._vjp(state, back.reshape(*back.shape[:back.dim()
                                                              - len(self.outer.state_shape)], -1))


def compose(*operators: ObsOperator) -> ObsOperator:
    """Compose operators right to left: ``compose(A, B, C)(x) = A(B(C(x)))``."""
    if not operators:
        raise InputError("compose needs at least one operator")
    result = operators[-1]
    for outer in reversed(operators[:-1]):
        result = Composed(outer, result)
    return result


class DifferentiableObs(ObsOperator):
    """Any differentiable callable as an operator; derivatives by autograd.

    Parameters
    ----------
    fn : callable
        ``fn(state) -> obs`` on ``(*batch, *state_shape) -> (*batch, n_obs)``, built from
        differentiable torch operations, acting independently on each batch entry.
    state_shape : tuple of int
        Per-member state shape.
    n_obs : int
        Number of observations ``fn`` returns.
    locations : Tensor, optional
        Observation positions ``(n_obs, ndim)``, if known.

    Examples
    --------
    >>> H = DifferentiableObs(lambda x: x[..., ::2] ** 2, (8,), 4)
    >>> H.likelihood_score(torch.ones(3, 8), torch.zeros(4), 1.0).shape
    torch.Size([3, 8])
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], state_shape: Sequence[int], n_obs: int,
                 locations: Tensor | None = None):
        if not callable(fn):
            raise InputError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.state_shape = _validate_state_shape(state_shape)
        if not isinstance(n_obs, int) or n_obs < 1:
            raise InputError(f"n_obs={n_obs!r}: must be a positive integer")
        self.n_obs = n_obs
        self._locations = locations

    def __repr__(self) -> str:
        return f"DifferentiableObs({getattr(self.fn, '__name__', 'fn')}, n_obs={self.n_obs})"

    @property
    def locations(self) -> Tensor | None:
        return self._locations

    def _apply(self, state: Tensor) -> Tensor:
        obs = self.fn(state)
        if obs.shape[-1] != self.n_obs:
            raise InputError(f"the observation function returned shape {tuple(obs.shape)}; "
                             f"declared n_obs={self.n_obs}")
        return obs

    def _vjp(self, state: Tensor, cotangent: Tensor) -> Tensor:
        with torch.enable_grad():
            x = state.detach().requires_grad_(True)
            obs = self._apply(x)
            (grad,) = torch.autograd.grad(obs, x, grad_outputs=cotangent.expand_as(obs)
                                          .to(obs.dtype))
        return grad


def likelihood_score(obs_operator, state: Tensor, obs: Tensor, obs_error_std: float | Tensor
                     ) -> Tensor:
    """Likelihood score of any operator: its own method if it has one, else autograd.

    Parameters
    ----------
    obs_operator : ObsOperator or callable
        An operator from this module, an object with ``likelihood_score``, or a plain
        differentiable callable ``(*batch, *state_shape) -> (*batch, n_obs)``.
    state, obs, obs_error_std
        As for :meth:`ObsOperator.likelihood_score`.

    Returns
    -------
    Tensor, shape of ``state``
    """
    if hasattr(obs_operator, "likelihood_score"):
        return obs_operator.likelihood_score(state, obs, obs_error_std)
    if not callable(obs_operator):
        raise InputError(f"obs_operator must be callable, got {type(obs_operator).__name__}")
    n_obs = obs.shape[-1]
    check_obs(obs, n_obs)
    inv_var = inverse_variance(obs_error_std, n_obs, like=state)
    with torch.enable_grad():
        x = state.detach().requires_grad_(True)
        predicted = obs_operator(x)
        if predicted.shape[-1] != n_obs:
            raise InputError(f"obs has {n_obs} values but the operator returned shape "
                             f"{tuple(predicted.shape)}")
        log_likelihood = -0.5 * ((predicted - obs.to(predicted.dtype)) ** 2 * inv_var).sum()
        (grad,) = torch.autograd.grad(log_likelihood, x)
    return grad


def without_missing(obs_operator: ObsOperator, obs: Tensor) -> tuple[ObsOperator, Tensor]:
    """Drop NaN observations: a smaller operator and the finite observations.

    Parameters
    ----------
    obs_operator : ObsOperator
        Operator producing ``obs``.
    obs : Tensor, shape ``(n_obs,)``
        Observations, with NaN marking missing values.

    Returns
    -------
    operator : ObsOperator
        ``obs_operator`` itself when nothing is missing, else ``Subset @ obs_operator``
        keeping the finite observations (locations follow).
    obs : Tensor, shape ``(n_valid,)``

    Raises
    ------
    InputError
        ``obs`` is not one-dimensional of length ``n_obs``, or every value is missing.
    """
    if not isinstance(obs, Tensor) or obs.dim() != 1 or obs.shape[0] != obs_operator.n_obs:
        raise InputError(f"obs must have shape ({obs_operator.n_obs},), got "
                         f"{tuple(getattr(obs, 'shape', ()))}")
    valid = torch.isfinite(obs)
    if bool(valid.all()):
        return obs_operator, obs
    if not bool(valid.any()):
        raise InputError("every observation is missing (NaN): nothing to assimilate")
    keep = Subset((obs_operator.n_obs,), torch.nonzero(valid.cpu()).reshape(-1))
    return Composed(keep, obs_operator), obs[valid]


# ---------------------------------------------------------------------------------------
# Operators by name (what a preset's ``obs`` string selects)

OperatorFactory = Callable[..., ObsOperator]
"""``factory(state_shape, **options) -> ObsOperator``: an operator observing a whole state."""

_OPERATORS: Registry[OperatorFactory] = Registry("observation operator")


def register_operator(name: str, factory: OperatorFactory, *, replace: bool = False) -> None:
    """Make ``make_operator(name, state_shape)`` build ``factory(state_shape, **options)``.

    Raises
    ------
    InputError
        ``name`` is taken (and ``replace`` is False).
    """
    _OPERATORS.register(name, factory, replace=replace)


def make_operator(name: str, state_shape: Sequence[int], **options) -> ObsOperator:
    """The operator called ``name`` on states of ``state_shape``.

    Parameters
    ----------
    name : str
        A registered name (:func:`available_operators`): ``"identity"`` (every state value)
        or ``"arctan"`` (``arctan`` of every state value).
    state_shape : sequence of int
        Per-member state shape.
    **options
        Passed to the factory (e.g. ``scale`` for ``"arctan"``).

    Raises
    ------
    InputError
        Unknown name (the known ones are listed).
    """
    return _OPERATORS.get(name)(tuple(state_shape), **options)


def available_operators() -> tuple[str, ...]:
    """Names :func:`make_operator` accepts."""
    return _OPERATORS.names()


register_operator("identity", Identity)
register_operator("arctan", Arctan)
