"""Reading checkpoint and export files without running anything stored in them.

A pickle can name any importable callable and have the unpickler call it, so loading an
untrusted pickle runs whatever its author chose. Training checkpoints live on shared
scratch file systems and notebook 03 resumes from them automatically, so every file the
kit reads back is parsed by a restricted unpickler that builds only plain data:

* :func:`torch_load_restricted` — :func:`torch.load` with ``weights_only=True`` (tensors,
  containers, numbers, strings) plus a short, named allow-list of plain-data classes;
* :func:`read_dcp_metadata` — the ``.metadata`` file of ``torch.distributed.checkpoint``
  (a pickle of DCP's own dataclasses) through an unpickler that resolves only
  :data:`DCP_METADATA_GLOBALS`;
* :func:`weights_only_forced` — a context in which every :func:`torch.load`, also one
  inside a library that asks for ``weights_only=False`` (DeepSpeed, DCP's non-tensor
  items), is forced to ``weights_only=True``.

Whatever is refused raises :class:`~turbda_kit.errors.InputError` naming the file; a
refusal is raised before the offending object is built, so nothing in the file runs.
The messages never suggest ``weights_only=False``: that is exactly what runs the payload.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import threading
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

__all__ = ["torch_load_restricted", "read_dcp_metadata", "weights_only_forced",
           "DCP_METADATA_GLOBALS", "describe_refusal", "is_refusal", "refusal_error",
           "failure_reason"]

DCP_METADATA_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
})
"""What a DCP ``.metadata`` pickle may name besides torch dtypes: DCP's metadata
dataclasses and enum, ``torch.Size``, the layout lookup, paths and ``OrderedDict``. None
of them runs anything when built (constructors that store their arguments, an enum and a
dictionary lookup)."""

# Phrases of torch's weights-only unpickler that mean "an object outside the allow-list".
_REFUSED_GLOBAL = re.compile(r"(?:GLOBAL|global) (\S+?)(?: was not an allowed global|"
                             r" is not allowed|,| whose module)")
_REFUSAL_MARKERS = ("was not an allowed global", "is not allowed", "whose module",
                    "Unsupported global", "Unsupported class")

# Nesting-safe state of weights_only_forced (the switch is an environment variable).
_FORCE_VARIABLE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_LOCK = threading.Lock()
_FORCE_DEPTH = 0
_FORCE_PREVIOUS: str | None = None


def is_refusal(error: BaseException) -> bool:
    """Whether an unpickling error means "refused an object", not "unreadable bytes"."""
    return isinstance(error, pickle.UnpicklingError) and any(
        marker in str(error) for marker in _REFUSAL_MARKERS)


def describe_refusal(error: BaseException) -> str:
    """The refused global named in an unpickling error, e.g. ``"posix.system"``."""
    found = _REFUSED_GLOBAL.search(str(error))
    return found.group(1).rstrip(".,") if found else "an object outside the allow-list"


def refusal_error(path: Path, what: str, error: BaseException, may_hold: str, fix: str
                  ) -> InputError:
    """The InputError for a file holding an object outside the allow-list."""
    return InputError(
        f"{what} {path} holds {describe_refusal(error)}, which a {what} may not contain "
        f"({may_hold}): it was refused before anything in it was built, so nothing in it "
        f"ran. Do not load this file by other means; {fix}")


def failure_reason(error: BaseException) -> str:
    """One line saying why reading failed, without torch's advice to unlock the loader."""
    text = str(error)
    if "WeightsUnpickler error:" in text:   # torch wraps the unpickler's own words
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0][:200] if lines else type(error).__name__
    return "not data torch can read" if "weights_only" in reason else reason


def _unreadable(path: Path, what: str, error: BaseException, expected: str, fix: str
                ) -> InputError:
    reason = failure_reason(error)
    return InputError(f"{what} {path} is not readable: expected {expected}, but reading it "
                      f"failed ({reason}). The file is truncated, corrupt or of another kind; "
                      f"nothing in it ran: {fix}")


