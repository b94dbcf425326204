"""Observation noise, random numbers addressed by global index, and the shock process.

* :func:`gaussian_noise` / :func:`observe`: ``y = H(x) + N(0, sigma^2)`` with an explicit
  generator.
* :func:`indexed_normal_` / :func:`indexed_normal_add_`: standard normal numbers that
  depend only on a key and on the *global* position of each value, never on how the
  array is split. A state cut into slabs across MPI ranks draws exactly the numbers the
  whole state would: the global columns are cut into fixed-size blocks and each
  (key, block) seeds its own generator, which draws that block for all rows (members).
* :class:`ShockProcess`: the random "shocks" of the coupled SQG experiments, where at a
  random half of the cycles the truth used for observing and scoring is perturbed with
  Gaussian noise of a randomly chosen strength.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "ShockProcess",
    "ShockRecord",
    "block_seed",
    "gaussian_noise",
    "indexed_blocks",
    "indexed_normal_",
    "indexed_normal_add_",
    "observe",
]

#: Global columns per independently seeded block in :func:`indexed_normal_`. One seed draws
#: all rows (members) of a block, e.g. 20 x 2**14 values (~4 ms): seeding costs <1% of
#: that on a CPU; a 20-member tile of 2**14 columns (1.3 MB in float32) stays in the L3
#: cache during the EnSF update while keeping the number of (multi-threaded) operations per
#: step low; slabs aligned to 2**14 waste no draws at their edges.
DEFAULT_BLOCK_SIZE = 2 ** 14

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    # A well-mixed 64-bit bijection (Steele, Lea & Flood 2014): nearby counters -> unrelated seeds.
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def block_seed(*words: int) -> int:
    """Hash integer words (key, step, row, block, ...) into a 63-bit generator seed.

    Parameters
    ----------
    *words : int
        Any integers (negative ones are taken modulo 2**64).

    Returns
    -------
    int
        A seed in ``[0, 2**63)``; distinct word tuples give unrelated seeds.
    """
    h = 0x6A09E667F3BCC908
    for w in words:
        h = _splitmix64(h ^ (int(w) & _MASK64))
    return h >> 1


def indexed_blocks(n_rows: int, m: int, key: Sequence[int], offset: int = 0,
                   global_size: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                   scratch: Tensor | None = None, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu", prefetch: bool = False
                   ) -> Iterator[tuple[int, int, Tensor]]:
    """Iterate over the global blocks covering local columns ``0 .. m-1``.

    The building block of :func:`indexed_normal_`: yields ``(start, stop, values)`` with
    ``values`` the ``(n_rows, stop - start)`` standard normals of local columns
    ``start:stop`` (global ``offset + start : offset + stop``), which lie in one global
    block. ``values`` is a view of a scratch buffer overwritten by a later iteration, so
    a caller can work through an array tile by tile (e.g. the EnSF update) while the
    noise stays in cache.

    Parameters
    ----------
    n_rows : int
        Rows drawn per block (e.g. ensemble members); part of the stream's definition.
    m : int
        Local columns.
    key, offset, global_size, block_size
        As for :func:`indexed_normal_`.
    scratch : Tensor, optional
        Reusable contiguous buffer of ``n_rows * block_size`` values (twice that with
        ``prefetch``).
    dtype, device
        Of the values (ignored when ``scratch`` fits).
    prefetch : bool
        Draw the next block in a background thread while the caller works on the current
        one (CPU only). torch's CPU generators are sequential, so this is the only way the
        draws use a second core; the numbers are the same either way.
    """
    if global_size is None:
        global_size = offset + m
    if offset < 0 or offset + m > global_size:
        raise InputError(f"offset={offset}, length {m}: the slab must lie inside "
                         f"[0, global_size={global_size})")
    if not isinstance(block_size, int) or block_size < 1:
        raise InputError(f"block_size={block_size!r}: must be an integer >= 1")
    if m == 0 or n_rows == 0:
        return
    blocks = range(offset // block_size, (offset + m - 1) // block_size + 1)
    device = torch.device(device) if scratch is None else scratch.device
    prefetch = prefetch and len(blocks) > 1 and device.type == "cpu"
    need = n_rows * min(block_size, global_size)
    copies = 2 if prefetch else 1
    if scratch is None or scratch.numel() < copies * need or not scratch.is_contiguous():
        scratch = torch.empty(copies * need, dtype=dtype, device=device)
    buffers = [scratch.reshape(-1)[i * need:(i + 1) * need] for i in range(copies)]
    generators = [torch.Generator(device=device) for _ in range(copies)]
    prefix = block_seed(*key)

    def draw(k: int, slot: int) -> Tensor:
        # One seed per block of the global state, drawing all rows at once: cheap to seed,
        # and a slab edge inside a block still draws the whole block (normal_'s values
        # depend on how many are drawn), then keeps its columns.
        width = min((k + 1) * block_size, global_size) - k * block_size
        generators[slot].manual_seed(_splitmix64(prefix ^ k) >> 1)
        return buffers[slot][:n_rows * width].view(n_rows, width).normal_(
            generator=generators[slot])

    def columns(k: int, values: Tensor) -> tuple[int, int, Tensor]:
        g0 = k * block_size
        a, b = max(g0, offset), min(g0 + values.shape[1], offset + m)
        return a - offset, b - offset, values[:, a - g0:b - g0]

    if not prefetch:
        for k in blocks:
            yield columns(k, draw(k, 0))
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(draw, blocks[0], 0)
        for i, k in enumerate(blocks):
            values = pending.result()
            if i + 1 < len(blocks):
                # The other slot is free: the caller finished with it when it asked for k.
                pending = pool.submit(draw, blocks[i + 1], (i + 1) % 2)
            yield columns(k, values)


def _blocks_of(out: Tensor, key, offset, global_size, block_size, scratch, prefetch=False):
    # (rows view of out, values) for a contiguous out.
    m = out.shape[-1] if out.dim() else 1
    rows = out.reshape(-1, m)
    if scratch is not None and (scratch.dtype != out.dtype or scratch.device != out.device):
        scratch = None
    for start, stop, values in indexed_blocks(rows.shape[0], m, key, offset, global_size,
                                              block_size, scratch, out.dtype, out.device,
                                              prefetch):
        yield rows[:, start:stop], values


def indexed_normal_(out: Tensor, key: Sequence[int], offset: int = 0,
                    global_size: int | None = None,
                    block_size: int = DEFAULT_BLOCK_SIZE,
                    scratch: Tensor | None = None) -> Tensor:
    """Fill ``out`` with N(0, 1) values addressed by global index, in place.

    ``out`` holds columns ``offset .. offset + m - 1`` of a global ``(rows, global_size)``
    array of standard normals (all leading dimensions flattened into rows, e.g. ensemble
    members). The global columns are cut into blocks of ``block_size``; block ``k`` (all
    rows) is drawn in one call from a generator seeded by a hash of ``(key, k)``. So any
    slab of columns gets bit-identical values whether it is drawn alone or as part of the
    whole, provided every caller uses the same rows, ``key``, ``global_size`` and
    ``block_size``. Slabs whose edges fall on multiples of ``block_size`` draw nothing
    they do not keep.

    Parameters
    ----------
    out : Tensor, shape ``(*rows, m)``
        Floating-point tensor to fill.
    key : sequence of int
        Stream key, e.g. ``(seed, cycle, step)``.
    offset : int
        Global column of ``out[..., 0]``.
    global_size : int, optional
        Number of global columns (default ``offset + m``). Fixes the size of the last
        block, which must be the same for every caller.
    block_size : int
        Columns per seeded block; all callers sharing a stream must use the same value.
    scratch : Tensor, optional
        Reusable contiguous buffer of at least ``rows * block_size`` values (same dtype and
        device as ``out``); allocated per call when absent.

    Returns
    -------
    Tensor
        ``out``.
    """
    if not out.is_contiguous():
        return out.copy_(indexed_normal_(torch.empty(out.shape, dtype=out.dtype,
                                                     device=out.device),
                                         key, offset, global_size, block_size))
    for dest, values in _blocks_of(out, key, offset, global_size, block_size, scratch):
        dest.copy_(values)
    return out


def indexed_normal_add_(out: Tensor, alpha: float, key: Sequence[int], offset: int = 0,
                        global_size: int | None = None,
                        block_size: int = DEFAULT_BLOCK_SIZE,
                        scratch: Tensor | None = None, prefetch: bool = False) -> Tensor:
    """``out += alpha * xi`` with ``xi`` the values :func:`indexed_normal_` would draw.

    Adds block by block from a small scratch buffer (``rows x block_size`` values, which
    stays in cache), so the noise never makes a round trip through memory: the hot loop of
    the EnSF update. ``out`` must be contiguous in its last dimension.

    Parameters
    ----------
    out : Tensor, shape ``(*rows, m)``
        Updated in place.
    alpha : float
        Scale of the noise.
    key, offset, global_size, block_size, scratch
        As for :func:`indexed_normal_`.
    prefetch : bool
        Draw the next block in a background thread (see :func:`indexed_blocks`).

    Returns
    -------
    Tensor
        ``out``.
    """
    if not out.is_contiguous():
        noise = indexed_normal_(torch.empty(out.shape, dtype=out.dtype, device=out.device),
                                key, offset, global_size, block_size)
        return out.add_(noise, alpha=alpha)
    for dest, values in _blocks_of(out, key, offset, global_size, block_size, scratch,
                                   prefetch):
        dest.add_(values, alpha=alpha)
    return out


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
