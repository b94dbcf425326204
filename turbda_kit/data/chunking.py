"""Stage 1 of preprocessing: the nature run cut into raw chunk files, and read back.

With ``via_chunks=True`` (the paper's two-stage pipeline), :func:`split_nature_run`
writes chunks of ``steps_per_file`` consecutive output times, each rank a contiguous
range of them::

    {root}/chunks/chunk_NNNNN.npy    (time, z, y, x), every source level, source dtype
    {root}/chunks/chunk_NNNNN.json   source fingerprint, index, times, shape, dtype

The metadata is written after the data, so it marks a chunk finished; a chunk is skipped
on a rerun only after :func:`chunk_is_valid` has checked both. :class:`ChunkReader`
reads blocks of output times back from the chunks, as
:class:`~turbda_kit.data.readers.NatureRunReader` reads them from the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import write_json
from ..parallel.mpi import block_range, get_comm
from ..progress import progress_bar
from .npz import save_npy
from .readers import NatureRunInfo, NatureRunReader, inspect_nature_run
from .validation import check_positive_int

__all__ = ["CHUNK_DIR", "ChunkReader", "chunk_bounds", "chunk_is_valid", "chunk_meta_path",
           "chunk_path", "split_nature_run"]

CHUNK_DIR = "chunks"
Hook = Callable[[str, int], None]


def chunk_path(root: str | os.PathLike, index: int) -> Path:
    """Path of chunk ``index``'s data, ``{root}/chunks/chunk_NNNNN.npy``.

    The data is a raw ``.npy`` array ``(time, z, y, x)`` of the source dtype with every
    source level; its identity (source fingerprint, index, times, shape) is in
    :func:`chunk_meta_path`, written after the data.
    """
    return Path(root) / CHUNK_DIR / f"chunk_{index:05d}.npy"


def chunk_meta_path(root: str | os.PathLike, index: int) -> Path:
    """Path of chunk ``index``'s metadata, ``{root}/chunks/chunk_NNNNN.json``."""
    return Path(root) / CHUNK_DIR / f"chunk_{index:05d}.json"


def chunk_bounds(index: int, steps_per_file: int, n_times: int) -> tuple[int, int]:
    """Source time indices ``[start, stop)`` of chunk ``index``."""
    start = index * steps_per_file
    return start, min(start + steps_per_file, n_times)


def _chunk_meta(info: NatureRunInfo, index: int, steps_per_file: int) -> dict[str, Any]:
    start, stop = chunk_bounds(index, steps_per_file, info.n_times)
    meta = {"source_fingerprint": info.fingerprint, "chunk_index": index, "start": start,
            "stop": stop, "time_seconds": list(info.time_seconds[start:stop]),
            "shape": [stop - start, info.n_levels_source, *info.grid_shape],
            "dtype": info.dtype}
    return json.loads(json.dumps(meta))  # the form it takes on disk


