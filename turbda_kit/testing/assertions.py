"""Assertions with messages that say where two results differ.

Each raises :class:`AssertionError` (so pytest shows it as a failed assertion) naming the
variable, member, file or attribute that differs and by how much.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["assert_cf_complete", "assert_datasets_identical", "assert_ensembles_close",
           "assert_shard_roots_identical"]


def _fail(problems: list[str], what: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise AssertionError(f"{what}:\n  {shown}{more}")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def _same_value(a: Any, b: Any) -> bool:
    """Attribute values equal, NaN equal to NaN (a missing score is the same in both)."""
    left, right = np.asarray(a), np.asarray(b)
    try:
        return bool(np.array_equal(left, right, equal_nan=True))
    except TypeError:  # text and other values without NaN
        return bool(np.array_equal(left, right))


def _attrs_differ(label: str, a: dict, b: dict, ignore: frozenset[str]) -> list[str]:
    keys = sorted((set(a) | set(b)) - ignore)
    out = []
    for key in keys:
        if key not in a or key not in b:
            out.append(f"{label}: attribute {key!r} only in "
                       f"{'the first' if key in a else 'the second'}")
        elif not _same_value(a[key], b[key]):
            out.append(f"{label}: attribute {key!r} is {a[key]!r} vs {b[key]!r}")
    return out


def assert_datasets_identical(actual: Any, expected: Any, *, check_attrs: bool = True,
                              ignore_attrs: Iterable[str] = ()) -> None:
    """Assert two xarray Datasets hold the same variables, dims, dtypes, bits and attributes.

    Stricter than :func:`xarray.testing.assert_identical` on values (bit for bit, so
    ``-0.0 != 0.0`` and NaNs must match in place and payload; dtypes must agree) and
    more lenient on attributes where asked (``ignore_attrs``, e.g. time stamps).

    Parameters
    ----------
    actual, expected : xarray.Dataset
    check_attrs : bool
        Compare the dataset's and every variable's attributes.
    ignore_attrs : iterable of str
        Attribute names left out of the comparison (on the dataset and on variables),
        e.g. ``("finished_utc", "resumed_utc")``.

    Raises
    ------
    AssertionError
        Listing every difference found (up to 20).
    """
    ignore = frozenset(ignore_attrs)
    problems = []
    names_a, names_b = set(actual.variables), set(expected.variables)
    for name in sorted(names_a ^ names_b, key=str):
        problems.append(f"variable {name!r} only in "
                        f"{'the first' if name in names_a else 'the second'} dataset")
    for name in sorted(names_a & names_b, key=str):
        a, b = actual[name].variable, expected[name].variable
        if a.dims != b.dims:
            problems.append(f"{name}: dims {a.dims} vs {b.dims}")
            continue
        if a.dtype != b.dtype:
            problems.append(f"{name}: dtype {a.dtype} vs {b.dtype}")
        elif a.shape != b.shape:
            problems.append(f"{name}: shape {a.shape} vs {b.shape}")
        else:
            va, vb = np.asarray(a.values), np.asarray(b.values)
            if not _same_bits(va, vb):
                if va.dtype.kind in "fc":
                    differ = ~((va == vb) | (np.isnan(va) & np.isnan(vb))) \
                        | (np.signbit(va) != np.signbit(vb))
                else:
                    differ = va != vb
                count = int(np.count_nonzero(differ))
                if count:
                    where = tuple(int(i) for i in np.argwhere(differ)[0])
                    problems.append(f"{name}: {count} of {va.size} values differ, first at "
                                    f"{dict(zip(a.dims, where))}: {va[where].item()!r} vs "
                                    f"{vb[where].item()!r}")
                else:
                    problems.append(f"{name}: values equal but not bit for bit (NaN payloads)")
        if check_attrs:
            problems += _attrs_differ(name, dict(a.attrs), dict(b.attrs), ignore)
    if check_attrs:
        problems += _attrs_differ("dataset", dict(actual.attrs), dict(expected.attrs), ignore)
    _fail(problems, "datasets are not identical")


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_ensembles_close(actual: Any, expected: Any, *, rtol: float = 1e-7,
                           atol: float = 0.0, check_dtype: bool = True) -> None:
    """Assert two ensembles ``(member, *state_shape)`` agree member by member.

    Every value must satisfy ``|actual - expected| <= atol + rtol * |expected|`` (as
    :func:`numpy.isclose`); NaN only matches NaN.

    Parameters
    ----------
    actual, expected : torch.Tensor or numpy.ndarray, shape (member, *state_shape)
    rtol, atol : float
        Relative and absolute tolerance.
    check_dtype : bool
        Require the same dtype.

    Raises
    ------
    AssertionError
        Naming the members that differ, the worst value's index and the error there.
    """
    a, b = _as_numpy(actual), _as_numpy(expected)
    if a.ndim < 1 or a.shape != b.shape:
        raise AssertionError(f"ensembles have shapes {a.shape} and {b.shape}: expected the same "
                             "(member, *state_shape)")
    if check_dtype and a.dtype != b.dtype:
        raise AssertionError(f"ensembles have dtypes {a.dtype} and {b.dtype}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    close = np.isclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return
    error = np.where(close, 0.0, np.abs(a64 - b64))
    error = np.where(np.isnan(error), np.inf, error)
    members = [int(m) for m in np.flatnonzero(~close.reshape(len(a), -1).all(axis=1))]
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(error)), a.shape))
    raise AssertionError(
        f"ensembles differ beyond rtol={rtol:g}, atol={atol:g} in {len(members)} of {len(a)} "
        f"members {members[:10]}{' ...' if len(members) > 10 else ''}: "
        f"{int((~close).sum())} values, worst at member {worst[0]}, index {worst[1:]}: "
        f"{a64[worst].item()!r} vs {b64[worst].item()!r} "
        f"(|diff| {abs(a64[worst] - b64[worst]):.3g})")


def _time_is_decodable(time: Any) -> str | None:
    """None when ``time`` is (or decodes to) dates; else what is wrong."""
    import xarray as xr

    if np.issubdtype(time.dtype, np.datetime64) or time.dtype == object:
        return None
    units = time.attrs.get("units")
    if units is None:
        return "time has no units"
    decoded = xr.decode_cf(xr.Dataset(coords={"time": time.variable}))["time"]
    if np.issubdtype(decoded.dtype, np.datetime64) or decoded.dtype == object:
        return None
    return (f"time has units {units!r}, which CF readers do not decode as time: use "
            "'seconds since <date>' (turbda_kit.data.time_axis.TIME_UNITS)")


def _is_text(var: Any) -> bool:
    """Whether a variable holds strings (labels, paths): CF gives those no units."""
    if var.dtype.kind in "US":
        return True
    if var.dtype == object and var.size:
        return isinstance(np.asarray(var.values).flat[0], (str, bytes))
    return False


def assert_cf_complete(ds: Any, *, require_time: bool = True,
                       require_conventions: bool = True, require_dim_coords: bool = True
                       ) -> None:
    """Assert a Dataset carries what CF readers need: units, long names, a decodable time.

    Every data variable and every coordinate must have non-empty ``units`` (for a time
    xarray decoded, in ``.encoding``; text variables such as labels must have none) and
    ``long_name`` (or ``standard_name``); the
    ``time`` coordinate must decode to dates and carry ``standard_name = "time"``; the
    Dataset must say ``Conventions = "CF-..."``; every dimension a variable uses must have
    a coordinate variable (``x``/``y``/``z`` in m, ``member``, ``cycle`` ...).

    Parameters
    ----------
    ds : xarray.Dataset
        Decoded or not (``decode_times=False``).
    require_time : bool
        Fail when there is no ``time`` coordinate.
    require_conventions : bool
        Fail without a ``Conventions`` attribute naming CF.
    require_dim_coords : bool
        Fail when a dimension has no coordinate variable.

    Raises
    ------
    AssertionError
        Listing every variable that lacks something.
    """
    problems = []
    for name, var in list(ds.data_vars.items()) + list(ds.coords.items()):
        if _is_text(var):
            if "units" in var.attrs:
                problems.append(f"{name}: text with units {var.attrs['units']!r} (CF: none)")
        elif not str(var.attrs.get("units") or var.encoding.get("units") or "").strip():
            problems.append(f"{name}: no units")
        if not str(var.attrs.get("long_name") or var.attrs.get("standard_name") or "").strip():
            problems.append(f"{name}: no long_name")
    if "time" in ds.coords:
        wrong = _time_is_decodable(ds["time"])
        if wrong:
            problems.append(wrong)
        if ds["time"].attrs.get("standard_name", "time") != "time":
            problems.append(f"time: standard_name is {ds['time'].attrs['standard_name']!r}, "
                            "not 'time'")
    elif require_time:
        problems.append("no time coordinate")
    if require_conventions and not str(ds.attrs.get("Conventions", "")).startswith("CF-"):
        problems.append(f"Conventions is {ds.attrs.get('Conventions')!r}: set it to 'CF-1.8'")
    if require_dim_coords:
        for dim in sorted(map(str, ds.dims)):
            if dim not in ds.coords:
                problems.append(f"dimension {dim!r} has no coordinate variable")
    _fail(problems, "dataset is not CF-complete")


def _array_files(root: Path) -> list[Path]:
    """The ``.npy``/``.npz`` files of a root, without hidden ones (the temporaries of
    :func:`turbda_kit.io.atomic_path` that a killed writer leaves)."""
    return sorted(p for p in root.rglob("*.np[yz]")
                  if not any(part.startswith(".") for part in p.relative_to(root).parts))


def _arrays_of(root: Path) -> dict[str, np.ndarray]:
    found = {}
    for path in _array_files(root):
        rel = str(path.relative_to(root))
        if path.suffix == ".npy":
            found[rel] = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                found.update({f"{rel}:{k}": npz[k] for k in npz.files})
    return found


def assert_shard_roots_identical(actual: str | os.PathLike, expected: str | os.PathLike, *,
                                 exclude: Iterable[str] = (), check_files: bool = True
                                 ) -> None:
    """Assert two shard roots hold the same arrays, bit for bit, and the same ``.np[yz]`` files.

    Hidden files (a killed writer's temporaries) are not part of a root and are left out.

    Parameters
    ----------
    actual, expected : path-like
        Roots in the ClimaX npz layout.
    exclude : iterable of str
        Leading path parts to leave out (e.g. ``("chunks",)``).
    check_files : bool
        Also compare the files byte for byte (the kit's npz writer stamps a fixed date, so
        equal arrays give equal files).

    Raises
    ------
    AssertionError
        Naming the arrays or files that differ or exist in one root only.
    """
    a_root, b_root = Path(actual), Path(expected)
    skip = tuple(exclude)

    def kept(key: str) -> bool:
        return not any(key.startswith(prefix) for prefix in skip)

    left = {k: v for k, v in _arrays_of(a_root).items() if kept(k)}
    right = {k: v for k, v in _arrays_of(b_root).items() if kept(k)}
    problems = [f"{k}: only in {'the first' if k in left else 'the second'} root"
                for k in sorted(set(left) ^ set(right))]
    for key in sorted(set(left) & set(right)):
        a, b = left[key], right[key]
        if not _same_bits(a, b):
            problems.append(f"{key}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}, "
                            f"{'values' if a.shape == b.shape else 'shapes'} differ")
    if check_files and not problems:
        files = [str(p.relative_to(a_root)) for p in _array_files(a_root)]
        for rel in (f for f in files if kept(f)):
            if (a_root / rel).read_bytes() != (b_root / rel).read_bytes():
                problems.append(f"{rel}: same arrays, different file bytes")
    _fail(problems, f"shard roots {a_root} and {b_root} differ")
