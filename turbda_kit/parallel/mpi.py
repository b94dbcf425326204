"""Small mpi4py helpers: a communicator or a serial stand-in, safe aborts, exact reductions,
sub-communicators and the node layout.

Library code takes a ``comm`` argument and calls only the lower-case (pickle-based)
mpi4py methods listed on :class:`SerialComm`, so the same function runs serially, under
``mpiexec``/``srun``, or inside a test with a hand-made communicator.

Example
-------
>>> import numpy as np
>>> from turbda_kit.parallel.mpi import SerialComm, parallel_mean_var
>>> count, mean, var = parallel_mean_var(np.arange(4.0), SerialComm())
>>> int(count), float(mean), float(var)
(4, 1.5, 1.25)
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import InputError
from ..optional import require
from ..provenance import process_world_size

__all__ = ["Moments", "NodeLayout", "SerialComm", "abort_on_exception", "block_range",
           "combine_moments", "first_ranks", "get_comm", "node_layout", "node_local_rank",
           "parallel_mean_var", "rank_size", "sleeping_barrier", "tree_reduce"]

T = TypeVar("T")

#: Seconds a failing rank waits between writing its traceback and ``Abort``. The launcher
#: (MPICH's hydra, Slurm) forwards each rank's stderr through a pipe; ``Abort`` makes it
#: kill every process, and on a loaded node it could do so before reading what the failing
#: rank had just written, so the user saw a non-zero exit and no reason (seen in CI).
ABORT_GRACE_SECONDS = 1.0


class SerialComm:
    """A one-process stand-in for an ``mpi4py`` communicator.

    Implements the subset the kit uses (``rank``, ``size``, ``Get_rank``, ``Get_size``,
    ``bcast``, ``gather``, ``allgather``, ``scatter``, ``reduce``, ``allreduce``,
    ``barrier``, ``Barrier``, ``Abort``) with the semantics of a communicator of size 1.
    """

    rank = 0
    size = 1

    def Get_rank(self) -> int:  # noqa: N802 - mirrors mpi4py
        """Rank of this process (always 0)."""
        return 0

    def Get_size(self) -> int:  # noqa: N802 - mirrors mpi4py
        """Number of processes (always 1)."""
        return 1

    def bcast(self, obj: T, root: int = 0) -> T:
        """Return ``obj`` (the root's object)."""
        return obj

    def gather(self, obj: T, root: int = 0) -> list[T]:
        """Return ``[obj]``."""
        return [obj]

    def allgather(self, obj: T) -> list[T]:
        """Return ``[obj]``."""
        return [obj]

    def scatter(self, objs: Sequence[T], root: int = 0) -> T:
        """Return ``objs[0]``."""
        return objs[0]

    def reduce(self, obj: T, op: Any = None, root: int = 0) -> T:
        """Return ``obj`` (the reduction of one value)."""
        return obj

    def allreduce(self, obj: T, op: Any = None) -> T:
        """Return ``obj`` (the reduction of one value)."""
        return obj

    def barrier(self) -> None:
        """Nothing to wait for."""

    Barrier = barrier

    def Abort(self, errorcode: int = 1) -> None:  # noqa: N802 - mirrors mpi4py
        """End the process at once with ``errorcode`` (as ``MPI_Abort`` would)."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(errorcode)


def _mpi_is_initialized() -> bool:
    """Whether mpi4py is imported and MPI_Init has already run in this process."""
    module = sys.modules.get("mpi4py.MPI")
    return module is not None and module.Is_initialized() and not module.Is_finalized()


def get_comm(comm: Any | None = None) -> Any:
    """The communicator to use: ``comm`` if given, else COMM_WORLD or a serial stand-in.

    Parameters
    ----------
    comm : mpi4py communicator, SerialComm or None
        Returned unchanged when not None.

    Returns
    -------
    communicator
        ``MPI.COMM_WORLD`` when the process was started by a parallel launcher (the
        environment says so: ``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``, ``SLURM_NTASKS``, ...)
        or MPI is already initialised; otherwise :class:`SerialComm`. A serial run never
        imports mpi4py, so it never calls ``MPI_Init``.
    """
    if comm is not None:
        return comm
    if _mpi_is_initialized() or process_world_size() > 1:
        MPI = require("mpi4py.MPI", "MPI runs")
        return MPI.COMM_WORLD
    return SerialComm()


def rank_size(comm: Any | None = None) -> tuple[int, int]:
    """``(rank, size)`` of ``comm`` (see :func:`get_comm` for ``None``)."""
    comm = get_comm(comm)
    return int(comm.Get_rank()), int(comm.Get_size())


@contextlib.contextmanager
def abort_on_exception(comm: Any | None = None, errorcode: int = 1) -> Iterator[Any]:
    """Abort the whole job when this rank raises, so the other ranks never hang.

    Without it, one rank raising while the others wait in a collective leaves the job
    hanging until the wall-clock limit. With more than one rank, the traceback is printed
    (prefixed with the rank) and ``comm.Abort(errorcode)`` ends every process; with one
    rank the exception propagates normally. The failing rank waits
    :data:`ABORT_GRACE_SECONDS` before aborting so that the launcher forwards its
    traceback before it kills the job.

    Parameters
    ----------
    comm : communicator or None
        See :func:`get_comm`.
    errorcode : int
        Exit status passed to ``Abort``.

    Yields
    ------
    communicator
        The resolved communicator.
    """
    comm = get_comm(comm)
    try:
        yield comm
    except Exception as err:
        if comm.Get_size() <= 1:
            raise
        rank = comm.Get_rank()
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in text.splitlines()))
        sys.stderr.write(f"[rank {rank}] aborting the MPI job (errorcode {errorcode})\n")
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_SECONDS)
        comm.Abort(errorcode)
        raise  # only reached with a stand-in whose Abort returns


def block_range(n_items: int, rank: int, size: int) -> range:
    """Contiguous block of ``range(n_items)`` owned by ``rank`` of ``size``.

    The first ``n_items % size`` ranks get one item more; ranks beyond ``n_items`` get
    an empty range. The blocks of all ranks tile ``range(n_items)`` in order.
    """
    if n_items < 0:
        raise InputError(f"n_items={n_items} must be >= 0")
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"rank={rank}, size={size}: need size >= 1 and 0 <= rank < size")
    base, extra = divmod(n_items, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (``m2``) of a sample, combinable exactly.

    Attributes
    ----------
    count : int
        Number of values reduced into each entry of ``mean``.
    mean : numpy.ndarray
        Mean, float64 (any shape: the shape left after reducing the sample axes).
    m2 : numpy.ndarray
        Sum of squared deviations from ``mean``, float64, same shape.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def from_array(cls, values: np.ndarray, axis: int | tuple[int, ...] | None = None
                   ) -> Moments:
        """Moments of ``values`` over ``axis`` (all axes when None), computed in float64."""
        data = np.asarray(values, dtype=np.float64)
        axes = tuple(range(data.ndim)) if axis is None else (
            (axis,) if isinstance(axis, int) else tuple(axis))
        count = int(np.prod([data.shape[a] for a in axes])) if axes else 1
        if count == 0:
            shape = tuple(s for i, s in enumerate(data.shape) if i not in
                          {a % data.ndim for a in axes})
            return cls(0, np.zeros(shape), np.zeros(shape))
        mean = data.mean(axis=axes, keepdims=True)
        m2 = np.square(data - mean).sum(axis=axes)
        return cls(count, np.squeeze(mean, axis=axes), m2)

    def combine(self, other: Moments) -> Moments:
        """Moments of the union of the two samples (Chan, Golub & LeVeque 1979)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + np.square(delta) * (self.count * other.count / count)
        return Moments(count, mean, m2)

    def variance(self, ddof: int = 0) -> np.ndarray:
        """Variance ``m2 / (count - ddof)`` (population variance by default, like np.var)."""
        if self.count - ddof <= 0:
            raise InputError(f"variance of {self.count} values with ddof={ddof} is undefined")
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 0) -> np.ndarray:
        """Standard deviation, ``sqrt(variance(ddof))``."""
        return np.sqrt(self.variance(ddof))


