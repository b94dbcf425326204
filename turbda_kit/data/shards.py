"""A shard root described: variables, grid, step length, statistics, the shards of a split.

:func:`open_shards` reads a root written by :func:`turbda_kit.data.preprocess.preprocess`
(ClimaX ``.npz`` layout or the kit's zarr store), or a published set in the ClimaX
``nc2np`` layout as it is, such as the seed's ``sqg_N64_12hrly_npy``::

    {root}/normalize_mean.npz, normalize_std.npz   {var: (1,)}
    {root}/lat.npy, lon.npy                        grid coordinates (optional)
    {root}/{split}/{day}_{shard}.npz               {var: (steps, 1, ny, nx)}
    {root}/{split}/climatology.npz                 {var: (1, ny, nx)} (optional)

A published set has no manifest, so it does not record the time between its steps: pass
``hours_per_step``. It may also ship only some splits (the seed's has only ``test/``);
asking for a missing split says so. The datasets built on a catalog are in
:mod:`turbda_kit.data.datasets`, the statistics in :mod:`turbda_kit.data.normaliser`.

Example
-------
::

    catalog = open_shards("sqg_N64_12hrly_npy", hours_per_step=12.0)
    catalog.layout, catalog.splits          # 'climax', ('test',)
    fields = catalog.load(catalog.shards("test")[0])   # (steps, vars, ny, nx), K
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..optional import require
from .manifest import read_manifest
from .normaliser import Normaliser, read_normaliser
from .npz import npz_member_shape, npz_members, read_npz
from .splits import SPLITS
from .validation import unreadable_file
from .writers import ZARR_STORE

__all__ = ["ShardCatalog", "ShardRef", "open_shards"]

_SHARD_NAME = re.compile(r"^(\d+)_(\d+)\.npz$")
_SHARD_EXPECTED = "a training shard ({variable: (steps, 1, ny, nx)} in K, ClimaX layout)"


@dataclass(frozen=True)
class ShardRef:
    """One shard: ``{split}/{day}_{shard}.npz`` or a time range of the zarr store's group."""

    split: str
    day: int
    shard: int
    path: Path | None
    start: int
    stop: int

    @property
    def steps(self) -> int:
        """Number of time steps in the shard."""
        return self.stop - self.start


def _check_hours(hours_per_step: Any) -> float | None:
    if hours_per_step is None:
        return None
    if isinstance(hours_per_step, bool) or not isinstance(hours_per_step, (int, float)) \
            or not math.isfinite(hours_per_step) or hours_per_step <= 0:
        raise InputError(f"hours_per_step={hours_per_step!r} must be a number of hours > 0 "
                         "(the time between consecutive steps of the shards)")
    return float(hours_per_step)


