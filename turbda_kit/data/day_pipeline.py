"""One rank's days through read → write ‖ statistics, with the next day read ahead.

Preprocessing a day means reading it, writing its shards and reducing it to statistics.
On a node's page cache those cost about 0.06, 0.15 and 0.22 CPU-seconds per GB. Done in
turn they take three times a file copy; spread over threads they overlap: the caller's
thread reads day k+1 while a small pool writes day k and computes its statistics in
blocks of grid rows. numpy's loops, the CRC and file writes release the GIL, so the
threads use separate cores.

The results do not depend on the threads: every grid point's moments are summed over
time in order whatever block computes them (:func:`~turbda_kit.data.day_statistics.field_moments`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .day_statistics import DayStatistics, field_moments

__all__ = ["DayPipeline", "StageClock", "row_blocks"]

Key = tuple[str, int]  # (split, day)


class StageClock:
    """Seconds per named stage, summed over threads (so stages may overlap)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time the ``with`` block and add it to ``stage``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed


def row_blocks(n_vars: int, ny: int, n_pieces: int) -> list[tuple[int, slice]]:
    """Cut ``(vars, ny)`` into at least ``n_pieces`` (variable, row range) blocks.

    Parameters
    ----------
    n_vars, ny : int
        Number of variables and of grid rows.
    n_pieces : int
        Wanted number of blocks (more when ``n_vars`` exceeds it; fewer rows than
        wanted per variable give one row each).

    Returns
    -------
    list of (int, slice)
        Variable index and row slice, covering every (variable, row) exactly once.
    """
    per_var = max(1, min(ny, -(-n_pieces // n_vars)))
    edges = np.linspace(0, ny, per_var + 1).round().astype(int)
    return [(v, slice(int(a), int(b))) for v in range(n_vars)
            for a, b in zip(edges[:-1], edges[1:]) if b > a]


@dataclass
class _Day:
    key: Key
    data: np.ndarray
    fresh: bool  # read from the source, so its shards must be written
    field_mean: np.ndarray | None = None
    field_m2: np.ndarray | None = None
    futures: list[Future] = field(default_factory=list)

    def wait(self) -> None:
        """Block until every task on this day has ended (errors are kept, not raised)."""
        for future in self.futures:
            future.exception()


class DayPipeline:
    """Statistics of each day in ``order``, with writes and the next read overlapped.

    Parameters
    ----------
    order : sequence of (split, day)
        The days in the order :meth:`statistics` will be asked for them.
    load : callable
        ``load(split, day, buffer) -> (data, fresh)``: the day's data
        ``(time, vars, ny, nx)``, read into ``buffer`` (or another array, e.g. from
        existing shards), and whether its shards still have to be written.
    write_tasks : callable
        ``write_tasks(split, day, data)`` -> list of callables that together write the
        day's shards (e.g. one per shard), run by the pool in any order.
    with_spread : callable
        ``with_spread(split) -> bool``: whether the split's statistics need the spread
        (see :class:`~turbda_kit.data.day_statistics.DayStatistics`).
    buffer_shape : tuple of int
        ``(time, vars, ny, nx)`` of a day.
    dtype : numpy dtype
        Of the day buffers.
    clock : StageClock
        Receives "read", "write" and "statistics" seconds.
    workers : int
        Threads that write and reduce (the caller's thread reads).

    Notes
    -----
    Two day buffers: day k+1 is read into one while day k's work uses the other, and a
    buffer is refilled only after all work on its day has finished. A day's statistics
    start as soon as it is read (they have no side effects); its shards are written only
    when its statistics are asked for, so nothing of day k+1 is written before day k's
    statistics have been returned and a crash leaves whole days behind.
    """

    def __init__(self, order: Sequence[Key], load: Callable, write_tasks: Callable,
                 with_spread: Callable[[str], bool], buffer_shape: tuple[int, ...],
                 dtype: np.dtype | str, clock: StageClock, workers: int = 2):
        self.order = list(order)
        self._position = {key: i for i, key in enumerate(self.order)}
        self._load, self._write_tasks, self._with_spread = load, write_tasks, with_spread
        self._shape, self._dtype = tuple(buffer_shape), np.dtype(dtype)
        self._clock = clock
        self._buffers: list[np.ndarray] = []
        self._next_buffer = 0
        self._ahead: _Day | None = None
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(workers)),
                                        thread_name_prefix="turbda-day")
        self._pieces = max(1, int(workers)) * 2

    def _buffer(self) -> np.ndarray:
        # Allocated on first use: a fully resumed rank never reads into one.
        if len(self._buffers) < 2:
            self._buffers.append(np.empty(self._shape, dtype=self._dtype))
            return self._buffers[-1]
        buffer = self._buffers[self._next_buffer]
        self._next_buffer = 1 - self._next_buffer
        return buffer

    def _timed(self, stage: str, func: Callable, *args) -> None:
        with self._clock(stage):
            func(*args)

    def _moments(self, data: np.ndarray, mean_out: np.ndarray,
                 m2_out: np.ndarray | None) -> None:
        # One float64 work space per thread, kept: a fresh one per block would be paid
        # again in page faults every time.
        scratch = getattr(self._local, "scratch", None)
        if scratch is None or scratch.size < data.size:
            scratch = self._local.scratch = np.empty(data.size)
        with self._clock("statistics"):
            field_moments(data, mean_out, m2_out, scratch)

    def _read(self, key: Key) -> _Day:
        """Read a day and start its statistics (which have no side effects)."""
        with self._clock("read"):
            data, fresh = self._load(key[0], key[1], self._buffer())
        day = _Day(key, data, bool(fresh), np.empty(data.shape[1:]),
                   np.empty(data.shape[1:]) if self._with_spread(key[0]) else None)
        for v, rows in row_blocks(data.shape[1], data.shape[2], self._pieces):
            day.futures.append(self._pool.submit(
                self._moments, data[:, v, rows], day.field_mean[v, rows],
                None if day.field_m2 is None else day.field_m2[v, rows]))
        return day

    def statistics(self, split: str, day: int) -> DayStatistics:
        """The statistics of one day; its shards are written when this returns.

        Parameters
        ----------
        split : str
        day : int
            Must be the next day of ``order`` for the read-ahead to apply (any other day
            is read on the spot).

        Notes
        -----
        While the pool writes this day and finishes its statistics, the caller's thread
        reads the next day and queues that day's statistics behind this day's work, so
        the pool never idles at the end of a day. The next day's shards are written only
        when its own statistics are asked for.
        """
        key = (split, day)
        current, self._ahead = self._ahead, None
        if current is not None and current.key != key:
            current.wait()  # its buffer is reused below
            current = None
        if current is None:
            current = self._read(key)
        if current.fresh:
            current.futures += [self._pool.submit(self._timed, "write", task)
                                for task in self._write_tasks(split, day, current.data)]
        try:
            position = self._position.get(key)
            if position is not None and position + 1 < len(self.order):
                self._ahead = self._read(self.order[position + 1])
        finally:
            current.wait()  # every task ends before its buffer is reused or an error leaves
        for future in current.futures:
            future.result()  # re-raises the first failure
        return DayStatistics.from_fields(current.data.shape[0], current.field_mean,
                                         current.field_m2)

    def close(self) -> None:
        """Finish running work and stop the threads (queued work is dropped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DayPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