def combine_moments(parts: Sequence[Moments]) -> Moments:
    """Fold ``parts`` left to right with :meth:`Moments.combine` (order fixes the rounding)."""
    if not parts:
        raise InputError("combine_moments needs at least one Moments")
    total = parts[0]
    for part in parts[1:]:
        total = total.combine(part)
    return total


def parallel_mean_var(local_values: np.ndarray, comm: Any | None = None,
                      axis: int | tuple[int, ...] | None = None, ddof: int = 0
                      ) -> tuple[int, np.ndarray, np.ndarray]:
    """Mean and variance of data spread over ranks, as if concatenated along ``axis``.

    Parameters
    ----------
    local_values : numpy.ndarray
        This rank's values; the axes not in ``axis`` must have the same shape on all
        ranks. A rank may hold zero values along the reduced axes.
    comm : communicator or None
        See :func:`get_comm`.
    axis : int, tuple of int or None
        Sample axes reduced over (all when None).
    ddof : int
        Delta degrees of freedom of the variance (0: population, like ``np.var``).

    Returns
    -------
    count : int
        Total number of values per output entry.
    mean, variance : numpy.ndarray
        float64, identical on every rank (the per-rank moments are gathered and folded
        in rank order).
    """
    comm = get_comm(comm)
    parts = comm.allgather(Moments.from_array(local_values, axis))
    total = combine_moments(parts)
    return total.count, total.mean, total.variance(ddof)


