"""Per-variable normalisation of the surrogate's fields: the one :class:`Normaliser`.

The ViT works on ``(x - mean) / std`` per variable, with ``mean`` and ``std`` of the
training split. A root written by :func:`turbda_kit.data.preprocess.preprocess` holds the
exact statistics of its training days (``normalize_mean.npz`` / ``normalize_std.npz``, or
the zarr store's attributes); :func:`read_normaliser` reads them, from a kit root or from a
published ClimaX-layout set such as the seed's ``sqg_N64_12hrly_npy``.

A model trained elsewhere must be fed with *its* statistics: to run the seed's published
weights on data the kit made, normalise with the seed's files
(``read_normaliser(seed_root)``), not the kit root's. The seed's files hold the statistics
of one day only (see ``docs/preprocess.md``), so the two differ.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..optional import require
from .npz import read_npz

__all__ = ["Normaliser", "denormalise", "normalise", "read_normaliser"]

ArrayLike = Any  # numpy.ndarray or torch.Tensor
STATISTICS_FILES = ("normalize_mean.npz", "normalize_std.npz")
_EXPECTED = ("normalisation statistics ({variable: array of shape (1,)}, K, as preprocess and "
             "ClimaX's nc2np write them)")


def _stats_like(x: ArrayLike, values: ArrayLike) -> ArrayLike:
    """``values (vars,)`` shaped ``(vars, 1, 1)`` in x's library, dtype and device."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(x, torch.Tensor):
        return torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    return np.asarray(values, dtype=np.result_type(x.dtype, np.float32)).reshape(-1, 1, 1)


def normalise(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> ArrayLike:
    """``(x - mean) / std`` per variable.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        Fields ``(..., vars, ny, nx)`` in K.
    mean, std : array-like
        ``(vars,)`` in K (``normalize_mean.npz`` / ``normalize_std.npz``).

    Returns
    -------
    Same type, dtype and device as ``x`` (numpy integer input becomes float).
    """
    return (x - _stats_like(x, mean)) / _stats_like(x, std)


def denormalise(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> ArrayLike:
    """``x * std + mean`` per variable: the inverse of :func:`normalise` (to rounding)."""
    return x * _stats_like(x, std) + _stats_like(x, mean)


@dataclass(frozen=True, eq=False)
class Normaliser:
    """Per-variable mean and std of the training split, with the two transforms.

    Attributes
    ----------
    variables : tuple of str
        Channel order.
    mean, std : numpy.ndarray
        ``(vars,)`` float64, K; ``std > 0``.
    """

    variables: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        variables = tuple(str(v) for v in self.variables)
        mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        std = np.asarray(self.std, dtype=np.float64).reshape(-1)
        if not variables or not len(variables) == mean.size == std.size:
            raise InputError(f"a Normaliser needs one mean and one std per variable: got "
                             f"{len(variables)} variables, {mean.size} means, {std.size} stds")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise InputError(f"normalisation statistics must be finite with std > 0; got mean "
                             f"{mean.tolist()}, std {std.tolist()} for {list(variables)}")
        object.__setattr__(self, "variables", variables)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Normaliser):
            return NotImplemented
        return (self.variables == other.variables and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.std, other.std))

    def __hash__(self) -> int:
        return hash((self.variables, self.mean.tobytes(), self.std.tobytes()))

    def normalise(self, x: ArrayLike) -> ArrayLike:
        """See :func:`normalise`."""
        return normalise(x, self.mean, self.std)

    def denormalise(self, x: ArrayLike) -> ArrayLike:
        """See :func:`denormalise`."""
        return denormalise(x, self.mean, self.std)

    def select(self, variables: Sequence[str]) -> Normaliser:
        """The statistics of ``variables``, in that order.

        Raises
        ------
        InputError
            A variable this normaliser does not hold.
        """
        missing = [v for v in variables if v not in self.variables]
        if missing or not variables:
            raise InputError(f"variables={list(variables)!r}: {missing or 'none given'} not in "
                             f"the statistics; available: {', '.join(self.variables)}")
        index = [self.variables.index(v) for v in variables]
        return Normaliser(tuple(variables), self.mean[index], self.std[index])