def _npy_layout(handle: Any) -> tuple[int, tuple[int, ...], np.dtype]:
    """``(data offset in bytes, shape, dtype)`` of the C-order ``.npy`` file ``handle``."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f".npy format version {version} is not written by this module")
    if fortran:
        raise ValueError("Fortran-order .npy is not written by this module")
    return handle.tell(), tuple(shape), dtype


def chunk_is_valid(path: str | os.PathLike, info: NatureRunInfo, index: int,
                   steps_per_file: int) -> bool:
    """Whether chunk ``index`` at ``path`` (its ``.npy``) is complete and from this nature run.

    The metadata beside it must name this run's fingerprint, the chunk index, and the
    expected times, shape and dtype; the ``.npy`` header must agree and the file must hold
    exactly that many bytes (a truncated or foreign file is rewritten).
    """
    p = Path(path)
    meta_path = p.with_suffix(".json")
    if not (p.is_file() and meta_path.is_file()):
        return False
    try:
        expected = _chunk_meta(info, index, steps_per_file)
        if json.loads(meta_path.read_text()) != expected:
            return False
        with open(p, "rb") as handle:
            offset, shape, dtype = _npy_layout(handle)
        return (list(shape) == expected["shape"] and dtype == np.dtype(info.dtype)
                and p.stat().st_size == offset + int(np.prod(shape)) * dtype.itemsize)
    except Exception:  # unreadable or foreign file: rewrite it
        return False


def split_nature_run(nature_path: str | os.PathLike, root: str | os.PathLike,
                     steps_per_file: int, chunks: Sequence[int] | None = None,
                     comm: Any | None = None, info: NatureRunInfo | None = None,
                     hook: Hook | None = None) -> dict[str, int]:
    """Stage 1: write chunks of ``steps_per_file`` times, a contiguous range per rank.

    Parameters
    ----------
    nature_path : path-like
        The nature run.
    root : path-like
        Output root; chunks go to ``{root}/chunks/chunk_NNNNN.npy`` (raw ``(time, z, y,
        x)`` arrays, every source level) with ``chunk_NNNNN.json`` beside each.
    steps_per_file : int
        Output times per chunk (>= 1); the last chunk may be shorter.
    chunks : sequence of int or None
        Chunk indices to produce (default: all).
    comm : communicator or None
        See :func:`turbda_kit.parallel.mpi.get_comm`.
    info : NatureRunInfo or None
        From :func:`inspect_nature_run` (computed when None).
    hook : callable or None
        ``hook("chunk", index)`` after each chunk written (progress, fault injection).

    Returns
    -------
    dict
        ``{"written": n, "skipped": n}`` summed over ranks. Chunks already present and
        valid (:func:`chunk_is_valid`) are skipped.
    """
    comm = get_comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    check_positive_int("steps_per_file", steps_per_file)
    if info is None:
        info = inspect_nature_run(nature_path)
    n_chunks = -(-info.n_times // steps_per_file)
    wanted = list(range(n_chunks)) if chunks is None else [int(c) for c in chunks]
    mine = [wanted[i] for i in block_range(len(wanted), rank, size)]
    written = skipped = 0
    bar = progress_bar(len(mine), desc=f"split (rank 0 of {size})", enabled=rank == 0)
    source = NatureRunReader(nature_path, info, level_index=range(info.n_levels_source))
    try:
        for index in mine:
            path = chunk_path(root, index)
            if chunk_is_valid(path, info, index, steps_per_file):
                skipped += 1
            else:
                start, stop = chunk_bounds(index, steps_per_file, info.n_times)
                # Data first, metadata last: metadata marks a chunk finished.
                save_npy(path, source.read(start, stop))
                write_json(chunk_meta_path(root, index),
                           _chunk_meta(info, index, steps_per_file))
                written += 1
                if hook is not None:
                    hook("chunk", index)
            bar.update(1)
    finally:
        bar.close()
        source.close()
    return {"written": int(comm.allreduce(written)), "skipped": int(comm.allreduce(skipped))}


class ChunkReader:
    """Reads blocks of output times from stage-1 chunks, at the selected levels.

    Only the rows asked for are read (``readinto`` at the ``.npy`` data offset), straight
    into the result.
    """

    def __init__(self, root: str | os.PathLike, info: NatureRunInfo, steps_per_file: int):
        self.root, self.info, self.steps_per_file = Path(root), info, steps_per_file

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Times ``[start, stop)`` at the selected levels: ``(time, level, ny, nx)``.

        ``out``: as for :meth:`NatureRunReader.read`.
        """
        info = self.info
        every_level = list(info.level_index) == list(range(info.n_levels_source))
        shape = (stop - start, len(info.level_index), *info.grid_shape)
        if out is not None and (out.shape != shape or out.dtype != np.dtype(info.dtype)
                                or not out.flags.c_contiguous):
            raise InputError(f"out has shape {out.shape}, dtype {out.dtype}: need a "
                             f"C-contiguous {shape} {info.dtype} array")
        rows = out if out is not None and every_level else np.empty(
            (stop - start, info.n_levels_source, *info.grid_shape), dtype=info.dtype)
        row_bytes = rows[0].nbytes
        buffer = memoryview(rows).cast("B")
        filled, index = 0, start // self.steps_per_file
        while start < stop:
            c_start, c_stop = chunk_bounds(index, self.steps_per_file, info.n_times)
            take = min(stop, c_stop)
            path = chunk_path(self.root, index)
            with open(path, "rb", buffering=0) as handle:
                offset, _, _ = _npy_layout(handle)
                handle.seek(offset + (start - c_start) * row_bytes)
                end = filled + (take - start) * row_bytes
                while filled < end:
                    got = handle.readinto(buffer[filled:end])
                    if not got:
                        raise InputError(f"chunk {path} ended early: remove it and run again")
                    filled += got
            start, index = take, index + 1
        if every_level:
            return rows
        if out is None:
            return np.ascontiguousarray(rows[:, list(info.level_index)])
        np.take(rows, list(info.level_index), axis=1, out=out)
        return out

    def close(self) -> None:
        """Nothing held open."""