class ShardCatalog:
    """A shard root: variables, grid, statistics and the shards of each split.

    Use :func:`open_shards` to build one.

    Attributes
    ----------
    root : Path
    fmt : str
        ``"npz"`` or ``"zarr"``.
    layout : str
        ``"kit"`` (a root with a manifest, or a zarr store) or ``"climax"`` (a published
        ClimaX-layout set read as it is).
    variables : tuple of str
        Channels, in order.
    all_variables : tuple of str
        Every variable the root holds.
    grid_shape : tuple of int
        ``(ny, nx)``.
    y, x : numpy.ndarray or None
        Grid coordinates, when the root has them (m; a ClimaX root's ``lat.npy`` /
        ``lon.npy`` as they are).
    hours_per_step : float or None
        Time between consecutive steps: from the manifest, or as given.
    normaliser : Normaliser
        Statistics of ``variables``: the root's own (training split), or those given.
    manifest : dict or None
        ``manifest.json`` when present.
    splits : tuple of str
        The splits that hold shards.
    """

    def __init__(self, root: str | os.PathLike, variables: Sequence[str] | None = None,
                 hours_per_step: float | None = None, normaliser: Normaliser | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"root={str(self.root)!r} is not a directory of shards")
        self.manifest: dict[str, Any] | None = read_manifest(self.root)
        settings = (self.manifest or {}).get("settings", {})
        self.fmt = "zarr" if (self.root / ZARR_STORE).is_dir() else "npz"
        self.layout = "kit" if self.manifest is not None or self.fmt == "zarr" else "climax"
        self._shards: dict[str, list[ShardRef]] = {}
        self._zarr_group = None
        self._zarr_pid: int | None = None
        stats = read_normaliser(self.root) if normaliser is None else normaliser
        if self.fmt == "zarr":
            stored = list(dict(self._group().attrs).get("variables") or stats.variables)
        elif "variables" in settings:
            stored = list(settings["variables"])
        else:
            stored = self._first_shard_variables() or list(stats.variables)
        self.all_variables = tuple(stored)
        chosen = list(stored) if variables is None else list(variables)
        missing = [v for v in chosen if v not in stored]
        if missing or not chosen:
            raise InputError(f"variables={chosen!r}: {missing or 'none given'} not in {self.root}; "
                             f"available: {', '.join(stored)}")
        self.variables = tuple(chosen)
        self.normaliser = stats.select(self.variables)
        self.hours_per_step = self._hours(settings, _check_hours(hours_per_step))
        self.y = self._coordinate("y", "lat")
        self.x = self._coordinate("x", "lon")
        if "grid" in settings:
            self.grid_shape = tuple(int(n) for n in settings["grid"])
        elif self.y is not None and self.x is not None:
            self.grid_shape = (len(self.y), len(self.x))
        else:
            first = next((self.shards(split)[0] for split in self.splits), None)
            if first is None:
                raise InputError(f"{self.root} holds no shards")
            self.grid_shape = tuple(self.load(first)[0, 0].shape)

    # ------------------------------------------------------------------ description

    def _hours(self, settings: dict[str, Any], given: float | None) -> float | None:
        recorded = settings.get("hours_per_step")
        if self.fmt == "zarr" and recorded is None:
            recorded = dict(self._group().attrs).get("hours_per_step")
        if recorded is not None and given is not None and abs(float(recorded) - given) > 1e-9:
            raise InputError(f"hours_per_step={given} contradicts {self.root}, whose manifest "
                             f"records {recorded} h between steps: leave it out (None)")
        return float(recorded) if recorded is not None else given

    def _fix(self) -> str:
        if self.layout == "kit":
            return ("delete the file and run preprocess again with the same settings into this "
                    "root: missing shards are rewritten, intact ones are verified and kept")
        return "copy the file again from the published data set"

    def _load_npy(self, path: Path, what: str) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except Exception as err:  # numpy and the OS raise many unrelated types
            raise unreadable_file(path, what, self._fix(), err) from err

    def _coordinate(self, name: str, climax_name: str) -> np.ndarray | None:
        for candidate in (name, climax_name):
            path = self.root / f"{candidate}.npy"
            if path.is_file():
                return self._load_npy(path, f"the {candidate} coordinate of the grid (.npy)")
        if self.fmt == "zarr":
            group = self._group()
            for split in SPLITS:
                if split in group and name in group[split]:
                    return np.asarray(group[split][name][:])
        return None

    def _first_shard_variables(self) -> list[str] | None:
        for split in SPLITS:
            files = self._npz_files(split)
            if files:
                return npz_members(files[0][2], expected=_SHARD_EXPECTED, fix=self._fix())
        return None

    def _group(self):
        """The zarr root group, opened once per process (DataLoader workers fork)."""
        if self._zarr_group is None or self._zarr_pid != os.getpid():
            zarr = require("zarr", "reading zarr shards")
            self._zarr_group = zarr.open_group(str(self.root / ZARR_STORE), mode="r")
            self._zarr_pid = os.getpid()
        return self._zarr_group

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zarr_group"] = None  # reopened in the worker
        return state

    # ------------------------------------------------------------------ shards

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits that hold shards, in the order train, val, test."""
        if self.fmt == "zarr":
            return tuple(s for s in SPLITS if s in self._group())
        return tuple(s for s in SPLITS if self._npz_files(s))

    def shards(self, split: str) -> list[ShardRef]:
        """Shards of ``split`` in time order (day, then shard number).

        Raises
        ------
        InputError
            An unknown split, or one without shards in this root (the message names the
            splits it has).
        """
        if split not in SPLITS:
            raise InputError(f"split={split!r} must be one of {', '.join(SPLITS)}")
        if split not in self._shards:
            refs = self._zarr_shards(split) if self.fmt == "zarr" else self._npz_shards(split)
            if not refs:
                have = ", ".join(f"{s}/" for s in self.splits) or "none"
                hint = (" A published ClimaX set may ship only some splits (the seed's "
                        "sqg_N64_12hrly_npy has only test/): train and validate on a root "
                        "made by turbda_kit.data.preprocess, and use this one where it has data."
                        if self.layout == "climax" else "")
                raise InputError(f"split {split!r} of {self.root} holds no shards: the splits "
                                 f"with shards are {have}.{hint}")
            self._shards[split] = refs
        return self._shards[split]

    def _npz_files(self, split: str) -> list[tuple[int, int, Path]]:
        folder = self.root / split
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            match = _SHARD_NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), path))
        return sorted(found)

    def _npz_shards(self, split: str) -> list[ShardRef]:
        refs = []
        for day, shard, path in self._npz_files(split):
            steps = npz_member_shape(path, self.variables[0], expected=_SHARD_EXPECTED,
                                     fix=self._fix())[0]
            refs.append(ShardRef(split, day, shard, path, 0, steps))
        return refs

    def _zarr_shards(self, split: str) -> list[ShardRef]:
        group = self._group()
        if split not in group:
            return []
        attrs = dict(group[split].attrs)
        per_day, per_shard = int(attrs["steps_per_day"]), int(attrs["steps_per_shard"])
        refs = []
        for i in range(int(attrs["n_days"])):
            for k in range(int(attrs["num_shards"])):
                start = i * per_day + k * per_shard
                refs.append(ShardRef(split, int(attrs["first_day"]) + i, k, None, start,
                                     start + per_shard))
        return refs

    def load(self, ref: ShardRef) -> np.ndarray:
        """A shard's fields ``(steps, vars, ny, nx)`` in K, in the data's dtype.

        Raises
        ------
        InputError
            A truncated or garbled shard, or one without the catalog's variables.
        """
        if self.fmt == "zarr":
            group = self._group()[ref.split]
            return np.stack([np.asarray(group[v][ref.start:ref.stop]) for v in self.variables],
                            axis=1)
        arrays = read_npz(ref.path, self.variables, expected=_SHARD_EXPECTED, fix=self._fix())
        return np.concatenate([a.reshape(a.shape[0], -1, *a.shape[-2:]) for a in arrays.values()],
                              axis=1)

    def climatology(self, split: str) -> np.ndarray:
        """Time-mean fields of ``split``: ``(vars, ny, nx)`` in K."""
        if split not in SPLITS:
            raise InputError(f"split={split!r} must be one of {', '.join(SPLITS)}")
        if self.fmt == "zarr":
            group = self._group()[split]
            return np.stack([np.asarray(group[f"climatology_{v}"][:]) for v in self.variables])
        path = self.root / split / "climatology.npz"
        if not path.is_file():
            raise InputError(f"{path} is missing: {self.root} has no climatology of split "
                             f"{split!r} (a published set may ship only some)")
        arrays = read_npz(path, self.variables,
                          expected="a climatology ({variable: (1, ny, nx)} in K)",
                          fix=self._fix())
        return np.concatenate([a.reshape(-1, *a.shape[-2:]) for a in arrays.values()])


def open_shards(root: str | os.PathLike, variables: Sequence[str] | None = None, *,
                hours_per_step: float | None = None,
                normaliser: Normaliser | None = None) -> ShardCatalog:
    """Describe a shard root: the kit's (either format) or a published ClimaX-layout set.

    Parameters
    ----------
    root : path-like
        Directory holding ``normalize_mean.npz`` (+ ``train/`` ...) or ``data.zarr``.
    variables : sequence of str or None
        Channels to read, in order (default: all, in the stored order).
    hours_per_step : float or None
        Hours between consecutive steps. A kit root records it (a different value is
        refused); a published set does not, so give it there (the seed's 64² set: 12.0).
    normaliser : Normaliser or None
        Statistics to normalise with instead of the root's own, e.g. the seed's
        (:func:`~turbda_kit.data.normaliser.read_normaliser`) to feed the seed's
        published weights with data the kit made.

    Returns
    -------
    ShardCatalog

    Raises
    ------
    InputError
        Not a shard root, missing or unreadable statistics or manifest, unknown variables,
        or a ``hours_per_step`` that contradicts the manifest.
    """
    return ShardCatalog(root, variables, hours_per_step, normaliser)
