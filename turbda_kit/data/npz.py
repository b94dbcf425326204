"""Writing ``.npz`` archives at the speed of the disk, and reading them with clear errors.

An ``.npz`` file is a zip archive with one stored (uncompressed) member ``{name}.npy`` per
array. :func:`save_npz` writes the same members as :func:`numpy.savez`, byte for byte, but
streams the caller's arrays straight to the file and takes the zip CRC-32 from zlib-ng
when it is installed: zlib's CRC costs about 0.14 s per GB on the development machine,
zlib-ng's (vectorised with carry-less multiplication) 0.03 s. :mod:`zipfile` takes its
CRC from zlib and offers no way to pass another, so the container is written here. It is
the plain zip64 layout of PKWARE's APPNOTE (section 4.3): for each member a local header,
the data; then the central directory and the zip64 end records. Any zip reader reads it.

The archive carries a fixed timestamp (1980-01-01), so the same arrays always give the
same bytes: runs can be compared file by file.

:func:`read_npz` and :func:`npz_member_shape` read shards, statistics and climatologies
(the kit's or a published ClimaX set's) without pickles, and turn a truncated or garbled
archive into an :class:`~turbda_kit.errors.InputError` naming the file, what it should
be and how to fix it.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import atomic_path
from .validation import unreadable_file

try:  # pragma: no branch - which one depends on the environment
    from zlib_ng.zlib_ng import crc32 as _crc32

    CRC_SOURCE = "zlib-ng"
except ImportError:  # pragma: no cover - zlib-ng is a declared dependency
    from zlib import crc32 as _crc32

    CRC_SOURCE = "zlib"

__all__ = ["CRC_SOURCE", "crc32", "npz_member_shape", "npz_members", "read_npz", "save_npy",
           "save_npz"]

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_LOCAL_EXTRA = struct.Struct("<HHQQ")
_ZIP64_CENTRAL_EXTRA = struct.Struct("<HHQQQ")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")

_VERSION = 45  # 4.5: zip64
_MADE_BY = (3 << 8) | _VERSION  # 3: Unix, so the external attributes are permission bits
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the earliest date the format holds
_DOS_TIME = 0
_UTF8_NAME = 0x800
_FILE_MODE = 0o100644 << 16  # regular file, rw-r--r--
_MASK32 = 0xFFFFFFFF


def crc32(data: bytes | memoryview | np.ndarray, value: int = 0) -> int:
    """CRC-32 (the zip/zlib polynomial) of ``data``, continuing from ``value``.

    Parameters
    ----------
    data : bytes-like
        Any C-contiguous buffer.
    value : int
        The CRC of the bytes before ``data`` (0 to start).

    Returns
    -------
    int
        The unsigned 32-bit CRC, as :func:`zlib.crc32` gives it.
    """
    return _crc32(data, value)


def _blocks(array: np.ndarray) -> Iterator[np.ndarray]:
    """Contiguous pieces of ``array`` that, in order, are its bytes in C order."""
    if array.flags.c_contiguous:
        if array.size:
            yield array.reshape(-1)
    elif array.ndim > 1 and array[0].flags.c_contiguous and array[0].nbytes >= 1 << 16:
        yield from (piece.reshape(-1) for piece in array)  # e.g. one field per output time
    else:
        yield np.ascontiguousarray(array).reshape(-1)


def _npy_header(array: np.ndarray) -> bytes:
    header = np.lib.format.header_data_from_array_1_0(array)
    header["fortran_order"] = False  # the data is always written in C order
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz``, atomically.

    Parameters
    ----------
    path : path-like
        Destination; written under a temporary name and moved into place when complete.
    arrays : mapping of str to numpy.ndarray
        Member name (without ``.npy``) to array, any shape, layout and plain dtype. The
        arrays are written in C order without a staging copy when they are C-contiguous,
        or when each index of their first axis is.

    Raises
    ------
    InputError
        An array of object dtype (which ``.npz`` can only hold pickled), or an empty name.

    Notes
    -----
    ``numpy.load`` reads the result; each member equals ``np.savez``'s byte for byte
    (format 1.0 ``.npy`` header, then the data).
    """
    members = []
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise InputError(f"array {name!r} has dtype {array.dtype}: only plain numeric "
                             "arrays are written")
        if not name:
            raise InputError("an array name must not be empty")
        members.append((f"{name}.npy".encode(), array))

    entries = []  # (name, flags, crc, size, offset) for the central directory
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        offset = 0
        for name, array in members:
            header = _npy_header(array)
            blocks = list(_blocks(array))
            # The CRC goes in the local header, ahead of the data: one pass to compute it
            # (from the cache when the blocks are small), one to write.
            crc = crc32(header)
            for block in blocks:
                crc = crc32(block, crc)
            size = len(header) + array.nbytes
            flags = 0 if name.isascii() else _UTF8_NAME
            extra = _ZIP64_LOCAL_EXTRA.pack(0x0001, 16, size, size)
            handle.write(_LOCAL_HEADER.pack(0x04034B50, _VERSION, flags, 0, _DOS_TIME,
                                            _DOS_DATE, crc, _MASK32, _MASK32, len(name),
                                            len(extra)))
            handle.write(name)
            handle.write(extra)
            handle.write(header)
            for block in blocks:
                handle.write(block)
            entries.append((name, flags, crc, size, offset))
            offset += _LOCAL_HEADER.size + len(name) + len(extra) + size

        directory_offset = offset
        for name, flags, crc, size, member_offset in entries:
            extra = _ZIP64_CENTRAL_EXTRA.pack(0x0001, 24, size, size, member_offset)
            handle.write(_CENTRAL_HEADER.pack(0x02014B50, _MADE_BY, _VERSION, flags, 0,
                                              _DOS_TIME, _DOS_DATE, crc, _MASK32, _MASK32,
                                              len(name), len(extra), 0, 0, 0, _FILE_MODE,
                                              _MASK32))
            handle.write(name)
            handle.write(extra)
            offset += _CENTRAL_HEADER.size + len(name) + len(extra)
        directory_size = offset - directory_offset
        count = len(entries)
        if count:  # numpy recognises an empty archive only by its plain end record
            handle.write(_ZIP64_END.pack(0x06064B50, _ZIP64_END.size - 12, _MADE_BY,
                                         _VERSION, 0, 0, count, count, directory_size,
                                         directory_offset))
            handle.write(_ZIP64_LOCATOR.pack(0x07064B50, 0, offset, 1))
        handle.write(_END.pack(0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                               min(directory_size, _MASK32), min(directory_offset, _MASK32),
                               0))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as ``.npy`` (what :func:`numpy.save` writes), atomically."""
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)  # a real file: numpy writes the buffer with one tofile


def _require_file(path: Path, expected: str, fix: str) -> None:
    if not path.is_file():
        raise InputError(f"{path} is missing: expected {expected} there. To fix: {fix}")


def read_npz(path: str | os.PathLike, names: Sequence[str] | None = None, *,
             expected: str = "an .npz archive of arrays",
             fix: str = "write or copy the file again") -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read in full (so every member's CRC is checked).

    Parameters
    ----------
    path : path-like
        The archive.
    names : sequence of str or None
        Members to read (default all), in this order.
    expected : str
        What the file should be, for the error message.
    fix : str
        How to repair it, for the error message.

    Returns
    -------
    dict of str to numpy.ndarray

    Raises
    ------
    InputError
        The file is missing, is not a readable archive of plain arrays (truncated,
        garbled, a pickle, a lone ``.npy``), or lacks one of ``names``.
    """
    path = Path(path)
    _require_file(path, expected, fix)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):  # pragma: no cover - np.load
                raise ValueError("a single .npy array, not an .npz archive")
            wanted = list(archive.files if names is None else names)
            missing = [name for name in wanted if name not in archive.files]
            if missing:
                raise InputError(f"{path} lacks {missing}: it holds {archive.files}; expected "
                                 f"{expected}. To fix: {fix}")
            return {name: archive[name] for name in wanted}
    except InputError:
        raise
    except Exception as err:  # zipfile, numpy and the OS raise many unrelated types
        raise unreadable_file(path, expected, fix, err) from err


