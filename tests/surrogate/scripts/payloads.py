"""Planted payloads for checkpoint and export files (tests only).

A payload is a pickle whose ``__reduce__`` runs ``touch <marker>`` through ``os.system``,
the attack reported against the trainer: any loader that unpickles it unrestricted
creates the marker file. :func:`plant` puts one into a copy of a real checkpoint file, in
the form that file's reader would unpickle.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import shlex
import shutil
from pathlib import Path

import torch


class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: str | os.PathLike):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def payload_bytes(marker: str | os.PathLike) -> bytes:
    """The payload as :func:`torch.save` writes it (a zip archive with a pickle)."""
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


def _rewrite_distcp(directory: Path, name: str, marker: Path, which: str) -> None:
    """Replace the tensor (``which="tensor"``) or non-tensor (``"bytes"``) items of one
    ``.distcp`` file by payloads, and write a matching, genuine DCP index."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    with open(directory / ".metadata", "rb") as stream:
        metadata = pickle.load(stream)   # our own file, written by DCP a moment ago
    kinds = {fqn: isinstance(md, BytesStorageMetadata)
             for fqn, md in metadata.state_dict_metadata.items()}
    old = (directory / name).read_bytes()
    items = sorted(((index, info) for index, info in metadata.storage_data.items()
                    if info.relative_path == name), key=lambda pair: pair[1].offset)
    payload = payload_bytes(marker)
    out, planted = bytearray(), 0
    for index, info in items:
        is_bytes = kinds[index.fqn]
        if (which == "bytes") == is_bytes:
            data, planted = payload, planted + 1
        else:
            data = old[info.offset:info.offset + info.length]
        metadata.storage_data[index] = dataclasses.replace(info, offset=len(out),
                                                           length=len(data))
        out += data
    assert planted, f"{name} holds no {which} items"
    (directory / name).write_bytes(bytes(out))
    with open(directory / ".metadata", "wb") as stream:
        pickle.dump(metadata, stream)


def plant(checkpoint: Path, kind: str, destination: Path, marker: Path) -> Path:
    """A copy of ``checkpoint`` at ``destination`` with a payload in one file.

    Parameters
    ----------
    checkpoint : Path
        A checkpoint directory (``step_XXXXXXXX``).
    kind : str
        ``"<relative path>"`` of a file to replace by a payload; for a ``.distcp`` file
        ``"<relative path>:tensor"`` or ``":bytes"`` replaces those items only.
    destination : Path
        Where the copy goes (replaced if it exists).
    marker : Path
        The file the payload creates when it runs.

    Returns
    -------
    Path
        The planted file.
    """
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(checkpoint, destination)
    relative, _, which = kind.partition(":")
    path = destination / relative
    if path.name == ".metadata":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif path.suffix == ".distcp":
        _rewrite_distcp(path.parent, path.name, marker, which)
    else:
        path.write_bytes(payload_bytes(marker))
    return path


def _distcp_items(directory: Path) -> dict[str, set[str]]:
    """``{file: {"tensor", "bytes"}}``: which kinds of items each ``.distcp`` file holds."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    with open(directory / ".metadata", "rb") as stream:
        metadata = pickle.load(stream)
    found: dict[str, set[str]] = {}
    for index, info in metadata.storage_data.items():
        is_bytes = isinstance(metadata.state_dict_metadata[index.fqn], BytesStorageMetadata)
        found.setdefault(info.relative_path, set()).add("bytes" if is_bytes else "tensor")
    return found


def file_kinds(checkpoint: Path) -> list[str]:
    """One entry per pickled file of a checkpoint, two per ``.distcp`` (see :func:`plant`)."""
    kinds = []
    for path in sorted(checkpoint.rglob("*")):
        if not path.is_file() or path.suffix == ".json":
            continue
        relative = str(path.relative_to(checkpoint))
        if path.suffix == ".distcp":
            held = _distcp_items(path.parent).get(path.name, set())
            kinds += [f"{relative}:{which}" for which in sorted(held)]
        else:
            kinds.append(relative)
    return kinds
