"""Lorenz-96 on a ring of any size, batched over leading dimensions.

.. math:: \\frac{dx_i}{dt} = (x_{i+1} - x_{i-2})\\, x_{i-1} - x_i + F, \\qquad i \\bmod n

Everything is built on one kernel, :func:`l96_tendency_slab`, which evaluates the tendency
of a contiguous *slab* of the ring from the slab plus a halo of two values on the left and
one on the right. A full-ring step is the same code with a periodic halo fill, so a later
domain-decomposed (MPI) version only swaps the halo fill for a neighbour exchange between
Runge-Kutta stages (see :func:`rk4_step_` and :func:`periodic_halo_`).

Memory: a step works in place on preallocated buffers (:class:`L96Workspace`), the stage
state lives in a padded buffer so the shifted operands are views, and no array-sized
temporaries are made. An RK4 step of ``n`` values holds ``x`` plus three workspace arrays
(``~4 n`` values: 1.6 GB for ``n = 1e8`` in float32).

Examples
--------
>>> import torch
>>> model = Lorenz96(40, forcing=8.0, dt=0.01)
>>> x = torch.full((3, 40), 8.0, dtype=torch.float64)   # the fixed point x = F
>>> bool(torch.equal(model.advance(x, 5), x))
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import native
from ..errors import InputError
from .base import check_state

__all__ = [
    "HALO_LEFT",
    "HALO_RIGHT",
    "L96Workspace",
    "LORENZ96_TIME_UNIT_SECONDS",
    "Lorenz96",
    "euler_step_",
    "l96_tendency",
    "l96_tendency_slab",
    "periodic_halo_",
    "rk4_step_",
    "rk4_stage_",
]

#: Halo widths the tendency stencil needs: x_{i-2}, x_{i-1} on the left, x_{i+1} on the right.
HALO_LEFT = 2
HALO_RIGHT = 1

#: Seconds per model time unit (MTU): Lorenz (1996) matched the model's error-doubling
#: time (about 0.4 MTU) to the atmosphere's (about 2 days), so 1 MTU is about 5 days and the
#: usual 0.05-MTU cycle is 6 hours.
LORENZ96_TIME_UNIT_SECONDS = 5 * 86400.0

_SCHEMES = ("rk4", "euler")

HaloFill = Callable[[Tensor], None]


def l96_tendency_slab(x_with_halo: Tensor, forcing: float = 8.0, out: Tensor | None = None
                      ) -> Tensor:
    """Lorenz-96 tendency of a slab, given the slab with its halo.

    Parameters
    ----------
    x_with_halo : Tensor, shape ``(*batch, m + 3)``
        Values ``x_{a-2}, ..., x_{b}`` for the slab ``[a, b)`` of ``m = b - a`` points: two
        halo values on the left, one on the right (``HALO_LEFT``, ``HALO_RIGHT``).
    forcing : float
        The forcing ``F`` (same units as ``x``).
    out : Tensor, shape ``(*batch, m)``, optional
        Where to write the tendency (must not overlap ``x_with_halo``). Saves the only
        allocation of this function.

    Returns
    -------
    Tensor, shape ``(*batch, m)``
        ``dx/dt`` on the slab (units of ``x`` per model time unit).
    """
    m = x_with_halo.shape[-1] - HALO_LEFT - HALO_RIGHT
    if m < 1:
        raise InputError(f"x_with_halo has last dimension {x_with_halo.shape[-1]}; it must be at "
                         f"least {HALO_LEFT + HALO_RIGHT + 1} (a slab of >= 1 point plus halo "
                         f"{HALO_LEFT} left, {HALO_RIGHT} right)")
    # Shifted operands are views into the padded array: no copies, no roll().
    right = x_with_halo[..., 3:]          # x_{i+1}
    left2 = x_with_halo[..., :m]          # x_{i-2}
    left1 = x_with_halo[..., 1:m + 1]     # x_{i-1}
    centre = x_with_halo[..., 2:m + 2]    # x_i
    if out is None:
        out = torch.sub(right, left2)
    else:
        torch.sub(right, left2, out=out)
    out.mul_(left1).sub_(centre).add_(forcing)
    return out


def periodic_halo_(x_padded: Tensor) -> None:
    """Fill the halo of a padded full ring in place (periodic boundary).

    Parameters
    ----------
    x_padded : Tensor, shape ``(*batch, n + 3)``
        Interior ``x_0 .. x_{n-1}`` at positions ``2 .. n+1``; the halo positions
        ``0, 1`` (``x_{n-2}, x_{n-1}``) and ``n+2`` (``x_0``) are overwritten.
    """
    n = x_padded.shape[-1] - HALO_LEFT - HALO_RIGHT
    x_padded[..., :HALO_LEFT].copy_(x_padded[..., n:n + HALO_LEFT])
    x_padded[..., n + HALO_LEFT:].copy_(x_padded[..., HALO_LEFT:HALO_LEFT + HALO_RIGHT])


def l96_tendency(x: Tensor, forcing: float = 8.0) -> Tensor:
    """Lorenz-96 tendency on the full ring (a convenience; allocates one padded copy).

    Parameters
    ----------
    x : Tensor, shape ``(*batch, n)``
        State on a ring of ``n >= 4`` points.
    forcing : float
        The forcing ``F``.

    Returns
    -------
    Tensor, shape ``(*batch, n)``
        ``dx/dt``.
    """
    n = x.shape[-1]
    if n < 4:
        raise InputError(f"Lorenz-96 needs a ring of n >= 4 points, got n={n}")
    padded = x.new_empty((*x.shape[:-1], n + HALO_LEFT + HALO_RIGHT))
    padded[..., HALO_LEFT:HALO_LEFT + n].copy_(x)
    periodic_halo_(padded)
    return l96_tendency_slab(padded, forcing)


@dataclass
class L96Workspace:
    """Preallocated buffers for in-place stepping of a slab (or full ring) of ``m`` points.

    Attributes
    ----------
    padded : Tensor, shape ``(*batch, m + 3)``
        Stage state with halo (interior at ``[..., 2:m+2]``).
    tendency : Tensor, shape ``(*batch, m)``
        Tendency of the current stage.
    accumulator : Tensor, shape ``(*batch, m)`` or None
        RK4 weighted sum of stage tendencies (None for forward Euler).
    spare : Tensor, shape ``(*batch, m + 3)``, or None
        A second padded buffer for the one-pass C stage (:mod:`turbda_kit.native`), made
        on first use: it receives the next stage state and then swaps with ``padded``.
    """

    padded: Tensor
    tendency: Tensor
    accumulator: Tensor | None
    spare: Tensor | None = None

    @classmethod
    def like(cls, x: Tensor, scheme: str = "rk4") -> L96Workspace:
        """Buffers for stepping ``x`` of shape ``(*batch, m)`` (same dtype/device)."""
        batch, m = tuple(x.shape[:-1]), x.shape[-1]
        return cls(padded=x.new_empty((*batch, m + HALO_LEFT + HALO_RIGHT)),
                   tendency=x.new_empty((*batch, m)),
                   accumulator=x.new_empty((*batch, m)) if scheme == "rk4" else None)

    @property
    def interior(self) -> Tensor:
        """View of the padded buffer without the halo, shape ``(*batch, m)``."""
        return self.padded[..., HALO_LEFT:self.padded.shape[-1] - HALO_RIGHT]

    def fits(self, x: Tensor) -> bool:
        """Whether these buffers match ``x``'s shape, dtype and device."""
        return (self.tendency.shape == x.shape and self.tendency.dtype == x.dtype
                and self.tendency.device == x.device)