def npz_member_shape(path: str | os.PathLike, name: str, *,
                     expected: str = "an .npz archive of arrays",
                     fix: str = "write or copy the file again") -> tuple[int, ...]:
    """Shape of member ``name`` of an ``.npz`` file, from its ``.npy`` header only.

    Parameters
    ----------
    path : path-like
    name : str
        Member name without ``.npy``.
    expected, fix : str
        For the error message, as in :func:`read_npz`.

    Raises
    ------
    InputError
        As :func:`read_npz`.
    """
    path = Path(path)
    _require_file(path, expected, fix)
    try:
        with zipfile.ZipFile(path) as archive:
            if f"{name}.npy" not in archive.namelist():
                raise InputError(f"{path} lacks {name!r}: it holds "
                                 f"{[n.removesuffix('.npy') for n in archive.namelist()]}; "
                                 f"expected {expected}. To fix: {fix}")
            with archive.open(f"{name}.npy") as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, _ = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, _ = np.lib.format.read_array_header_2_0(member)
        return tuple(shape)
    except InputError:
        raise
    except Exception as err:  # zipfile and numpy raise many unrelated types
        raise unreadable_file(path, expected, fix, err) from err


def npz_members(path: str | os.PathLike, *, expected: str = "an .npz archive of arrays",
                fix: str = "write or copy the file again") -> list[str]:
    """Names of the arrays of an ``.npz`` file (from its zip directory only).

    Raises
    ------
    InputError
        As :func:`read_npz`.
    """
    path = Path(path)
    _require_file(path, expected, fix)
    try:
        with zipfile.ZipFile(path) as archive:
            return [n.removesuffix(".npy") for n in archive.namelist()]
    except Exception as err:  # zipfile raises many unrelated types
        raise unreadable_file(path, expected, fix, err) from err
