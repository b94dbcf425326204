"""SQG nature runs: spin up from seeded noise, then stream the truth to netCDF or zarr.

A nature run is the "true" trajectory that observations are drawn from and forecasts are
scored against. :func:`sqg_nature_run` writes it as an xarray Dataset

* ``theta (time, z, y, x)`` float32, K: boundary potential temperature anomaly
  (``pv * scalefact``) at the surface (``z = 0``) and the lid (``z = H``);
* coordinates ``time`` (float64 seconds since the first output, which is the spun-up
  state, in the CF units ``"seconds since 2000-01-01 00:00:00"``: xarray decodes them to
  dates, see :mod:`turbda_kit.data.time_axis`), ``z``, ``y``, ``x`` (m), with CF
  ``units``/``long_name``;
* ``attrs``: the model parameters (``sqg_*``), the run settings, provenance
  (``provenance_*``), a ``run_fingerprint`` and ``complete = "true"`` once finished.

Streaming, resuming, atomicity
------------------------------
Nothing holds the whole run in memory: every ``chunk`` output times are flushed, then a
side checkpoint ``<path>.checkpoint.pt`` with the full-precision model state is replaced
atomically. A run killed at any point and started again with the same arguments resumes
from the last checkpoint and produces a file equal bit-for-bit to an uninterrupted run
(the model state is never reconstructed from the float32 output). Records written after
the last checkpoint are discarded on resume.

* netCDF (``.nc``): each flush is its own small netCDF file in ``<path>.parts/`` (written
  atomically); at the end they are concatenated lazily (dask) into ``<path>`` through a
  temporary file that is renamed into place, so ``<path>`` only ever exists complete.
  A netCDF/HDF5 file appended in place can be corrupted by a crash mid-write; whole
  per-flush files cannot.
* zarr (``.zarr``): the store at ``<path>`` grows by appending along ``time`` (zarr time
  chunks = ``chunk``, so an append never rewrites earlier chunks); on resume it is
  truncated back to the checkpoint. ``complete`` is ``"false"`` until the very last
  write sets it to ``"true"``: check it before using a store that may still be running.

Blow-up: if the model diverges (NaN/inf or CFL > 1) the run stops with
:class:`~turbda_kit.errors.DivergenceError`; the checkpoint keeps the last good state
and the output keeps every record before it (not marked complete).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import provenance
from ..cf import CONVENTIONS
from ..device import resolve_device
from ..errors import DivergenceError, InputError
from ..io import atomic_path, write_dataset
from ..models.sqg import SQGModel, SQGParams, pv_to_theta, random_initial_state
from ..optional import require
from ..progress import progress_bar
from .time_axis import time_attrs

__all__ = ["sqg_nature_run", "nature_paths", "FORMAT_SUFFIXES"]

DAY_SECONDS = 86400.0
FORMAT_SUFFIXES = {"nc": ".nc", "zarr": ".zarr"}
_CHECKPOINT_VERSION = 1
_PART_RE = re.compile(r"^part-(\d{8})\.nc$")
_TIME_ATTRS = time_attrs("time since the first output (the spun-up state)")


def nature_paths(path: str | os.PathLike) -> dict[str, Path]:
    """The files a nature run at ``path`` uses: ``output``, ``checkpoint``, ``parts``."""
    final = Path(path)
    return {"output": final,
            "checkpoint": final.with_name(final.name + ".checkpoint.pt"),
            "parts": final.with_name(final.name + ".parts")}


def sqg_nature_run(params: SQGParams, days: float, output_interval_s: float,
                   path: str | os.PathLike, seed: int = 0, spinup_days: float = 100.0,
                   fmt: str | None = None, chunk: int = 16,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                   progress: bool = True, overwrite: bool = False,
                   on_checkpoint: Callable[[str, int], None] | None = None) -> Path:
    """Run the SQG model from seeded noise and stream ``theta`` (K) to ``path``.

    Parameters
    ----------
    params : SQGParams
        Model parameters (e.g. ``turbda_kit.models.sqg.bao2024_sqg64()``).
    days : float
        Length of the stored run, days. The output holds ``days * 86400 /
        output_interval_s + 1`` times: the spun-up state at ``time = 0`` and one every
        ``output_interval_s`` after it.
    output_interval_s : float
        Time between stored states, s; a whole number of model steps ``params.dt``.
    path : path-like
        Output ``*.nc`` (netCDF4) or ``*.zarr`` (zarr store directory).
    seed : int
        Seed of the initial noise (``torch.Generator`` on the CPU, so device-independent).
    spinup_days : float
        Integration before the first output (rounded to whole steps), days; not stored.
    fmt : {"nc", "zarr"} or None
        Output format; ``None`` takes it from the suffix of ``path``.
    chunk : int
        Output times per flush (and per zarr time chunk); bounds the memory used and the
        work lost to a crash. Spin-up is checkpointed at the same cadence in model time.
    device : str or torch.device
        Where the model runs (``"auto"`` picks a GPU when visible).
    dtype : torch.dtype
        Model precision (float64 or float32); output is float32 either way.
    progress : bool
        Report progress (rank 0 only) through :mod:`turbda_kit.progress`.
    overwrite : bool
        Replace an existing output/checkpoint made with different settings (otherwise
        that is an error; an identical finished run is returned as is).
    on_checkpoint : callable(phase, count) or None
        Called after each checkpoint with ``phase`` ``"spinup"`` (count = spin-up steps
        done) or ``"output"`` (count = output times written); for monitoring and tests.

    Returns
    -------
    Path
        ``path``, complete.

    Raises
    ------
    InputError
        Bad arguments, or an existing run with other settings and ``overwrite=False``.
    DivergenceError
        The model blew up; ``saved_path`` is the checkpoint with the last good state.

    Examples
    --------
    >>> from turbda_kit.models.sqg import bao2024_sqg64
    >>> params = bao2024_sqg64().replace(N=32, dt=2400.0, diff_efold=2 * 86400.0)
    >>> sqg_nature_run(params, days=2, output_interval_s=43200, path="truth.nc",
    ...                spinup_days=1, progress=False)  # doctest: +SKIP
    PosixPath('truth.nc')
    """
    plan = _plan(params, days, output_interval_s, path, seed, spinup_days, fmt, chunk, dtype)
    paths = nature_paths(plan["path"])
    device = resolve_device(device)
    fingerprint = plan["fingerprint"]

    # ---- what is already on disk --------------------------------------------------------
    if _output_complete(paths["output"], plan["fmt"]):
        if _output_fingerprint(paths["output"], plan["fmt"]) == fingerprint:
            _remove(paths["checkpoint"], paths["parts"])
            return paths["output"]
        if not overwrite:
            raise InputError(f"{paths['output']} already holds a finished nature run with other "
                             "settings: choose another path or pass overwrite=True")
        _remove(paths["output"])
    checkpoint = _load_checkpoint(paths["checkpoint"])
    if checkpoint is not None and checkpoint["fingerprint"] != fingerprint:
        if not overwrite:
            raise InputError(f"{paths['checkpoint']} belongs to an unfinished nature run with "
                             "other settings (params, seed, days, interval, spin-up, chunk, "
                             "dtype or format): resume it with those, or pass overwrite=True "
                             "to start again")
        checkpoint = None
    if checkpoint is None:
        # a fresh start: whatever partial output exists is stale
        _remove(paths["checkpoint"], paths["parts"], paths["output"])

    model = SQGModel(params)
    if checkpoint is None:
        generator = torch.Generator().manual_seed(seed)
        state = random_initial_state(params, generator, device=device, dtype=dtype)
        attrs = _dataset_attrs(plan)
        phase, spinup_done, n_written = "spinup", 0, 0
    else:
        state = checkpoint["state"].to(device=device, dtype=dtype)
        attrs = json.loads(checkpoint["attrs_json"])
        phase = checkpoint["phase"]
        spinup_done, n_written = checkpoint["spinup_steps_done"], checkpoint["n_written"]
        attrs = {**attrs, "resumed_utc": provenance.utc_now()}

    def save(phase_: str, spin: int, written: int, state_: torch.Tensor) -> None:
        _save_checkpoint(paths["checkpoint"], {
            "version": _CHECKPOINT_VERSION, "fingerprint": fingerprint, "phase": phase_,
            "spinup_steps_done": spin, "n_written": written,
            "attrs_json": json.dumps(attrs, default=_json_default),
            "state": state_.detach().to("cpu").clone()})
        if on_checkpoint is not None:
            on_checkpoint(phase_, spin if phase_ == "spinup" else written)

    def diverged(err: DivergenceError, when: str) -> DivergenceError:
        return DivergenceError(f"SQG nature run diverged during {when}: {err} The last good "
                               f"state is in the checkpoint {paths['checkpoint']}; the output "
                               "is left unfinished.", saved_path=str(paths["checkpoint"]))

    # ---- spin-up ------------------------------------------------------------------------
    total_spinup = plan["spinup_steps"]
    if phase == "spinup" and spinup_done < total_spinup:
        block = plan["spinup_block"]
        bar = progress_bar(total_spinup, desc="sqg spin-up (steps)",
                           enabled=None if progress else False)
        if spinup_done:
            bar.update(spinup_done)
        try:
            while spinup_done < total_spinup:
                n = min(block, total_spinup - spinup_done)
                try:
                    state = model.advance(state, n)
                except DivergenceError as err:
                    raise diverged(err, "spin-up") from err
                spinup_done += n
                save("spinup", spinup_done, 0, state)
                bar.update(n)
        finally:
            bar.close()

    # ---- output -------------------------------------------------------------------------
    writer = _NetCDFParts(paths, plan) if plan["fmt"] == "nc" else _ZarrAppender(paths, plan)
    writer.prepare(n_written)
    n_out = plan["n_out"]
    if phase == "output":
        # the checkpoint holds the state of record n_written - 1: step to the next record
        try:
            state = model.advance(state, plan["steps_per_output"])
        except DivergenceError as err:
            raise diverged(err, "output") from err
    bar = progress_bar(n_out, desc="sqg nature run (outputs)",
                       enabled=None if progress else False)
    if n_written:
        bar.update(n_written)
    buffer: list[np.ndarray] = []
    try:
        index = n_written
        while index < n_out:
            buffer.append(pv_to_theta(state, params).to("cpu", torch.float32).numpy())
            index += 1
            bar.update(1)
            if len(buffer) == plan["chunk"] or index == n_out:
                writer.write(index - len(buffer), np.stack(buffer), attrs)
                buffer = []
                save("output", total_spinup, index, state)
            if index < n_out:
                try:
                    state = model.advance(state, plan["steps_per_output"])
                except DivergenceError as err:
                    raise diverged(err, "output") from err
    finally:
        bar.close()
    writer.finish(attrs)
    _remove(paths["checkpoint"], paths["parts"])
    return paths["output"]


# --------------------------------------------------------------------------------------
# Planning, fingerprint, attributes
# --------------------------------------------------------------------------------------


def _plan(params: SQGParams, days: float, output_interval_s: float, path: Any, seed: int,
          spinup_days: float, fmt: str | None, chunk: int, dtype: torch.dtype) -> dict[str, Any]:
    if not isinstance(params, SQGParams):
        raise InputError(f"params must be an SQGParams, got {type(params).__name__}")
    for name, value in (("days", days), ("output_interval_s", output_interval_s)):
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise InputError(f"{name} = {value!r}: must be finite and > 0")
    if not _is_number(spinup_days) or not math.isfinite(spinup_days) or spinup_days < 0:
        raise InputError(f"spinup_days = {spinup_days!r}: must be finite and >= 0")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed = {seed!r}: must be an integer >= 0")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk = {chunk!r}: must be an integer >= 1 (output times per flush)")
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype = {dtype}: use torch.float64 (recommended) or torch.float32")
    steps_per_output = output_interval_s / params.dt
    if abs(steps_per_output - round(steps_per_output)) > 1e-9 * steps_per_output:
        raise InputError(f"output_interval_s = {output_interval_s:g} is not a whole number of "
                         f"model steps (dt = {params.dt:g} s): use a multiple of dt")
    steps_per_output = int(round(steps_per_output))
    intervals = days * DAY_SECONDS / output_interval_s
    if abs(intervals - round(intervals)) > 1e-9 * max(intervals, 1.0) or round(intervals) < 1:
        raise InputError(f"days = {days:g} is not a whole number (>= 1) of output intervals "
                         f"({output_interval_s:g} s)")
    final = Path(path)
    suffix_fmt = {v: k for k, v in FORMAT_SUFFIXES.items()}.get(final.suffix)
    if fmt is None:
        if suffix_fmt is None:
            raise InputError(f"cannot tell the format of {final}: use a '.nc' or '.zarr' suffix "
                             "or pass fmt='nc'/'zarr'")
        fmt = suffix_fmt
    if fmt not in FORMAT_SUFFIXES:
        raise InputError(f"fmt = {fmt!r}: choose 'nc' (netCDF4) or 'zarr'")
    if suffix_fmt != fmt:
        raise InputError(f"path {final} does not end in {FORMAT_SUFFIXES[fmt]!r} as fmt={fmt!r} "
                         "requires")
    spinup_steps = int(round(spinup_days * DAY_SECONDS / params.dt))
    plan: dict[str, Any] = {
        "path": final, "fmt": fmt, "days": float(days), "seed": int(seed),
        "output_interval_s": float(output_interval_s), "steps_per_output": steps_per_output,
        "n_out": int(round(intervals)) + 1, "chunk": chunk,
        "spinup_days": float(spinup_days), "spinup_steps": spinup_steps,
        # spin-up checkpoints at the flush cadence in model time
        "spinup_block": max(1, chunk * steps_per_output),
        "dtype": str(dtype).replace("torch.", ""), "params": params.to_dict(),
    }
    identity = {k: plan[k] for k in ("fmt", "days", "seed", "output_interval_s", "chunk",
                                     "spinup_steps", "dtype", "params")}
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    plan["fingerprint"] = hashlib.sha256(blob).hexdigest()[:16]
    return plan


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _dataset_attrs(plan: dict[str, Any]) -> dict[str, Any]:
    params = plan["params"]
    attrs: dict[str, Any] = {
        "title": "SQG nature run (turbda_kit)",
        "model": "f-plane surface quasi-geostrophic model with a rigid lid "
                 "(Tulloch & Smith 2009, sec. 3), turbda_kit.models.sqg",
        "Conventions": CONVENTIONS,
    }
    for key, value in params.items():
        attrs[f"sqg_{key}"] = int(value) if isinstance(value, bool) else value
    scalefact = params["f"] * params["theta0"] / params["g"]
    attrs.update({
        "sqg_scalefact": scalefact,
        "seed": plan["seed"], "days": plan["days"], "spinup_days": plan["spinup_days"],
        "spinup_steps": plan["spinup_steps"], "output_interval_s": plan["output_interval_s"],
        "steps_per_output": plan["steps_per_output"], "model_dtype": plan["dtype"],
        "chunk": plan["chunk"], "run_fingerprint": plan["fingerprint"],
    })
    attrs.update(provenance.as_attrs(provenance.collect()))
    return attrs


def _coords(plan: dict[str, Any], start: int, count: int) -> dict[str, Any]:
    params = plan["params"]
    n, dx = params["N"], params["L"] / params["N"]
    time = (np.arange(start, start + count, dtype=np.float64) * plan["output_interval_s"])
    return {
        "time": ("time", time, _TIME_ATTRS),
        "z": ("z", np.array([0.0, params["H"]]), {"units": "m", "long_name": "height of the "
                                                  "boundary (0: surface, H: lid)",
                                                  "standard_name": "height",
                                                  "positive": "up", "axis": "Z"}),
        "y": ("y", np.arange(n, dtype=np.float64) * dx, {
            "units": "m", "long_name": "northward distance",
            "standard_name": "projection_y_coordinate", "axis": "Y"}),
        "x": ("x", np.arange(n, dtype=np.float64) * dx, {
            "units": "m", "long_name": "eastward distance",
            "standard_name": "projection_x_coordinate", "axis": "X"}),
    }


def _dataset(plan: dict[str, Any], start: int, theta: np.ndarray, attrs: dict[str, Any]):
    import xarray as xr

    theta_attrs = {
        "units": "K",
        "long_name": "boundary potential temperature anomaly",
        "comment": "theta - theta0 - theta0 nsq z / g at z = 0 and z = H; model PV = theta / "
                   "sqg_scalefact (m/s)",
    }
    return xr.Dataset({"theta": (("time", "z", "y", "x"), theta, theta_attrs)},
                      coords=_coords(plan, start, theta.shape[0]), attrs=dict(attrs))


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def _save_checkpoint(path: Path, content: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file means "start again"
        warnings.warn(f"ignoring unreadable nature-run checkpoint {path}: {err}", stacklevel=3)
        return None
    if not isinstance(content, dict) or content.get("version") != _CHECKPOINT_VERSION:
        return None
    return content


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------


def _output_complete(path: Path, fmt: str) -> bool:
    return _read_attr(path, fmt, "complete") == "true"


def _output_fingerprint(path: Path, fmt: str) -> str | None:
    return _read_attr(path, fmt, "run_fingerprint")


def _read_attr(path: Path, fmt: str, name: str) -> Any:
    if not path.exists():
        return None
    try:
        if fmt == "zarr":
            zarr = require("zarr", "zarr nature runs")
            return zarr.open_group(str(path), mode="r").attrs.get(name)
        netCDF4 = require("netCDF4", "netCDF nature runs")
        with netCDF4.Dataset(str(path), "r") as nc:
            return getattr(nc, name, None)
    except Exception:  # noqa: BLE001 - an unreadable output is not complete
        return None


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


class _NetCDFParts:
    """One netCDF file per flush in ``<path>.parts/``, concatenated at the end."""

    def __init__(self, paths: dict[str, Path], plan: dict[str, Any]):
        self.final, self.parts, self.plan = paths["output"], paths["parts"], plan

    def prepare(self, n_written: int) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        for entry in self.parts.iterdir():
            match = _PART_RE.match(entry.name)
            # parts past the checkpoint and temporaries of an interrupted write are stale
            if match is None or int(match.group(1)) >= n_written:
                _remove(entry)

    def write(self, start: int, theta: np.ndarray, attrs: dict[str, Any]) -> None:
        ds = _dataset(self.plan, start, theta, {**attrs, "complete": "false"})
        write_dataset(ds, self.parts / f"part-{start:08d}.nc")

    def finish(self, attrs: dict[str, Any]) -> None:
        import xarray as xr

        files = sorted(p for p in self.parts.iterdir() if _PART_RE.match(p.name))
        starts = [int(_PART_RE.match(p.name).group(1)) for p in files]  # type: ignore[union-attr]
        expected = list(range(0, self.plan["n_out"], self.plan["chunk"]))
        if starts != expected:
            raise RuntimeError(f"nature-run parts in {self.parts} do not cover the run "
                               f"(found starts {starts}, expected {expected})")
        # Times stay the stored float64 seconds (no decoding round trip); their attributes
        # are today's, also for parts an older version wrote before a resume.
        with xr.open_mfdataset(files, combine="nested", concat_dim="time",
                               data_vars="minimal", coords="minimal", compat="override",
                               join="override", decode_times=False,
                               decode_timedelta=False) as parts:
            ds = parts.assign_coords(time=("time", parts["time"].values, dict(_TIME_ATTRS)))
            ds.attrs = {**attrs, "complete": "true", "finished_utc": provenance.utc_now()}
            n = self.plan["params"]["N"]
            encoding = {"theta": {"dtype": "float32", "chunksizes": (1, 2, n, n)}}
            with atomic_path(self.final) as tmp:
                ds.to_netcdf(tmp, encoding=encoding)


class _ZarrAppender:
    """A zarr store grown along ``time``; truncated back to the checkpoint on resume."""

    def __init__(self, paths: dict[str, Path], plan: dict[str, Any]):
        self.final, self.plan = paths["output"], plan

    def prepare(self, n_written: int) -> None:
        if n_written == 0:
            _remove(self.final)
            return
        zarr = require("zarr", "zarr nature runs")
        if not self.final.exists():
            raise InputError(f"the checkpoint says {n_written} output times were written but "
                             f"{self.final} is missing: delete the checkpoint "
                             f"({self.final.name}.checkpoint.pt) to start again")
        group = zarr.open_group(str(self.final), mode="r+")
        length = group["time"].shape[0]
        if length < n_written:
            raise InputError(f"{self.final} holds {length} output times but its checkpoint "
                             f"{n_written}: the store was modified; delete both to start again")
        if length > n_written:  # written after the last checkpoint: drop
            theta = group["theta"]
            theta.resize((n_written, *theta.shape[1:]))
            group["time"].resize((n_written,))
            with _quiet_zarr():
                zarr.consolidate_metadata(str(self.final))

    def write(self, start: int, theta: np.ndarray, attrs: dict[str, Any]) -> None:
        zarr = require("zarr", "zarr nature runs")
        ds = _dataset(self.plan, start, theta, {**attrs, "complete": "false"})
        with _quiet_zarr():
            if start == 0:
                n = self.plan["params"]["N"]
                encoding = {"theta": {"chunks": (self.plan["chunk"], 2, n, n)},
                            "time": {"chunks": (self.plan["chunk"],)}}
                ds.to_zarr(self.final, mode="w", encoding=encoding, consolidated=False)
            else:
                ds.to_zarr(self.final, append_dim="time", consolidated=False)
            zarr.consolidate_metadata(str(self.final))

    def finish(self, attrs: dict[str, Any]) -> None:
        zarr = require("zarr", "zarr nature runs")
        group = zarr.open_group(str(self.final), mode="r+")
        group["time"].attrs.update(_TIME_ATTRS)  # also when an older version began the store
        group.attrs.update({**{k: v for k, v in attrs.items()},
                            "finished_utc": provenance.utc_now()})
        group.attrs["complete"] = "true"  # last: marks the store finished
        with _quiet_zarr():
            zarr.consolidate_metadata(str(self.final))
