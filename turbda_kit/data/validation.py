"""Input checks of the data layer, and one wording for files it cannot read.

:func:`unreadable_file` words the error for a file that exists but cannot be read: which
file, what it should be, the fix.

Truncated copies, half-written files from an older tool, a manifest edited by hand: each
reader turns the library's own exception (``BadZipFile``, ``OSError: NetCDF: HDF error``,
``JSONDecodeError``, ...) into an :class:`~turbda_kit.errors.InputError` built here, so
the message always names the file, what the kit expected it to be, and what to do, as the
nature-run resume does for its checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["check_positive_int", "unreadable_file"]


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int, or InputError naming ``name`` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}={value!r} must be an integer >= 1")
    return int(value)


def unreadable_file(path: str | os.PathLike, expected: str, fix: str,
                    cause: BaseException | None = None) -> InputError:
    """The error for a file that exists but cannot be read as what it should be.

    Parameters
    ----------
    path : path-like
        The file (or store).
    expected : str
        What it should be, e.g. ``"a nature run (netCDF-4 with theta (time, z, y, x))"``.
    fix : str
        What to do, e.g. ``"run preprocess again into the same root"``.
    cause : exception or None
        The reader's own error, quoted in the message.

    Returns
    -------
    InputError
        To be raised ``from cause``.
    """
    reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return InputError(f"{os.fspath(path)} cannot be read as {expected}{reason}: it may be "
                      f"truncated or damaged, or be another kind of file. To fix: {fix}")
