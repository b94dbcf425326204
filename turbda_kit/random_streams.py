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
* **Per element** — :func:`counter_normal` (``indexed_normal_(..., method="counter")``):
  every value is a pure function of ``(key, row, global column)``, computed by integer
  hashing and a Box-Muller transform in whole-tensor torch operations. Nothing is
  sequential, so the draws vectorise, fuse into the EnSF step (:mod:`turbda_kit.native`)
  and run on any device; a slab at any offset reproduces its part of the whole exactly.

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
    "COUNTER_MAX_COLUMNS",
    "DEFAULT_BLOCK_SIZE",
    "STREAMS",
    "NOISE_METHODS",
    "block_seed",
    "counter_normal",
    "counter_words",
    "cycle_generator",
    "indexed_blocks",
    "indexed_normal_",
    "indexed_normal_add_",
    "mix32",
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
                   device: torch.device | str = "cpu", prefetch: bool = False,
                   method: str = "blocks") -> Iterator[tuple[int, int, Tensor]]:
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
        draws use a second core; the numbers are the same either way. Ignored by the
        counter method.
    method : {"blocks", "counter"}
        ``"blocks"``: a ``torch.Generator`` seeded per block of global columns;
        ``"counter"``: :func:`counter_normal`, each value hashed from its own position (tiles
        of ``block_size`` columns, which need not align with anything).
    """
    if global_size is None:
        global_size = offset + m
    if offset < 0 or offset + m > global_size:
        raise InputError(f"offset={offset}, length {m}: the slab must lie inside "
                         f"[0, global_size={global_size})")
    if not isinstance(block_size, int) or block_size < 1:
        raise InputError(f"block_size={block_size!r}: must be an integer >= 1")
    if method not in NOISE_METHODS:
        raise InputError(f"method={method!r}: choose one of {NOISE_METHODS}")
    if m == 0 or n_rows == 0:
        return
    if method == "counter":
        yield from _counter_blocks(n_rows, m, key, offset, global_size, block_size, scratch,
                                   dtype, device)
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


def _blocks_of(out: Tensor, key, offset, global_size, block_size, scratch, prefetch=False,
               method="blocks"):
    # (rows view of out, values) for a contiguous out.
    m = out.shape[-1] if out.dim() else 1
    rows = out.reshape(-1, m)
    if scratch is not None and (scratch.dtype != out.dtype or scratch.device != out.device):
        scratch = None
    for start, stop, values in indexed_blocks(rows.shape[0], m, key, offset, global_size,
                                              block_size, scratch, out.dtype, out.device,
                                              prefetch, method):
        yield rows[:, start:stop], values


def indexed_normal_(out: Tensor, key: Sequence[int], offset: int = 0,
                    global_size: int | None = None,
                    block_size: int = DEFAULT_BLOCK_SIZE,
                    scratch: Tensor | None = None, method: str = "blocks") -> Tensor:
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
    method : {"blocks", "counter"}
        How values are named (see :func:`indexed_blocks`); ``"counter"`` values depend only
        on ``(key, row, global column)``, not on ``global_size`` or ``block_size``.

    Returns
    -------
    Tensor
        ``out``.
    """
    if not out.is_contiguous():
        return out.copy_(indexed_normal_(torch.empty(out.shape, dtype=out.dtype,
                                                     device=out.device),
                                         key, offset, global_size, block_size, method=method))
    for dest, values in _blocks_of(out, key, offset, global_size, block_size, scratch,
                                   method=method):
        dest.copy_(values)
    return out


