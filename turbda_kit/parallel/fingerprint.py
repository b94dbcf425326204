"""An exact fingerprint of an array split across ranks, independent of the split.

Used to check that a distributed computation gives bit-identical results on any number of
ranks without gathering the array: each rank fingerprints its slab, the integer sums are
added modulo a prime, and equal fingerprints mean equal arrays (up to a ~1e-9 chance
collision).

Example
-------
>>> import torch
>>> from turbda_kit.parallel.fingerprint import analysis_fingerprint
>>> full = torch.arange(12.0).reshape(2, 6)
>>> halves = analysis_fingerprint(full[:, :4], 0, 6) + analysis_fingerprint(full[:, 4:], 4, 6)
>>> halves % (2 ** 31 - 1) == analysis_fingerprint(full, 0, 6)
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["FINGERPRINT_PRIME", "analysis_fingerprint"]

# A Mersenne prime: fingerprint terms (< 2**31) times weights (< 2**31) fit in int64.
FINGERPRINT_PRIME = 2 ** 31 - 1


def analysis_fingerprint(local: Tensor, offset: int, n_global: int, comm: Any | None = None,
                         chunk: int = 2 ** 22) -> int:
    """Exact fingerprint of a distributed ensemble, independent of how it is split.

    Every value's bit pattern (as 32-bit words) ``u`` at global word position ``i`` (member
    by member, then along the ring) contributes ``(u mod P) (i mod (P - 1) + 1) mod P``
    with ``P = 2**31 - 1``; the integer sum modulo ``P`` is exact, so it does not depend
    on the order of summation or on the number of ranks.

    Parameters
    ----------
    local : Tensor, shape (member, m)
        This rank's slab ``[offset, offset + m)`` of the global ``(member, n_global)`` array.
    offset : int
        Global index of the slab's first point.
    n_global : int
        Ring size.
    comm : communicator, optional
        Ranks holding the other slabs (None: ``local`` is the whole array, or the caller
        adds the slabs' fingerprints modulo ``P`` itself).
    chunk : int
        Words per integer temporary (bounds memory to a few ``8 * chunk`` bytes).

    Returns
    -------
    int
        In ``[0, P)``, identical on every rank of ``comm``.
    """
    if local.dim() != 2:
        raise InputError(f"local has shape {tuple(local.shape)}; expected (member, m)")
    if local.element_size() % 4:
        raise InputError(f"fingerprints need 32- or 64-bit values, got {local.dtype}")
    words = local.detach().contiguous().view(torch.int32)       # (member, m * w)
    per_value = local.element_size() // 4
    row_words = n_global * per_value
    total = 0
    for member in range(words.shape[0]):
        base = member * row_words + offset * per_value
        row = words[member]
        for a in range(0, row.numel(), chunk):
            u = row[a:a + chunk].to(torch.int64).bitwise_and_(0xFFFFFFFF).remainder_(
                FINGERPRINT_PRIME)
            weight = torch.arange(base + a, base + a + u.numel(), dtype=torch.int64,
                                  device=u.device).remainder_(FINGERPRINT_PRIME - 1).add_(1)
            total += int(u.mul_(weight).remainder_(FINGERPRINT_PRIME).sum())
    total %= FINGERPRINT_PRIME
    if comm is not None and comm.Get_size() > 1:
        total = int(comm.allreduce(total)) % FINGERPRINT_PRIME
    return total