# RK4 stage weights: stage s evaluates k_s at x + _STAGE_SHIFT[s-1] * dt * k_{s-1}.
_RK4_NEXT_SHIFT = (0.5, 0.5, 1.0)
_RK4_WEIGHT = (1.0, 2.0, 2.0, 1.0)


def rk4_stage_(x: Tensor, work: L96Workspace, stage: int, dt: float, forcing: float) -> None:
    """One RK4 stage on a slab, in place; the caller fills the halo before each stage.

    The halo exchange of a distributed run happens between calls: for ``stage`` in
    0..3, fill ``work.padded``'s halo (neighbours' interior values of the same stage), then
    call this. Before stage 0 the caller copies ``x`` into ``work.interior`` (as
    :func:`rk4_step_` does).

    Parameters
    ----------
    x : Tensor, shape ``(*batch, m)``
        State at the start of the step; overwritten with the new state after stage 3.
    work : L96Workspace
        Buffers; ``work.padded`` holds the current stage state with a filled halo.
    stage : int
        0, 1, 2 or 3.
    dt : float
        Time step (model time units).
    forcing : float
        The forcing ``F``.
    """
    if _native_stage_(x, work, stage, dt, forcing):
        return
    k = l96_tendency_slab(work.padded, forcing, out=work.tendency)
    acc = work.accumulator
    if stage == 0:
        acc.copy_(k)
    else:
        acc.add_(k, alpha=_RK4_WEIGHT[stage])
    if stage < 3:
        # Next stage state x + c dt k written straight into the padded interior.
        torch.add(x, k, alpha=_RK4_NEXT_SHIFT[stage] * dt, out=work.interior)
    else:
        x.add_(acc, alpha=dt / 6.0)


