"""Counter-based random streams: every random number of a run is named, never carried.

Two ways to name a draw, both giving results that do not depend on how a run is cut up:

* **Per cycle** — :func:`cycle_generator` ``(seed, cycle, stream)``: a fresh
  ``torch.Generator`` for one purpose (observation noise, the filter, shocks, ...) of
  one cycle of an experiment. A run resumed from a checkpoint draws exactly what an
  uninterrupted run draws, with nothing but the cycle index to restore.
* **Per global index** — :func:`indexed_normal_` / :func:`indexed_normal_add_` /
  :func:`indexed_blocks`: standard normal numbers that depend only on a key and on the
  *global* position of each value. A state cut into slabs across MPI ranks draws exactly
  the numbers the whole state would: the global columns are cut into fixed-size blocks
  and each (key, block) seeds its own generator, which draws that block for all rows
  (members). This is what makes the EnSF analysis bit-identical on any number of ranks.

Seeds are derived by hashing (:func:`block_seed`, :func:`stream_seed`), so nearby keys
give unrelated streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "STREAMS",
    "block_seed",
    "cycle_generator",
    "indexed_blocks",
    "indexed_normal_",
    "indexed_normal_add_",
    "stream_seed",
]

# ---------------------------------------------------------------------------------------
# Streams addressed by global index

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



# ---------------------------------------------------------------------------------------
# Per-cycle streams of an experiment

#: Named streams, so that adding a new kind of draw never shifts the existing ones.
STREAMS = {"obs_noise": 1, "analysis": 2, "shock": 3, "obs_network": 4, "initial": 5}


def stream_seed(seed: int, cycle: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` at ``cycle`` of an experiment seeded with ``seed``.

    Raises
    ------
    KeyError
        ``stream`` is not one of :data:`STREAMS`.
    """
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    digest = hashlib.blake2b(f"{seed}:{cycle}:{STREAMS[stream]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def cycle_generator(seed: int, cycle: int, stream: str, device: torch.device | str = "cpu"
                    ) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` for one stream of one cycle."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(seed, cycle, stream))
    return gen
