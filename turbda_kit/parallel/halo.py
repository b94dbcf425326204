"""1-D slab decomposition of a ring and its halo exchange (for Lorenz-96).

Each rank owns a contiguous slab ``[start, stop)`` of the ring. The Lorenz-96 stencil
needs two values on the left and one on the right, so before every Runge–Kutta stage a
rank sends its last two values to the right neighbour and its first value to the left
one (non-blocking ``Isend``/``Irecv``), and receives its halo in return.

Buffers are staged through host memory unless the MPI library is GPU-aware and
``gpu_aware=True`` (e.g. ``MPICH_GPU_SUPPORT_ENABLED=1`` on Frontier), in which case device
tensors are handed to MPI directly.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..models.lorenz96 import HALO_LEFT, HALO_RIGHT, periodic_halo_
from ..optional import require

__all__ = ["RingHaloExchange", "gpu_aware_default", "slab_bounds"]

_TAG_TO_RIGHT, _TAG_TO_LEFT = 9601, 9602


def slab_bounds(n_global: int, size: int, rank: int, align: int = 1) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s slab in a balanced split of ``n_global`` points.

    The ring is cut into blocks of ``align`` points (the last may be shorter) and the
    blocks are shared out as evenly as possible, so every slab starts at a multiple of
    ``align``. Each slab must hold at least ``HALO_LEFT`` (2) points, since a neighbour's
    left halo is two values deep.

    Why align: torch's CPU kernels treat the tail of an array (past the last full SIMD
    vector) with scalar code whose last-ulp rounding (fused multiply-adds,
    transcendentals) can differ from the vector code. Slabs that start at a multiple of
    a few SIMD widths put every global element in the same lane position whatever the
    number of ranks, which is what makes runs on 1, 2 or 4 ranks bit-identical.

    Raises
    ------
    InputError
        If the ring is too small for ``size`` ranks.
    """
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"rank {rank} of size {size}: need 0 <= rank < size")
    if align < 1:
        raise InputError(f"align must be >= 1, got {align}")
    n_blocks = -(-n_global // align)
    base, extra = divmod(n_blocks, size)

    def bounds(r: int) -> tuple[int, int]:
        first = r * base + min(r, extra)
        last = first + base + (1 if r < extra else 0)
        return first * align, min(last * align, n_global)

    # Checked for every rank, so that all ranks raise the same error.
    shortest = min(stop - start for start, stop in map(bounds, range(size)))
    if n_global < 4 or shortest < HALO_LEFT:
        raise InputError(f"a ring of {n_global} points cannot be split over {size} ranks in "
                         f"blocks of {align}: every slab needs >= {HALO_LEFT} points (use a "
                         f"larger ring, fewer ranks or a smaller align)")
    return bounds(rank)


def gpu_aware_default() -> bool:
    """Whether to hand device buffers to MPI: ``TURBDA_GPU_AWARE_MPI`` or Cray's variable."""
    flag = os.environ.get("TURBDA_GPU_AWARE_MPI", os.environ.get("MPICH_GPU_SUPPORT_ENABLED", "0"))
    return flag.strip() not in ("", "0", "false", "False")


class RingHaloExchange:
    """Fills the halo of a padded slab from the neighbouring ranks; pass as ``fill_halo``.

    Parameters
    ----------
    comm : mpi4py communicator or None
        ``None`` or a size-1 communicator: periodic fill from the slab itself.
    gpu_aware : bool, optional
        Hand CUDA/ROCm tensors to MPI directly (default :func:`gpu_aware_default`).

    Attributes
    ----------
    seconds : float
        Wall time spent exchanging so far (device-synchronised).
    exchanges : int
        Number of exchanges.
    """

    def __init__(self, comm=None, gpu_aware: bool | None = None):
        self.comm = comm
        self.size = 1 if comm is None else comm.Get_size()
        self.rank = 0 if comm is None else comm.Get_rank()
        self.gpu_aware = gpu_aware_default() if gpu_aware is None else gpu_aware
        self.seconds = 0.0
        self.exchanges = 0
        self._buffers: dict[tuple, tuple] = {}

    def _host_buffers(self, batch: tuple[int, ...], dtype: torch.dtype):
        key = (batch, dtype)
        if key not in self._buffers:
            np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            self._buffers[key] = tuple(np.empty((*batch, w), dtype=np_dtype)
                                       for w in (HALO_LEFT, HALO_RIGHT, HALO_LEFT, HALO_RIGHT))
        return self._buffers[key]

    def __call__(self, padded: Tensor) -> None:
        start = time.perf_counter()
        if self.size == 1:
            periodic_halo_(padded)
        else:
            self._exchange(padded)
        self.seconds += time.perf_counter() - start
        self.exchanges += 1

    def _exchange(self, padded: Tensor) -> None:
        MPI = require("mpi4py.MPI", "the halo exchange between MPI ranks")
        comm = self.comm
        left, right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        m = padded.shape[-1] - HALO_LEFT - HALO_RIGHT
        interior_last = padded[..., HALO_LEFT + m - HALO_LEFT:HALO_LEFT + m]   # → right's left halo
        interior_first = padded[..., HALO_LEFT:HALO_LEFT + HALO_RIGHT]          # → left's right halo
        direct = self.gpu_aware and padded.is_cuda
        if direct:
            torch.cuda.synchronize(padded.device)
            send_r, send_l = interior_last.contiguous(), interior_first.contiguous()
            recv_l = torch.empty_like(send_r)
            recv_r = torch.empty_like(send_l)
        else:
            send_r, send_l, recv_l, recv_r = self._host_buffers(tuple(padded.shape[:-1]),
                                                                padded.dtype)
            send_r[...] = interior_last.cpu().numpy()
            send_l[...] = interior_first.cpu().numpy()
        requests = [comm.Irecv(recv_l, source=left, tag=_TAG_TO_RIGHT),
                    comm.Irecv(recv_r, source=right, tag=_TAG_TO_LEFT),
                    comm.Isend(send_r, dest=right, tag=_TAG_TO_RIGHT),
                    comm.Isend(send_l, dest=left, tag=_TAG_TO_LEFT)]
        MPI.Request.Waitall(requests)
        if direct:
            padded[..., :HALO_LEFT].copy_(recv_l)
            padded[..., HALO_LEFT + m:].copy_(recv_r)
        else:
            padded[..., :HALO_LEFT].copy_(torch.from_numpy(recv_l))
            padded[..., HALO_LEFT + m:].copy_(torch.from_numpy(recv_r))