def _native_stage_(x: Tensor, work: L96Workspace, stage: int, dt: float, forcing: float
                   ) -> bool:
    """:func:`rk4_stage_` by the one-pass C kernel when it applies (float32/64 on the CPU, rows
    of unit stride, the kernel built); False otherwise. Same bits as the torch code: the
    kernel writes the next stage into ``work.spare``, which then swaps with
    ``work.padded``, so callers see ``work.padded`` hold the next stage as before."""
    if x.dtype not in (torch.float32, torch.float64) or x.device.type != "cpu" or \
            x.dim() < 1 or \
            work.accumulator is None or not x.is_contiguous() or \
            not work.padded.is_contiguous() or not work.accumulator.is_contiguous() or \
            not native.available():
        return False
    if stage < 3 and (work.spare is None or work.spare.shape != work.padded.shape):
        work.spare = torch.empty_like(work.padded)
    m = x.shape[-1]
    rows = x.reshape(-1, m)
    src = work.padded.reshape(-1, m + HALO_LEFT + HALO_RIGHT)
    dst = work.spare.reshape(src.shape) if stage < 3 else None
    shift = _RK4_NEXT_SHIFT[stage] * dt if stage < 3 else dt / 6.0
    weight = _RK4_WEIGHT[stage]
    # float32 coefficients, as torch converts its Python scalars for float32 tensors
    done = native.l96_rk4_stage_f32(src, rows, work.accumulator.reshape(-1, m), dst, stage,
                                    weight, shift, forcing, threads=torch.get_num_threads())
    if done and stage < 3:
        work.padded, work.spare = work.spare, work.padded
    return done


def rk4_step_(x: Tensor, work: L96Workspace, dt: float, forcing: float,
              fill_halo: HaloFill = periodic_halo_) -> Tensor:
    """Classical RK4 step of a slab or ring, in place.

    Parameters
    ----------
    x : Tensor, shape ``(*batch, m)``
        State; overwritten with the state one step later.
    work : L96Workspace
        Buffers from ``L96Workspace.like(x, "rk4")``.
    dt : float
        Time step (model time units).
    forcing : float
        The forcing ``F``.
    fill_halo : callable
        ``fill_halo(work.padded)`` fills the halo of the current stage state in place;
        :func:`periodic_halo_` for a full ring, a neighbour exchange for a slab.

    Returns
    -------
    Tensor
        ``x`` itself.
    """
    work.interior.copy_(x)
    for stage in range(4):
        fill_halo(work.padded)
        rk4_stage_(x, work, stage, dt, forcing)
    return x


def euler_step_(x: Tensor, work: L96Workspace, dt: float, forcing: float,
                fill_halo: HaloFill = periodic_halo_) -> Tensor:
    """Forward-Euler step ``x <- x + dt f(x)`` of a slab or ring, in place.

    Parameters are as for :func:`rk4_step_` (the workspace needs no accumulator).
    """
    work.interior.copy_(x)
    fill_halo(work.padded)
    x.add_(l96_tendency_slab(work.padded, forcing, out=work.tendency), alpha=dt)
    return x