def indexed_normal_add_(out: Tensor, alpha: float, key: Sequence[int], offset: int = 0,
                        global_size: int | None = None,
                        block_size: int = DEFAULT_BLOCK_SIZE,
                        scratch: Tensor | None = None, prefetch: bool = False,
                        method: str = "blocks") -> Tensor:
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
    method : {"blocks", "counter"}
        As for :func:`indexed_normal_`.

    Returns
    -------
    Tensor
        ``out``.
    """
    if not out.is_contiguous():
        noise = indexed_normal_(torch.empty(out.shape, dtype=out.dtype, device=out.device),
                                key, offset, global_size, block_size, method=method)
        return out.add_(noise, alpha=alpha)
    for dest, values in _blocks_of(out, key, offset, global_size, block_size, scratch,
                                   prefetch, method):
        dest.add_(values, alpha=alpha)
    return out



# ---------------------------------------------------------------------------------------
# Counter-based normals: each value a pure function of (key, row, global column)

#: How :func:`indexed_normal_` names its values: ``"blocks"`` (a ``torch.Generator`` per
#: block of global columns) or ``"counter"`` (a hash of each value's own position,
#: :func:`counter_normal`).
NOISE_METHODS = ("blocks", "counter")

#: Global columns the counter stream can address (column indices are int32).
COUNTER_MAX_COLUMNS = 2 ** 31

_GOLDEN = -0x61C88647          # 0x9E3779B9 = 2**32 / golden ratio, as a signed int32
_SALT_2 = 0x632BE5AB
_SALT_3 = -0x7AEA850B          # 0x85157AF5
_MUL_1 = 0x7FEB352D
_MUL_2 = -0x7B935975           # 0x846CA68B
_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951
_TWO_PI_OVER_2_32 = 2.0 * 3.141592653589793 / 2 ** 32
# log(m) = s (c0 + c1 s^2 + c2 s^4 + c3 s^6), s = (m - 1) / (m + 1), m in [sqrt(1/2), sqrt(2)):
# a near-minimax fit (max error 1.2e-10, below float32 rounding).
_LOG_COEFFS = (2.0, 0.666669484545005, 0.3996579460098569, 0.30100335670270395)


def _int32(value: int) -> int:
    return ((int(value) + 2 ** 31) % 2 ** 32) - 2 ** 31


def mix32(h: Tensor) -> Tensor:
    """A bijective 32-bit integer hash of an int32 tensor (elementwise).

    Xorshift-multiply rounds ``h ^= h >>> 16; h *= 0x7feb352d; h ^= h >>> 15;
    h *= 0x846ca68b; h ^= h >>> 16`` (the constants of C. Wellons' "lowbias32" search);
    shifts are logical (masked), products wrap modulo 2**32. Pure torch integer operations,
    so it vectorises, fuses under ``torch.compile`` and runs on any device.

    Parameters
    ----------
    h : Tensor of int32

    Returns
    -------
    Tensor of int32, same shape
    """
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _MUL_1
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = h * _MUL_2
    return h ^ ((h >> 16) & 0xFFFF)


def counter_words(key: Sequence[int]) -> tuple[int, int]:
    """The two signed 32-bit words that key a counter stream (a hash of ``key``)."""
    h = block_seed(*key)
    return _int32(h & 0xFFFFFFFF), _int32(h >> 32)


def _log_positive(u: Tensor) -> Tensor:
    # Natural log of float32 u > 0 (normal numbers): exponent and mantissa by bit
    # manipulation and a short odd polynomial in s = (m-1)/(m+1).
    bits = u.view(torch.int32)
    exponent = (bits >> 23) - 127
    mantissa = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)       # [1, 2)
    high = mantissa > _SQRT2
    mantissa = torch.where(high, mantissa * 0.5, mantissa)
    exponent = exponent + high.to(torch.int32)
    s = (mantissa - 1.0) / (mantissa + 1.0)
    s2 = s * s
    c0, c1, c2, c3 = _LOG_COEFFS
    poly = ((s2 * c3 + c2) * s2 + c1) * s2 + c0
    return exponent.to(torch.float32) * _LN2 + s * poly


def _sqrt_nonnegative(v: Tensor) -> Tensor:
    # sqrt of float32 v >= 0 as v / sqrt(v): a bit-level first guess of 1/sqrt(v) and three
    # Newton steps (relative error ~1e-7); 0 -> 0.
    v_safe = torch.clamp_min(v, 1e-30)
    y = (0x5F375A86 - (v_safe.view(torch.int32) >> 1)).view(torch.float32)
    half = v_safe * 0.5
    for _ in range(3):
        y = y * (1.5 - half * y * y)
    return v * y


def _cos_sin_turns(d: Tensor) -> tuple[Tensor, Tensor]:
    # cos and sin of 2 pi d / 2**32 for int32 d (taken modulo 2**32): the top two bits of
    # d + 2**29 pick the quadrant q, the rest is an angle phi in [-pi/4, pi/4) for Taylor
    # polynomials (truncation error < 3e-8); theta = q pi/2 + phi.
    o = d + 0x20000000
    quadrant = (o >> 30) & 3
    phi = ((o & 0x3FFFFFFF) - 0x20000000).to(torch.float32) * _TWO_PI_OVER_2_32
    p2 = phi * phi
    cos_phi = (((p2 * (1.0 / 40320) - 1.0 / 720) * p2 + 1.0 / 24) * p2 - 0.5) * p2 + 1.0
    sin_phi = ((((p2 * (1.0 / 362880) - 1.0 / 5040) * p2 + 1.0 / 120) * p2 - 1.0 / 6) * p2
               + 1.0) * phi
    even = (quadrant & 1) == 0
    cosine = torch.where(even, cos_phi, sin_phi)
    sine = torch.where(even, sin_phi, cos_phi)
    cosine = torch.where(((quadrant + 1) & 2) == 0, cosine, -cosine)
    sine = torch.where((quadrant & 2) == 0, sine, -sine)
    return cosine, sine


def counter_normal(rows: Tensor, columns: Tensor, words: Tensor,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normals addressed by ``(key, row, column)``: a pure, elementwise function.

    Rows ``2p`` and ``2p + 1`` share one Box-Muller pair: keys ``k1, k2, k3`` are hashed
    from ``(words, p)``; then ``a = mix(column + k1)``, ``b = mix(a ^ k2)``,
    ``d = mix(a + k3)`` (:func:`mix32`), ``u = (b >>> 1 + 1/2) 2^-31`` in ``(0, 1]``,
    ``theta = 2 pi d 2^-32``, and row ``2p`` gets ``sqrt(-2 log u) cos(theta)``, row
    ``2p + 1`` ``sqrt(-2 log u) sin(theta)`` (independent standard normals). A value depends
    only on its own key, row and column, not on how the array is cut (slabs, tiles, ranks)
    nor on the number of rows. The transform is evaluated in float32 with the kit's own log,
    square root and cosine/sine, built from integer operations, ``+ - * /`` and ``where``
    only (relative error ~2e-7), so the C kernel of :mod:`turbda_kit.native` gives the same
    bits. With 31 bits in ``u`` the largest magnitude is ``sqrt(64 ln 2) = 6.66``
    (``P(|z| > 6.66) = 3e-11`` for a true normal).

    Parameters
    ----------
    rows : Tensor of int32, shape ``(R, 1)``
        Global row indices (e.g. ensemble members), >= 0.
    columns : Tensor of int32, shape ``(1, m)``
        Global column indices, ``0 <= column < 2**31``.
    words : Tensor of int32, shape ``(>= 2,)``
        Stream key: :func:`counter_words` of ``key``.
    dtype : torch.dtype
        Floating-point type of the result (values are float32 numbers converted to it).

    Returns
    -------
    Tensor, shape ``(R, m)``
    """
    r = mix32((rows >> 1) * _GOLDEN + words[0])
    k1 = mix32(r ^ words[1])
    k2 = mix32(k1 + _SALT_2)
    k3 = mix32(k2 + _SALT_3)
    a = mix32(columns + k1)
    b = mix32(a ^ k2)
    d = mix32(a + k3)
    u = (((b >> 1) & 0x7FFFFFFF).to(torch.float32) + 0.5) * 2.0 ** -31
    radius = _sqrt_nonnegative(_log_positive(u) * -2.0)
    cosine, sine = _cos_sin_turns(d)
    return (radius * torch.where((rows & 1) == 0, cosine, sine)).to(dtype)


def _counter_blocks(n_rows: int, m: int, key: Sequence[int], offset: int, global_size: int,
                    block_size: int, scratch: Tensor | None, dtype: torch.dtype,
                    device: torch.device | str) -> Iterator[tuple[int, int, Tensor]]:
    from . import native

    if global_size > COUNTER_MAX_COLUMNS:
        raise InputError(f"global_size={global_size}: the counter stream addresses at most "
                         f"2**31 columns; use method='blocks'")
    device = torch.device(device) if scratch is None else scratch.device
    need = n_rows * min(block_size, m)
    if scratch is None or scratch.numel() < need or not scratch.is_contiguous() or \
            scratch.dtype != dtype:
        scratch = torch.empty(need, dtype=dtype, device=device)
    words = counter_words(key)
    word_tensor = torch.tensor(words, dtype=torch.int32, device=device)
    rows = torch.arange(n_rows, dtype=torch.int32, device=device)[:, None]
    single = None
    if dtype != torch.float32 and device.type == "cpu":
        single = torch.empty(need, dtype=torch.float32)
    for start in range(0, m, block_size):
        stop = min(start + block_size, m)
        width = stop - start
        values = scratch[:n_rows * width].view(n_rows, width)
        target = values if single is None else single[:n_rows * width].view(n_rows, width)
        # The C kernel (CPU, float32) or the torch function: the same bits.
        if not native.counter_fill_f32(target, words, offset + start):
            columns = torch.arange(offset + start, offset + stop, dtype=torch.int32,
                                   device=device)[None, :]
            target.copy_(counter_normal(rows, columns, word_tensor))
        if single is not None:
            values.copy_(target)
        yield start, stop, values


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
