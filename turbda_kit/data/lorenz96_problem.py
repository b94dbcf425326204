"""Lorenz-96 twin-experiment problems: a truth trajectory and fixed observation draws.

A problem is fully described by a small frozen :class:`Lorenz96Problem` (ring size,
forcing, time step, observation interval, operators, noise, seed) and generated with
:func:`generate_lorenz96_problem` as an xarray Dataset:

* ``truth (time, i)``: the true state at every observation time (after a burn-in);
* ``truth_initial (i)``: the true state at ``time = 0`` (start of the cycling);
* ``obs_noise (time, i_obs)``: the fixed standard-normal observation-error draws;
* ``obs (time, i_obs)``: ``H(truth) + obs_error_std * obs_noise`` for the first operator
  of ``problem.operators``, and ``obs_<name>`` for any further one (all operators observe
  every component, so ``i_obs`` runs over the ring);
* coordinates ``time`` (CF: float64 seconds since the end of the burn-in, units
  ``"seconds since 2000-01-01 00:00:00"``, one model time unit counted as
  :data:`~turbda_kit.models.lorenz96.LORENZ96_TIME_UNIT_SECONDS`; xarray decodes it to
  dates), ``time_mtu`` (the same times in model time units, as :attr:`Lorenz96Problem.times`),
  ``i``, ``i_obs``; CF-1.8 metadata (:mod:`turbda_kit.cf`), the problem's fields and
  provenance in ``attrs``.

Every random number is drawn by global index (:func:`turbda_kit.random_streams.indexed_normal_`
keyed by the seed): the initial condition of the ring and the observation noise at
``(cycle, i)`` do not depend on how the ring is split, so a distributed run can draw its
slab of the same problem without reading the file.

Examples
--------
>>> problem = Lorenz96Problem(n=40, n_cycles=3, burn_in_steps=100)
>>> ds = generate_lorenz96_problem(problem)
>>> ds.truth.dims, ds.obs.shape
(('time', 'i'), (3, 40))
>>> Lorenz96Problem.from_attrs(ds.attrs) == problem
True
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import provenance
from ..cf import VariableInfo, describe
from ..errors import InputError
from ..io import write_dataset
from ..models.lorenz96 import L96Workspace, Lorenz96
from ..obs.operators import Arctan, Identity, ObsOperator
from ..progress import progress
from ..random_streams import indexed_normal_
from .time_axis import time_attrs

__all__ = [
    "Lorenz96Problem",
    "generate_lorenz96_problem",
    "initial_truth",
    "observation_noise",
    "write_lorenz96_problem",
]

_OPERATORS = ("arctan", "identity")
_VARIABLES = {
    "truth": VariableInfo("true Lorenz-96 state (non-dimensional)", "1"),
    "truth_initial": VariableInfo("true state at the start of the cycling (time 0, after the "
                                  "burn-in)", "1"),
    "obs_noise": VariableInfo("standard-normal observation error draws", "1"),
    "time_mtu": VariableInfo("model time after the burn-in, in model time units", "1"),
    "i": VariableInfo("ring index", "1"),
    "i_obs": VariableInfo("observed ring index", "1"),
}
"""CF attributes of the problem's variables (``obs*`` are added per operator)."""

# Stream keys (first word after the seed) of the problem's random draws.
_INITIAL_KEY, _OBS_KEY = 11, 12
_ATTR_PREFIX = "problem_"