def _zarr_statistics(store: Path) -> Normaliser:
    zarr = require("zarr", "reading zarr statistics")
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    if "normalize_mean" not in attrs or "normalize_std" not in attrs:
        raise InputError(f"{store} has no statistics in its attributes: was preprocessing "
                         "interrupted? Run it again with the same settings to finish")
    names = list(attrs.get("variables", list(attrs["normalize_mean"])))
    return Normaliser(tuple(names),
                      [np.asarray(attrs["normalize_mean"][n], np.float64).reshape(-1)[0]
                       for n in names],
                      [np.asarray(attrs["normalize_std"][n], np.float64).reshape(-1)[0]
                       for n in names])


def _shard_folders(root: Path) -> list[str]:
    return [s for s in ("train", "val", "test")
            if (root / s).is_dir() and any((root / s).glob("*_*.npz"))]


def read_normaliser(root: str | os.PathLike, variables: Sequence[str] | None = None
                    ) -> Normaliser:
    """The training statistics stored in a shard root (the kit's or a published one).

    Parameters
    ----------
    root : path-like
        A directory with ``normalize_mean.npz`` and ``normalize_std.npz`` (ClimaX layout:
        a kit npz root, or e.g. the seed's ``sqg_N64_12hrly_npy``) or a kit ``data.zarr``.
    variables : sequence of str or None
        Channels to keep, in order (default all, in the stored order).

    Returns
    -------
    Normaliser

    Raises
    ------
    InputError
        No statistics in ``root`` (the message says whether preprocessing looks unfinished
        or the files were not copied), or a truncated or garbled statistics file.

    Examples
    --------
    Data the kit made, normalised as the seed's published weights expect::

        seed_stats = read_normaliser("sqg_vit/coupled_vit_ensf/sqg_N64_12hrly_npy")
        catalog = open_shards("runs/02_preprocess/shards", normaliser=seed_stats)
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"root={str(root)!r} is not a directory of shards")
    if (root / "data.zarr").is_dir():
        stats = _zarr_statistics(root / "data.zarr")
        return stats if variables is None else stats.select(variables)
    kit_root = (root / "manifest.json").is_file()
    fix = ("delete it and run preprocess again with the same settings into this root: the "
           "statistics are recomputed from the shards, which are verified and kept"
           if kit_root else
           "copy normalize_mean.npz and normalize_std.npz again from the published data set")
    present = [name for name in STATISTICS_FILES if (root / name).is_file()]
    if len(present) < 2:
        folders = _shard_folders(root)
        if not present and not folders:
            raise InputError(f"root={str(root)!r} holds neither normalize_mean.npz (ClimaX npz "
                             "layout) nor data.zarr: run turbda_kit.data.preprocess first")
        missing = [name for name in STATISTICS_FILES if name not in present]
        raise InputError(
            f"{root} lacks {' and '.join(missing)} (the training statistics, which a shard "
            f"root needs beside its shards{' in ' + '/, '.join(folders) + '/' if folders else ''}"
            "): " + ("preprocessing did not finish, or the file was deleted: run preprocess "
                     "again with the same settings into this root to finish it"
                     if kit_root else
                     "copy both statistics files with the shards (a published ClimaX set "
                     "ships them at its top level)"))
    mean = read_npz(root / STATISTICS_FILES[0], expected=_EXPECTED, fix=fix)
    std = read_npz(root / STATISTICS_FILES[1], expected=_EXPECTED, fix=fix)
    names = [n for n in mean if n in std]
    if not names:
        raise InputError(f"{root / STATISTICS_FILES[0]} and {root / STATISTICS_FILES[1]} share "
                         f"no variable ({list(mean)} vs {list(std)}); expected {_EXPECTED}")
    stats = Normaliser(tuple(names), [mean[n].reshape(-1)[0] for n in names],
                       [std[n].reshape(-1)[0] for n in names])
    return stats if variables is None else stats.select(variables)
