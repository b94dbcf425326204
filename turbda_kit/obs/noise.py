"""Observation noise and the shock process.

* :func:`gaussian_noise` / :func:`observe`: ``y = H(x) + N(0, sigma^2)`` with an explicit
  generator.
* :class:`ShockProcess`: the random "shocks" of the coupled SQG experiments, where at a
  random half of the cycles the truth used for observing and scoring is perturbed with
  Gaussian noise of a randomly chosen strength.

Random numbers addressed by global index or named by cycle live in
:mod:`turbda_kit.random_streams`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError

__all__ = [
    "ShockProcess",
    "ShockRecord",
    "gaussian_noise",
    "observe",
]


def _std_tensor(obs_error_std: float | Tensor, n_obs: int, like: Tensor) -> float | Tensor:
    if isinstance(obs_error_std, Tensor):
        if obs_error_std.dim() > 1 or obs_error_std.numel() not in (1, n_obs):
            raise InputError(f"obs_error_std has shape {tuple(obs_error_std.shape)}; expected a "
                             f"scalar or shape ({n_obs},)")
        if not bool(torch.all(obs_error_std > 0)) or not bool(torch.isfinite(obs_error_std).all()):
            raise InputError(f"obs_error_std must be finite and > 0 everywhere; min is "
                             f"{float(obs_error_std.min())}")
        return obs_error_std.to(device=like.device, dtype=like.dtype)
    value = float(obs_error_std)
    if not value > 0 or math.isinf(value):
        raise InputError(f"obs_error_std={obs_error_std!r}: must be a finite number > 0")
    return value


def gaussian_noise(shape: Sequence[int], obs_error_std: float | Tensor,
                   generator: torch.Generator, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> Tensor:
    """Draw observation errors ``N(0, obs_error_std**2)``.

    Parameters
    ----------
    shape : sequence of int
        ``(*batch, n_obs)``.
    obs_error_std : float or Tensor of shape ``(n_obs,)``
        Standard deviation(s), > 0, in observation units.
    generator : torch.Generator
        Source of randomness (its device is used when ``device`` is None).
    dtype : torch.dtype
        Floating dtype of the result.
    device : torch.device or str, optional
        Device of the result (default: the generator's).

    Returns
    -------
    Tensor, shape ``shape``
    """
    device = generator.device if device is None else torch.device(device)
    noise = torch.empty(tuple(shape), dtype=dtype, device=device)
    if noise.numel() == 0:
        return noise
    std = _std_tensor(obs_error_std, noise.shape[-1], noise)
    noise.normal_(generator=generator)
    return noise.mul_(std)


def observe(obs_operator, truth: Tensor, obs_error_std: float | Tensor,
            generator: torch.Generator) -> Tensor:
    """Synthetic observations ``y = H(truth) + e``, ``e ~ N(0, obs_error_std**2)``.

    Parameters
    ----------
    obs_operator : callable
        ``H``: ``(*batch, *state_shape) -> (*batch, n_obs)``.
    truth : Tensor, shape ``(*batch, *state_shape)``
        True state.
    obs_error_std : float or Tensor of shape ``(n_obs,)``
        Observation error standard deviation(s), > 0.
    generator : torch.Generator
        Source of the observation errors (on ``truth``'s device).

    Returns
    -------
    Tensor, shape ``(*batch, n_obs)``
    """
    clean = obs_operator(truth)
    return clean + gaussian_noise(clean.shape, obs_error_std, generator, clean.dtype,
                                  clean.device)


@dataclass(frozen=True)
class ShockRecord:
    """What the shock process did at one cycle.

    Attributes
    ----------
    occurred : bool
        Whether the truth was perturbed.
    std : float
        Standard deviation of the perturbation (0.0 when none), in the truth's units.
    """

    occurred: bool
    std: float


class ShockProcess:
    """Random shocks: at a random fraction of cycles, perturb the truth with Gaussian noise.

    The coupled ViT+EnSF experiments perturb the truth used for observing and for scoring
    at a random 50% of the cycles; the perturbation's standard deviation is 4.6, 3.7, 2.8
    or 1.8 K with probabilities 10, 20, 30 and 40%.

    Parameters
    ----------
    generator : torch.Generator
        Source of all randomness (whether a shock occurs, its strength, its field).
    probability : float
        Chance of a shock at a cycle, in [0, 1].
    stds : sequence of float
        Possible perturbation standard deviations (units of the truth passed to
        :meth:`apply`: K for potential temperature), each > 0.
    weights : sequence of float
        Probabilities of each std (normalised to sum to 1), each >= 0.

    Examples
    --------
    >>> shocks = ShockProcess(torch.Generator().manual_seed(0))
    >>> truth = torch.zeros(2, 8, 8)
    >>> perturbed, record = shocks.apply(truth)
    >>> record.occurred in (True, False)
    True
    """

    def __init__(self, generator: torch.Generator, probability: float = 0.5,
                 stds: Sequence[float] = (4.6, 3.7, 2.8, 1.8),
                 weights: Sequence[float] = (0.1, 0.2, 0.3, 0.4)):
        if not 0.0 <= probability <= 1.0:
            raise InputError(f"probability={probability!r}: must be in [0, 1]")
        stds = tuple(float(s) for s in stds)
        weights = tuple(float(w) for w in weights)
        if not stds or len(stds) != len(weights):
            raise InputError(f"stds {stds} and weights {weights} must be non-empty and of "
                             f"equal length")
        if any(not s > 0 for s in stds):
            raise InputError(f"stds={stds}: every std must be > 0")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise InputError(f"weights={weights}: must be >= 0 with a positive sum")
        self.generator = generator
        self.probability = float(probability)
        self.stds = stds
        total = sum(weights)
        self.weights = tuple(w / total for w in weights)

    def draw(self) -> ShockRecord:
        """Decide whether this cycle has a shock and how strong (consumes two uniforms)."""
        u = torch.rand(2, generator=self.generator, dtype=torch.float64,
                       device=self.generator.device).tolist()
        if u[0] >= self.probability:
            return ShockRecord(False, 0.0)
        cumulative = 0.0
        for std, weight in zip(self.stds, self.weights):
            cumulative += weight
            if u[1] < cumulative:
                return ShockRecord(True, std)
        return ShockRecord(True, self.stds[-1])

    def apply(self, truth: Tensor, record: ShockRecord | None = None
              ) -> tuple[Tensor, ShockRecord]:
        """Return the (possibly) perturbed truth and the record of what happened.

        Parameters
        ----------
        truth : Tensor, any shape
            True state at this cycle (K for SQG potential temperature).
        record : ShockRecord, optional
            A decision made earlier with :meth:`draw` (default: draw one now).

        Returns
        -------
        perturbed : Tensor, same shape as ``truth``
            ``truth + std * N(0, I)`` when a shock occurred, else ``truth`` itself.
        record : ShockRecord
        """
        if record is None:
            record = self.draw()
        if not record.occurred:
            return truth, record
        noise = torch.empty(truth.shape, dtype=truth.dtype, device=self.generator.device)
        noise.normal_(generator=self.generator)
        return truth + record.std * noise.to(truth.device), record