@dataclass(frozen=True)
class Lorenz96Problem:
    """Settings of a Lorenz-96 twin experiment (validated on construction).

    Parameters
    ----------
    n : int
        Ring size (>= 4).
    n_cycles : int
        Number of observation times (>= 1).
    steps_per_cycle : int
        Model steps between observations (>= 1); the EnSF paper uses 10.
    dt : float
        Model (RK4) time step in model time units, > 0.
    forcing : float
        Lorenz-96 forcing ``F``.
    burn_in_steps : int
        Steps from ``F + N(0, 1)`` onto the attractor before ``time = 0`` (>= 0).
    obs_error_std : float
        Observation error std, > 0 (observation units).
    operators : tuple of str
        Observation operators, each ``"arctan"`` (``atan(arctan_scale * x)``) or
        ``"identity"``; the first one's observations are ``obs``.
    arctan_scale : float
        Scale inside the arctan.
    seed : int
        Root seed of every random draw (>= 0).
    """

    n: int = 1000
    n_cycles: int = 150
    steps_per_cycle: int = 10
    dt: float = 0.01
    forcing: float = 8.0
    burn_in_steps: int = 1000
    obs_error_std: float = 0.05
    operators: tuple[str, ...] = ("arctan",)
    arctan_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> InputError:
            return InputError(f"Lorenz96Problem.{name}={getattr(self, name)!r}: {rule}")

        def is_int(value) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        if not is_int(self.n) or self.n < 4:
            raise bad("n", "must be an integer >= 4")
        if not is_int(self.n_cycles) or self.n_cycles < 1:
            raise bad("n_cycles", "must be an integer >= 1")
        if not is_int(self.steps_per_cycle) or self.steps_per_cycle < 1:
            raise bad("steps_per_cycle", "must be an integer >= 1")
        if not is_int(self.burn_in_steps) or self.burn_in_steps < 0:
            raise bad("burn_in_steps", "must be an integer >= 0")
        if not is_int(self.seed) or self.seed < 0:
            raise bad("seed", "must be an integer >= 0")
        if not self.dt > 0 or not np.isfinite(self.dt):
            raise bad("dt", "must be a finite number > 0")
        if not self.obs_error_std > 0 or not np.isfinite(self.obs_error_std):
            raise bad("obs_error_std", "must be a finite number > 0")
        if not np.isfinite(self.forcing):
            raise bad("forcing", "must be finite")
        if not np.isfinite(self.arctan_scale) or self.arctan_scale == 0:
            raise bad("arctan_scale", "must be finite and non-zero")
        ops = (self.operators,) if isinstance(self.operators, str) else tuple(self.operators)
        if not ops or any(op not in _OPERATORS for op in ops) or len(set(ops)) != len(ops):
            raise bad("operators", f"must be a non-empty tuple of distinct names from "
                                   f"{_OPERATORS}")
        object.__setattr__(self, "operators", ops)

    @property
    def model(self) -> Lorenz96:
        """The forecast model of this problem (RK4)."""
        return Lorenz96(self.n, forcing=self.forcing, dt=self.dt)

    def obs_operator(self, name: str | None = None, n: int | None = None) -> ObsOperator:
        """The observation operator ``name`` (default the first) on a ring or slab of ``n``."""
        name = self.operators[0] if name is None else name
        if name not in self.operators:
            raise InputError(f"operator {name!r} is not part of this problem "
                             f"({self.operators})")
        size = (self.n if n is None else n,)
        return Arctan(size, scale=self.arctan_scale) if name == "arctan" else Identity(size)

    @property
    def times(self) -> np.ndarray:
        """Observation times (model time units since the end of the burn-in)."""
        return np.arange(1, self.n_cycles + 1) * self.steps_per_cycle * self.dt

    def to_attrs(self) -> dict[str, str | int | float]:
        """The fields as netCDF-safe attributes (``problem_*``)."""
        attrs: dict[str, str | int | float] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            attrs[_ATTR_PREFIX + f.name] = ",".join(value) if f.name == "operators" else value
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict) -> Lorenz96Problem:
        """Rebuild the problem from a Dataset's ``attrs`` (see :meth:`to_attrs`)."""
        values = {}
        for f in dataclasses.fields(cls):
            key = _ATTR_PREFIX + f.name
            if key not in attrs:
                raise InputError(f"attribute {key!r} missing: not a Lorenz-96 problem data set")
            raw = attrs[key]
            if f.name == "operators":
                values[f.name] = tuple(str(raw).split(","))
            elif f.type in ("int", int):
                values[f.name] = int(raw)
            else:
                values[f.name] = float(raw)
        return cls(**values)


def initial_truth(problem: Lorenz96Problem, offset: int = 0, size: int | None = None,
                  dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
                  ) -> Tensor:
    """Values ``offset .. offset+size-1`` of the pre-burn-in state ``F + N(0, 1)``.

    Drawn by global index, so any slab equals the same slice of the whole ring.

    Returns
    -------
    Tensor, shape ``(size,)``
    """
    size = problem.n - offset if size is None else size
    x = indexed_normal_(torch.empty(size, dtype=dtype, device=device),
                        (problem.seed, _INITIAL_KEY), offset=offset, global_size=problem.n)
    return x.add_(problem.forcing)


