"""The ``manifest.json`` of a preprocessing root: its settings guard the root against mixing.

Rank 0 writes the manifest with ``status = "running"`` before any shard and with
``status = "complete"`` (and the statistics) at the end. A rerun compares its settings
with the manifest's and refuses a root made with other ones, naming the settings that
differ; a root holding files but no manifest is refused too, so a directory of other data
is never written into.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError
from .readers import NatureRunInfo
from .splits import SPLITS, SplitDays
from .validation import unreadable_file

__all__ = ["LAYOUT_VERSION", "MANIFEST_NAME", "check_root", "manifest_record", "read_manifest",
           "settings_record"]

MANIFEST_NAME = "manifest.json"
LAYOUT_VERSION = 1
_EXPECTED = ("the manifest turbda_kit.data.preprocess writes (a JSON object with the layout, "
             "status and settings of the shards beside it)")


def settings_record(info: NatureRunInfo, split_days: SplitDays, steps_per_file: int,
                    num_shards: int, fmt: str, name: str, names: list[str]) -> dict[str, Any]:
    """The settings that identify a root's data, in the form they take in the manifest."""
    settings = {
        "layout_version": LAYOUT_VERSION,
        "format": fmt,
        **{k: int(v) for k, v in asdict(split_days).items()},
        "steps_per_file": int(steps_per_file),
        "num_shards": int(num_shards),
        "steps_per_day": info.steps_per_day,
        "steps_per_shard": info.steps_per_day // num_shards,
        "dt_seconds": info.dt_seconds,
        "hours_per_step": info.dt_seconds / 3600.0,
        "source_variable": info.variable,
        "name": name,
        "variables": names,
        "levels_m": list(info.levels),
        "grid": list(info.grid_shape),
        "dtype": info.dtype,
        "source_fingerprint": info.fingerprint,
    }
    return json.loads(json.dumps(settings))  # the form it takes in manifest.json


def manifest_record(settings: dict[str, Any], info: NatureRunInfo, split_days: SplitDays,
                    status: str) -> dict[str, Any]:
    """The manifest: settings, source, splits, kit version, git revision, host, time."""
    # Light provenance on purpose: provenance.collect() imports torch, seconds per rank.
    import socket

    from ..provenance import git_revision, utc_now

    git = git_revision()
    return {
        "layout": "climax-npz" if settings["format"] == "npz" else "zarr",
        "status": status,
        "settings": settings,
        "source": {"path": info.path, "variable": info.variable, "n_times": info.n_times,
                   "levels_m": list(info.levels)},
        "splits": {s: {"first_day": split_days.days(s).start,
                       "end_day": split_days.days(s).stop,
                       "n_days": len(split_days.days(s))} for s in SPLITS},
        "turbda_kit_version": __version__,
        "git_revision": git["revision"],
        "git_dirty": git["dirty"],
        "host": socket.gethostname(),
        "updated_utc": utc_now(),
    }


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The ``manifest.json`` of a preprocessing root, or None when there is none.

    Raises
    ------
    InputError
        The file exists but is not a JSON object (truncated, edited, another file).
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    fix = (f"restore it from a copy of the root, or remove the root ({Path(root)}) and run "
           "preprocess again")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise unreadable_file(path, _EXPECTED, fix, err) from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings", {}), dict):
        raise unreadable_file(path, _EXPECTED, fix,
                              ValueError(f"JSON {type(manifest).__name__} without settings"))
    return manifest


def check_root(root: Path, settings: dict[str, Any]) -> tuple[str | None, dict | None]:
    """``(error message or None, existing manifest or None)`` for writing ``settings`` into
    ``root``; the message names the settings that differ."""
    try:
        manifest = read_manifest(root)
    except InputError as err:
        return str(err), None
    if manifest is None:
        if root.exists() and any(root.iterdir()):
            return (f"root={str(root)!r} already holds files but no {MANIFEST_NAME}: it is not "
                    "a turbda preprocessing output; choose an empty or new directory"), None
        return None, None
    old = manifest.get("settings", {})
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if changed:
        detail = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now"
                           for k in changed[:6])
        return (f"root={str(root)!r} holds shards made with other settings ({detail}): "
                "refusing to mix data sets; choose another root or remove it"), manifest
    return None, manifest