class Lorenz96:
    """The Lorenz-96 model as a :class:`~turbda_kit.models.base.ForecastModel`.

    Parameters
    ----------
    n : int
        Number of points on the ring (>= 4).
    forcing : float
        The forcing ``F`` (8 gives chaos).
    dt : float
        Time step in model time units (MTU), > 0.
    scheme : {"rk4", "euler"}
        Time stepper.

    Attributes
    ----------
    state_shape : tuple of int
        ``(n,)``.
    dt : float
        Time step (MTU).
    time_unit_seconds : float
        :data:`LORENZ96_TIME_UNIT_SECONDS` (one MTU is about 5 days).

    Notes
    -----
    ``step`` and ``advance`` return new tensors and leave their input untouched;
    :meth:`advance_` works in place. Inputs are validated (shape, dtype, finite values)
    once per call.
    """

    def __init__(self, n: int, forcing: float = 8.0, dt: float = 0.01, scheme: str = "rk4"):
        if not isinstance(n, int) or isinstance(n, bool) or n < 4:
            raise InputError(f"n={n!r}: Lorenz-96 needs an integer ring size n >= 4")
        if not dt > 0 or dt != dt or dt == float("inf"):
            raise InputError(f"dt={dt!r}: the time step must be a finite number > 0")
        if forcing != forcing or abs(forcing) == float("inf"):
            raise InputError(f"forcing={forcing!r}: must be a finite number")
        if scheme not in _SCHEMES:
            raise InputError(f"scheme={scheme!r}: choose one of {_SCHEMES}")
        self.n = n
        self.forcing = float(forcing)
        self.dt = float(dt)
        self.scheme = scheme
        self.state_shape = (n,)
        self.time_unit_seconds = LORENZ96_TIME_UNIT_SECONDS

    def __repr__(self) -> str:
        return (f"Lorenz96(n={self.n}, forcing={self.forcing}, dt={self.dt}, "
                f"scheme={self.scheme!r})")

    def tendency(self, state: Tensor) -> Tensor:
        """``dx/dt`` of ``state`` of shape ``(*batch, n)``."""
        check_state(state, self.state_shape)
        return l96_tendency(state, self.forcing)

    def step(self, state: Tensor) -> Tensor:
        """Advance ``(*batch, n)`` by one step; returns a new tensor."""
        return self.advance(state, 1)

    def advance(self, state: Tensor, n_steps: int) -> Tensor:
        """Advance ``(*batch, n)`` by ``n_steps`` steps; returns a new tensor.

        Parameters
        ----------
        state : Tensor, shape ``(*batch, n)``
            Initial state (float32 or float64, finite).
        n_steps : int
            Number of steps, >= 0.

        Returns
        -------
        Tensor, shape ``(*batch, n)``
            State ``n_steps * dt`` MTU later.

        Notes
        -----
        On the CPU (float32/64, RK4) all the steps run in one C call
        (:func:`turbda_kit.native.l96_rk4_ring`), each member's ring through every step
        while in cache; the bits are those of :func:`rk4_step_`, which runs everywhere else.
        """
        check_state(state, self.state_shape)
        return self._advance(state.clone(), n_steps)

    def advance_(self, state: Tensor, n_steps: int, work: L96Workspace | None = None) -> Tensor:
        """Advance ``state`` in place by ``n_steps`` steps (reusing ``work`` if given).

        Parameters
        ----------
        state : Tensor, shape ``(*batch, n)``
            Overwritten with the advanced state; must be contiguous.
        n_steps : int
            Number of steps, >= 0.
        work : L96Workspace, optional
            Buffers from ``L96Workspace.like(state, scheme)``, to reuse across calls.

        Returns
        -------
        Tensor
            ``state`` itself.
        """
        check_state(state, self.state_shape)
        return self._advance(state, n_steps, work)

    def _advance(self, x: Tensor, n_steps: int, work: L96Workspace | None = None) -> Tensor:
        if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 0:
            raise InputError(f"n_steps={n_steps!r}: must be an integer >= 0")
        if self.scheme == "rk4" and x.dim() >= 1 and x.is_contiguous() and \
                native.l96_rk4_ring(x.view(-1, x.shape[-1]), n_steps, self.dt, self.forcing,
                                    threads=torch.get_num_threads()):
            return x  # the steps below in one C call (same bits): no Python between stages
        if work is None or not work.fits(x):
            work = L96Workspace.like(x, self.scheme)
        stepper = rk4_step_ if self.scheme == "rk4" else euler_step_
        for _ in range(n_steps):
            stepper(x, work, self.dt, self.forcing)
        return x