def observation_noise(problem: Lorenz96Problem, cycle: int, offset: int = 0,
                      size: int | None = None, dtype: torch.dtype = torch.float64,
                      device: torch.device | str = "cpu") -> Tensor:
    """Standard-normal observation-error draws of one cycle (0-based), by global index.

    Returns
    -------
    Tensor, shape ``(size,)``
        Multiply by ``problem.obs_error_std`` to get the errors in observation units.
    """
    if not 0 <= cycle < problem.n_cycles:
        raise InputError(f"cycle={cycle}: must be in [0, {problem.n_cycles})")
    size = problem.n - offset if size is None else size
    return indexed_normal_(torch.empty(size, dtype=dtype, device=device),
                           (problem.seed, _OBS_KEY, cycle), offset=offset,
                           global_size=problem.n)


def generate_lorenz96_problem(problem: Lorenz96Problem, dtype: torch.dtype = torch.float64,
                              device: torch.device | str = "cpu",
                              show_progress: bool | None = False):
    """Integrate the truth and draw the observations of ``problem``.

    Parameters
    ----------
    problem : Lorenz96Problem
        What to generate.
    dtype : torch.dtype
        Precision of the integration (float64 by default); the Dataset is float64 either way
        when ``dtype`` is float64, float32 otherwise.
    device : torch.device or str
        Where to integrate.
    show_progress : bool or None
        Report progress (None: automatic, see :mod:`turbda_kit.progress`).

    Returns
    -------
    xarray.Dataset
        See the module docstring. Memory: ``(2 + len(operators)) * n_cycles * n`` values.
    """
    import xarray as xr

    if not isinstance(problem, Lorenz96Problem):
        raise InputError(f"problem must be a Lorenz96Problem, got {type(problem).__name__}")
    model = problem.model
    x = initial_truth(problem, dtype=dtype, device=device)
    work = L96Workspace.like(x)
    model.advance_(x, problem.burn_in_steps, work)
    start = x.cpu().numpy().copy()

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    truth = np.empty((problem.n_cycles, problem.n), dtype=np_dtype)
    noise = np.empty_like(truth)
    for cycle in progress(range(problem.n_cycles), desc="lorenz96 truth",
                          enabled=show_progress):
        model.advance_(x, problem.steps_per_cycle, work)
        truth[cycle] = x.cpu().numpy()
        noise[cycle] = observation_noise(problem, cycle, dtype=dtype, device=device).cpu().numpy()

    truth_t = torch.from_numpy(truth)
    noise_t = torch.from_numpy(noise)
    data_vars = {
        "truth": (("time", "i"), truth),
        "truth_initial": (("i",), start),
        "obs_noise": (("time", "i_obs"), noise),
    }
    catalogue = dict(_VARIABLES)
    for k, name in enumerate(problem.operators):
        clean = problem.obs_operator(name)(truth_t)
        values = (clean + problem.obs_error_std * noise_t).numpy()
        var = "obs" if k == 0 else f"obs_{name}"
        data_vars[var] = (("time", "i_obs"), values,
                          {"operator": name, "obs_error_std": problem.obs_error_std})
        catalogue[var] = VariableInfo(f"observations through {name}", "1")
    mtu = problem.times
    coords = {
        # CF time in seconds (1 MTU = LORENZ96_TIME_UNIT_SECONDS, a nominal date), so CF
        # readers decode it; the model time units themselves are time_mtu.
        "time": ("time", mtu * float(model.time_unit_seconds),
                 time_attrs("model time after the burn-in (1 model time unit = 5 days); the "
                            "date is nominal")),
        "time_mtu": ("time", mtu),
        "i": ("i", np.arange(problem.n)),
        "i_obs": ("i_obs", np.arange(problem.n)),
    }
    attrs = {**problem.to_attrs(), **provenance.as_attrs(provenance.collect())}
    return describe(xr.Dataset(data_vars, coords=coords, attrs=attrs), catalogue,
                    title="Lorenz-96 twin-experiment problem (turbda_kit)")


def write_lorenz96_problem(problem: Lorenz96Problem, path: str | os.PathLike,
                           dtype: torch.dtype = torch.float64,
                           device: torch.device | str = "cpu",
                           show_progress: bool | None = None) -> Path:
    """Generate ``problem`` and write it atomically to ``path`` (``.nc`` or ``.zarr``)."""
    return write_dataset(generate_lorenz96_problem(problem, dtype, device, show_progress), path)