def tree_reduce(n_items: int, leaf: Callable[[int], T], combine: Callable[[T, T], T],
                comm: Any | None = None, owned: range | None = None) -> T:
    """Reduce ``leaf(0) ⊕ ... ⊕ leaf(n_items-1)`` over ranks, bit-identical for any rank count.

    The combination follows one fixed binary tree over the item indices (split at the
    midpoint). Each rank evaluates the largest subtrees lying inside its own items,
    rank 0 completes the tree from the gathered subtrees, and the result is broadcast.
    A serial run evaluates the same tree, so floating-point rounding — and therefore
    every bit of the result — does not depend on how items were distributed.

    Parameters
    ----------
    n_items : int
        Number of items (>= 1).
    leaf : callable
        ``leaf(i)`` computes item ``i``'s partial result; called once per owned item,
        in increasing ``i``.
    combine : callable
        Associative combination of two partial results (left, right).
    comm : communicator or None
        See :func:`get_comm`.
    owned : range or None
        This rank's contiguous items; default :func:`block_range`. The ranges of all
        ranks must tile ``range(n_items)``.

    Returns
    -------
    The reduction, on every rank.

    Notes
    -----
    Memory per rank is O(log n_items) partial results, on rank 0 O(size · log n_items).
    """
    comm = get_comm(comm)
    rank, size = int(comm.Get_rank()), int(comm.Get_size())
    if n_items < 1:
        raise InputError(f"tree_reduce needs n_items >= 1, got {n_items}")
    if owned is None:
        owned = block_range(n_items, rank, size)
    if owned.step != 1 or owned.start < 0 or owned.stop > n_items:
        raise InputError(f"owned={owned} must be a contiguous range inside range({n_items})")
    lo_own, hi_own = owned.start, max(owned.start, owned.stop)

    def full(lo: int, hi: int) -> T:
        if hi - lo == 1:
            return leaf(lo)
        mid = (lo + hi) // 2
        return combine(full(lo, mid), full(mid, hi))

    subtrees: dict[tuple[int, int], T] = {}

    def visit(lo: int, hi: int) -> None:
        if hi <= lo_own or lo >= hi_own:
            return
        if lo_own <= lo and hi <= hi_own:
            subtrees[(lo, hi)] = full(lo, hi)
            return
        mid = (lo + hi) // 2
        visit(lo, mid)
        visit(mid, hi)

    visit(0, n_items)
    if size == 1:
        result = subtrees.get((0, n_items))
        if result is None:
            raise InputError(f"owned={owned} does not cover range({n_items}) on a single rank")
        return result
    gathered = comm.gather(subtrees, root=0)
    error: str | None = None
    result = None
    if rank == 0:
        table: dict[tuple[int, int], T] = {}
        for part in gathered:
            table.update(part)

        def assemble(lo: int, hi: int) -> T:
            if (lo, hi) in table:
                return table[(lo, hi)]
            if hi - lo == 1:
                raise KeyError(lo)
            mid = (lo + hi) // 2
            return combine(assemble(lo, mid), assemble(mid, hi))

        try:
            result = assemble(0, n_items)
        except KeyError as missing:
            error = (f"item {missing.args[0]} of range({n_items}) is owned by no rank: the "
                     "'owned' ranges must tile the items")
    error, result = comm.bcast((error, result), root=0)
    if error is not None:
        raise InputError(error)
    return result