def torch_load_restricted(path: str | os.PathLike, what: str, *, expected: str, fix: str,
                          may_hold: str = "tensors, numbers, strings and lists or dicts of them",
                          extra_globals: Iterable[Any] = (), mmap: bool = False,
                          map_location: Any = "cpu") -> Any:
    """:func:`torch.load` with ``weights_only=True``; refusals and corruption as InputError.

    Parameters
    ----------
    path : path-like
        The file.
    what : str
        What the file is, for messages (``"surrogate export"``, ``"checkpoint file"``).
    expected : str
        What a good file holds, for the message about an unreadable one.
    fix : str
        How to get a good file, for the same message.
    may_hold : str
        What the file may contain, for the message about a refused object.
    extra_globals : iterable
        Classes allowed besides torch's weights-only set (plain-data classes only).
    mmap : bool
        Map the tensor storages instead of reading them (parses only the pickle: a cheap
        check of a large file).
    map_location : optional
        As for :func:`torch.load`.

    Returns
    -------
    object
        What the file holds.

    Raises
    ------
    InputError
        Missing, truncated or corrupt file, or one holding objects outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist: {fix}")
    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if is_refusal(err):
            raise refusal_error(path, what, err, may_hold, fix) from None
        raise _unreadable(path, what, err, expected, fix) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile,
            UnicodeDecodeError, AttributeError, TypeError) as err:
        raise _unreadable(path, what, err, expected, fix) from None


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only :data:`DCP_METADATA_GLOBALS` and torch dtypes; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DCP_METADATA_GLOBALS or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"global persistent id {pid!r} is not allowed")


def read_dcp_metadata(path: str | os.PathLike) -> Any:
    """The :class:`torch.distributed.checkpoint.metadata.Metadata` in a ``.metadata`` file.

    Parameters
    ----------
    path : path-like
        The ``.metadata`` file of a DCP checkpoint directory.

    Returns
    -------
    Metadata

    Raises
    ------
    InputError
        Unreadable, or naming anything outside :data:`DCP_METADATA_GLOBALS`.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    path = Path(path)
    expected = "the pickled index of a torch.distributed.checkpoint written by the trainer"
    fix = ("resume from another checkpoint (resume=<checkpoint directory>) or start afresh "
           "(resume=None), after deleting this one")
    if not path.is_file():
        raise InputError(f"checkpoint file {path} does not exist: {fix}")
    try:
        with open(path, "rb") as stream:
            metadata = _MetadataUnpickler(stream).load()
    except pickle.UnpicklingError as err:
        if "is not allowed" in str(err):
            raise refusal_error(path, "checkpoint file", err,
                                "DCP's metadata classes, torch sizes and dtypes", fix) from None
        raise _unreadable(path, "checkpoint file", err, expected, fix) from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as err:
        raise _unreadable(path, "checkpoint file", err, expected, fix) from None
    if not isinstance(metadata, Metadata):
        raise InputError(f"checkpoint file {path} holds a {type(metadata).__name__}, not "
                         f"{expected}: {fix}")
    return metadata


@contextlib.contextmanager
def weights_only_forced(extra_globals: Iterable[Any] = ()) -> Iterator[None]:
    """Force ``weights_only=True`` on every :func:`torch.load` inside the block.

    Libraries that call ``torch.load(..., weights_only=False)`` themselves (DeepSpeed's
    checkpoint engine, DCP's loading of non-tensor items) then parse with the restricted
    unpickler too. This uses torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch, which
    :func:`torch.load` reads at every call; it is process-wide while the block runs.

    Parameters
    ----------
    extra_globals : iterable
        Plain-data classes allowed besides torch's weights-only set.
    """
    global _FORCE_DEPTH, _FORCE_PREVIOUS
    with _FORCE_LOCK:
        if _FORCE_DEPTH == 0:
            _FORCE_PREVIOUS = os.environ.get(_FORCE_VARIABLE)
        _FORCE_DEPTH += 1
        os.environ[_FORCE_VARIABLE] = "1"
    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            yield
    finally:
        with _FORCE_LOCK:
            _FORCE_DEPTH -= 1
            if _FORCE_DEPTH == 0:
                if _FORCE_PREVIOUS is None:
                    os.environ.pop(_FORCE_VARIABLE, None)
                else:
                    os.environ[_FORCE_VARIABLE] = _FORCE_PREVIOUS
