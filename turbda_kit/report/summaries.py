"""Result summaries: the small JSON files every number in the README is read from.

A summary is what one stage of the results pipeline (or one benchmark) measured, together
with the command that produced it and enough provenance to trace it (kit version, git
revision, date, machine shape). Summaries are committed under ``results/`` in the
repository; the README's result sections are rendered from them
(:mod:`turbda_kit.report.readme`), so a number in the README can never drift from the
output of its command.

File format (``results/<name>.json``)::

    {"name": "...", "command": "...", "description": "...",
     "provenance": {...}, "data": {...}}

``data`` holds plain JSON values only (numbers, strings, lists, dicts); non-finite floats
are stored as ``null``. No absolute paths of the producing machine are stored.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import InputError
from ..io import atomic_path
from ..provenance import git_revision, utc_now

__all__ = ["Summary", "default_results_dir", "load_results", "read_summary", "write_summary"]

_REQUIRED = ("name", "command", "data")


@dataclass(frozen=True)
class Summary:
    """One result summary.

    Attributes
    ----------
    name : str
        Stem of the file (``results/<name>.json``).
    command : str
        The command anyone can run from the repository to regenerate it.
    data : dict
        The measured values.
    description : str
        What was measured, in a sentence.
    provenance : dict
        Kit version, git revision, UTC date, CPU count, torch threads, Python/torch versions.
    """

    name: str
    command: str
    data: dict[str, Any]
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    def get(self, dotted: str) -> Any:
        """The value at a dotted key path of ``data`` (``"linear.letkf.mean_rmse"``).

        Raises
        ------
        InputError
            When the path does not exist (names the missing part and what is there).
        """
        value: Any = self.data
        walked: list[str] = []
        for part in dotted.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                where = ".".join(walked) or "<data>"
                known = ", ".join(map(str, value)) if isinstance(value, dict) else type(value).__name__
                raise InputError(f"results/{self.name}.json has no {dotted!r}: {where} holds "
                                 f"{known}; regenerate it with `{self.command}`")
            walked.append(part)
        return value


def default_results_dir() -> Path:
    """The repository's ``results/`` folder (next to the ``turbda_kit`` package)."""
    return Path(__file__).resolve().parent.parent.parent / "results"


def _plain(value: Any, key: str) -> Any:
    """``value`` as plain JSON (non-finite floats become None); refuses other objects."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) or hasattr(value, "__float__"):
        number = float(value)
        return number if math.isfinite(number) else None
    raise InputError(f"summary value {key} is a {type(value).__name__}; only numbers, strings, "
                     "booleans, lists and dicts can be stored")


def _provenance() -> dict[str, Any]:
    git = git_revision()
    return {"kit_version": __version__, "git_revision": git["revision"], "git_dirty": git["dirty"],
            "utc": utc_now(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine()}


def write_summary(path: str | os.PathLike, data: dict[str, Any], command: str,
                  description: str = "", provenance: dict[str, Any] | None = None) -> Path:
    """Write a summary atomically; the file stem is its name.

    Parameters
    ----------
    path : path-like
        Destination ``<dir>/<name>.json``.
    data : dict
        Measured values (plain numbers/strings/lists/dicts; numpy scalars are converted).
    command : str
        Command that regenerates it from the repository (relative paths only).
    description : str
        One sentence on what was measured.
    provenance : dict, optional
        Extra provenance merged over the collected one (e.g. threads per side).

    Returns
    -------
    Path
    """
    path = Path(path)
    if path.suffix != ".json":
        raise InputError(f"a summary is a .json file, got {path}")
    if not command or command.startswith("/"):
        raise InputError("a summary needs the command that regenerates it, relative to the "
                         f"repository (got {command!r})")
    record = {"name": path.stem, "command": command, "description": description,
              "provenance": {**_provenance(), **_plain(provenance or {}, "provenance")},
              "data": _plain(data, "data")}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    return path


def read_summary(path: str | os.PathLike) -> Summary:
    """Read a summary written by :func:`write_summary`.

    Raises
    ------
    InputError
        Missing file, not JSON, or missing required keys (the message names the file).
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"no result summary at {path}: run the results pipeline "
                         "(`turbda pipeline paper`) to produce it") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a result summary (invalid JSON: {err}); regenerate "
                         "it with the command in the README or delete it") from None
    if not isinstance(record, dict) or any(k not in record for k in _REQUIRED):
        raise InputError(f"{path} is not a result summary: it needs the keys "
                         f"{', '.join(_REQUIRED)}")
    return Summary(name=str(record["name"]), command=str(record["command"]),
                   data=dict(record["data"]), description=str(record.get("description", "")),
                   provenance=dict(record.get("provenance", {})))


def load_results(results_dir: str | os.PathLike | None = None) -> dict[str, Summary]:
    """Every summary in ``results_dir`` (default :func:`default_results_dir`), by name."""
    folder = Path(results_dir) if results_dir is not None else default_results_dir()
    return {p.stem: read_summary(p) for p in sorted(folder.glob("*.json"))}