# ---------------------------------------------------------------------------------------
# Sub-communicators, waiting without spinning, where the ranks sit


def sleeping_barrier(comm: Any | None, poll_seconds: float = 0.002) -> None:
    """A barrier whose waiting ranks sleep between polls instead of spinning.

    MPICH's blocking barrier busy-waits, which on a node with as many ranks as cores
    steals CPU from the ranks still working (e.g. the ones being timed).

    Parameters
    ----------
    comm : communicator or None
        ``None`` or a one-process communicator: returns at once. A communicator without
        ``Ibarrier`` (a hand-made stand-in) falls back to its ``barrier``.
    poll_seconds : float
        Sleep between two tests of the pending barrier.
    """
    if comm is None or comm.Get_size() == 1:
        return
    if not hasattr(comm, "Ibarrier"):
        comm.barrier()
        return
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll_seconds)


@contextlib.contextmanager
def first_ranks(comm: Any, p: int) -> Iterator[Any | None]:
    """Communicator of ranks ``0 .. p-1`` of ``comm`` (``None`` on the others); freed on exit.

    Collective over ``comm``. With a one-process communicator and ``p = 1``, ``comm``
    itself is yielded.

    Raises
    ------
    InputError
        Unless ``1 <= p <= comm.Get_size()``.
    """
    size = comm.Get_size()
    if not 1 <= p <= size:
        raise InputError(f"p={p}: need 1 <= p <= {size} (the communicator's size)")
    if size == 1:
        yield comm
        return
    MPI = require("mpi4py.MPI", "MPI runs")
    rank = comm.Get_rank()
    sub = comm.Split(0 if rank < p else MPI.UNDEFINED, rank)
    try:
        yield None if sub == MPI.COMM_NULL else sub
    finally:
        if sub != MPI.COMM_NULL:
            sub.Free()


def _cpu_affinity() -> set[int]:
    """CPUs this process may run on (all CPUs where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class NodeLayout:
    """Where a rank sits: its node-local rank, its node's ranks and the CPUs they may use.

    Attributes
    ----------
    local_rank : int
        Rank among the ranks of the communicator on the same node.
    local_ranks : int
        Ranks of the communicator on this node.
    node_cpus : int
        CPUs the ranks of this node may run on together (the union of their affinity
        masks: the whole node for an unbound ``mpiexec``, the bound cores under
        ``srun --cpu-bind``).
    """

    local_rank: int
    local_ranks: int
    node_cpus: int

    @property
    def cpus_per_rank(self) -> float:
        """CPUs each rank of this node can have without sharing: ``node_cpus / local_ranks``
        (below 1 when the node runs more ranks than it has CPUs)."""
        return self.node_cpus / self.local_ranks


def node_layout(comm: Any | None) -> NodeLayout:
    """The :class:`NodeLayout` of this rank in ``comm`` (collective over ``comm``).

    With ``None``, a one-process communicator or one without ``Split_type``, the process
    is alone on its node.
    """
    cpus = _cpu_affinity()
    if comm is None or comm.Get_size() == 1 or not hasattr(comm, "Split_type"):
        return NodeLayout(0, 1, len(cpus))
    MPI = require("mpi4py.MPI", "MPI runs")
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        masks = local.allgather(sorted(cpus))
        return NodeLayout(int(local.Get_rank()), int(local.Get_size()),
                          len(set().union(*map(set, masks))))
    finally:
        local.Free()


def node_local_rank(comm: Any | None) -> int:
    """Rank of this process among the ranks of ``comm`` on the same node (0 when serial).

    Collective over ``comm`` (see :func:`node_layout`).
    """
    return node_layout(comm).local_rank
