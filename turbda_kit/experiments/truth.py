"""The true state of a cycling experiment: read from a stored run or run on the fly.

* :class:`ArrayTruth` — one state per cycle picked from a stored trajectory (a nature
  run's ``theta``), with :func:`truth_every` giving the stride from its output interval;
* :class:`ModelTruth` — the forecast model run forward from a spun-up state, one cycle
  at a time (its state is part of the engine's checkpoint).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..data.time_axis import time_seconds
from ..errors import InputError
from ..models.base import ForecastModel

__all__ = ["ArrayTruth", "ModelTruth", "TruthSource", "truth_every"]


class TruthSource(Protocol):
    """The true state at each cycle: ``state(cycle) -> (*state_shape)``; cycle 0 is the start."""

    def state(self, cycle: int) -> Tensor: ...


class ArrayTruth:
    """Truth read from a stored trajectory (e.g. a nature run's ``theta``).

    Parameters
    ----------
    trajectory : Tensor or array-like, shape (n_times, *state_shape)
        States at equally spaced times (xarray and numpy are accepted).
    stride : int
        Stored times per cycle (1 when the output interval equals the cycle length; see
        :func:`truth_every`).
    offset : int
        Stored time index of cycle 0.
    device, dtype
        Where and how states are returned.
    """

    def __init__(self, trajectory, stride: int = 1, offset: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.trajectory = trajectory
        self.stride, self.offset = stride, offset
        self.device, self.dtype = torch.device(device), dtype
        if stride < 1 or offset < 0:
            raise InputError(f"stride must be ≥ 1 and offset ≥ 0, got {stride}, {offset}")

    def n_cycles_available(self) -> int:
        """How many cycles (after cycle 0) the trajectory covers."""
        return (len(self.trajectory) - 1 - self.offset) // self.stride

    def state(self, cycle: int) -> Tensor:
        index = self.offset + cycle * self.stride
        if index >= len(self.trajectory):
            raise InputError(f"the truth trajectory has {len(self.trajectory)} times; cycle "
                             f"{cycle} needs index {index}: use fewer cycles or a longer run")
        value = self.trajectory[index]
        if not isinstance(value, Tensor):
            value = torch.as_tensor(np.asarray(getattr(value, "values", value)))  # xarray/numpy
        return value.to(device=self.device, dtype=self.dtype)


class ModelTruth:
    """Truth generated on the fly by running ``model`` from ``initial_state``.

    States are computed in order and cached for the current cycle only, so memory stays
    one state; the state is part of the engine's checkpoint.

    Parameters
    ----------
    model : ForecastModel
        Steps the truth (in the experiment's state units).
    initial_state : Tensor, shape (*state_shape)
        The truth at cycle 0.
    steps_per_cycle : int
        Model steps per cycle.
    """

    def __init__(self, model: ForecastModel, initial_state: Tensor, steps_per_cycle: int):
        self.model = model
        self.steps_per_cycle = steps_per_cycle
        self._cycle = 0
        self._state = initial_state.clone()

    def state(self, cycle: int) -> Tensor:
        if cycle < self._cycle:
            raise InputError("ModelTruth advances forward only; recreate it to go back")
        while self._cycle < cycle:
            self._state = self.model.advance(self._state, self.steps_per_cycle)
            self._cycle += 1
        return self._state

    def get_state(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"cycle": self._cycle, "state": self._state}

    def set_state(self, saved: dict[str, Any]) -> None:
        """Restore from :meth:`get_state`."""
        self._cycle, self._state = int(saved["cycle"]), saved["state"]


def truth_every(nature_run, cycle_hours: float) -> int:
    """How many stored times of a nature run make one cycle: the truth's stride.

    Parameters
    ----------
    nature_run : xarray.Dataset or xarray.DataArray
        A stored run with an equally spaced ``time`` coordinate (CF-decoded datetimes, as
        :func:`turbda_kit.data.nature.sqg_nature_run` writes it, or seconds).
    cycle_hours : float
        Cycle length in hours (> 0).

    Returns
    -------
    int
        The stride (≥ 1): ``ArrayTruth(nature_run["theta"], stride=...)`` or
        ``build_experiment(..., truth_stride=...)``.

    Raises
    ------
    InputError
        Fewer than two times, uneven spacing, or a cycle that is not a whole number of
        output intervals.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> run = xr.Dataset(coords={"time": np.arange(5) * 6 * 3600.0})
    >>> truth_every(run, cycle_hours=12)
    2
    """
    if not cycle_hours > 0:
        raise InputError(f"cycle_hours={cycle_hours!r}: must be > 0")
    times = time_seconds(nature_run)  # decoded (CF datetimes) or raw seconds alike
    if times.size < 2:
        raise InputError(f"the nature run has {times.size} time(s): a truth needs at least two")
    steps = np.diff(times)
    interval = float(steps[0])
    if not interval > 0 or not np.allclose(steps, interval, rtol=1e-9, atol=0.0):
        raise InputError("the nature run's times are not equally spaced (time coordinate "
                         f"steps from {steps.min():g} to {steps.max():g} s)")
    stride = cycle_hours * 3600.0 / interval
    if not math.isclose(stride, round(stride), rel_tol=0.0, abs_tol=1e-6) or round(stride) < 1:
        raise InputError(f"a {cycle_hours:g}-h cycle is not a whole number of the nature run's "
                         f"{interval / 3600.0:g}-h output intervals: write the nature run "
                         "every cycle or at a divisor of it")
    return int(round(stride))
