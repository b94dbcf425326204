"""SQG nature runs: schema, content, kill-and-resume bit-for-bit, atomicity, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import xarray as xr

from turbda_kit.data.nature import nature_paths, sqg_nature_run
from turbda_kit.data.time_axis import TIME_UNITS, time_seconds
from turbda_kit.errors import DivergenceError, InputError
from turbda_kit.models.sqg import SQGModel, bao2024_sqg64, pv_to_theta, random_initial_state
from turbda_kit.testing import assert_cf_complete, assert_datasets_identical

DAY = 86400.0
INTERVAL = 43200.0
# Attributes that record when a run happened, which differ between equal runs, and whether
# the work tree had uncommitted changes then (it can change while the suite runs).
VARYING_PROVENANCE = ("finished_utc", "provenance_created_utc", "provenance_git_dirty")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny grids: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def params16():
    return bao2024_sqg64().replace(N=16, dt=4800.0, diff_efold=4 * DAY)


def run(path, **kwargs):
    settings = {"params": params16(), "days": 3, "output_interval_s": INTERVAL, "seed": 11,
                "spinup_days": 2, "chunk": 2, "progress": False}
    settings.update(kwargs)
    return sqg_nature_run(path=path, **settings)


def load(path) -> xr.Dataset:
    engine = "zarr" if str(path).endswith(".zarr") else "netcdf4"
    return xr.open_dataset(path, engine=engine).load()


class Kill(Exception):
    """Stands in for the process being killed."""


def killer(phase: str, count: int):
    def callback(p: str, c: int) -> None:
        if (p, c) == (phase, count):
            raise Kill(f"killed after {p} checkpoint {c}")
    return callback


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """Uninterrupted runs in both formats (shared by the resume tests)."""
    root = tmp_path_factory.mktemp("reference")
    runs = {fmt: load(run(root / f"truth.{fmt}")) for fmt in ("nc", "zarr")}
    for fmt in runs:
        runs[fmt].attrs["_path"] = str(root / f"truth.{fmt}")
    return runs


@pytest.mark.parametrize("fmt", ["nc", "zarr"])
def test_output_schema(reference_runs, fmt):
    ds = reference_runs[fmt]
    p = params16()
    assert ds.theta.dims == ("time", "z", "y", "x")
    assert ds.theta.shape == (7, 2, 16, 16) and ds.theta.dtype == np.float32
    assert ds.theta.attrs["units"] == "K" and "long_name" in ds.theta.attrs
    for name in ("z", "y", "x"):
        assert ds[name].attrs["units"] == "m" and ds[name].attrs["long_name"]
    assert_cf_complete(ds)
    # CF time: decoded to dates from the nominal time zero; seconds since the first output.
    assert ds.time.encoding["units"] == TIME_UNITS == "seconds since 2000-01-01 00:00:00"
    assert ds.time.encoding["calendar"] == "proleptic_gregorian"
    assert str(ds.time.values[1])[:19] == "2000-01-01T12:00:00"
    np.testing.assert_array_equal(time_seconds(ds), np.arange(7) * INTERVAL)
    engine = "zarr" if fmt == "zarr" else "netcdf4"
    with xr.open_dataset(ds.attrs["_path"], engine=engine, decode_times=False) as raw:
        assert raw.time.dtype == np.float64  # stored as before: float64 seconds
        np.testing.assert_array_equal(raw.time.values, np.arange(7) * INTERVAL)
        assert raw.time.attrs["long_name"] and raw.time.attrs["axis"] == "T"
    np.testing.assert_array_equal(ds.z.values, [0.0, p.H])
    np.testing.assert_allclose(ds.x.values, np.arange(16) * p.dx)
    np.testing.assert_allclose(ds.y.values, np.arange(16) * p.dx)
    attrs = ds.attrs
    assert attrs["complete"] == "true"
    assert attrs["sqg_N"] == 16 and attrs["sqg_dt"] == 4800.0 and attrs["sqg_symmetric"] == 1
    assert attrs["sqg_scalefact"] == pytest.approx(p.scalefact)
    assert attrs["seed"] == 11 and attrs["output_interval_s"] == INTERVAL
    assert attrs["spinup_steps"] == 36
    assert "provenance_turbda_kit_version" in attrs and "provenance_git_revision" in attrs
    assert bool(np.isfinite(ds.theta.values).all())
    # side files are gone once finished
    paths = nature_paths(attrs["_path"])
    assert not paths["checkpoint"].exists() and not paths["parts"].exists()


def test_content_is_the_model_trajectory_in_kelvin(reference_runs):
    """Record k = pv_to_theta of the model state after the spin-up plus k intervals,
    reproduced here independently (same seed, same blocks) in float64."""
    ds = reference_runs["nc"]
    p = params16()
    model = SQGModel(p)
    state = random_initial_state(p, torch.Generator().manual_seed(11))
    block = 2 * 9  # chunk * steps per output: the spin-up checkpoint cadence
    done = 0
    while done < 36:
        n = min(block, 36 - done)
        state = model.advance(state, n)
        done += n
    for k in range(7):
        if k:
            state = model.advance(state, 9)
        expected = pv_to_theta(state, p).float().numpy()
        np.testing.assert_array_equal(ds.theta.values[k], expected)
    np.testing.assert_array_equal(ds.theta.values, reference_runs["zarr"].theta.values)


@pytest.mark.parametrize("fmt", ["nc", "zarr"])
@pytest.mark.parametrize("kill_at", [("spinup", 18), ("output", 2), ("output", 4)])
def test_kill_and_resume_equals_uninterrupted(tmp_path, reference_runs, fmt, kill_at):
    path = tmp_path / f"truth.{fmt}"
    with pytest.raises(Kill):
        run(path, on_checkpoint=killer(*kill_at))
    paths = nature_paths(path)
    assert paths["checkpoint"].exists()
    if fmt == "nc":
        assert not path.exists()  # the netCDF file only appears complete
    elif kill_at[0] == "output":
        assert load(path).attrs["complete"] == "false"
    resumed = load(run(path))
    assert resumed.attrs["complete"] == "true" and "resumed_utc" in resumed.attrs
    assert_datasets_identical(resumed, reference_runs[fmt],
                              ignore_attrs=VARYING_PROVENANCE + ("resumed_utc", "_path"))
    assert not paths["checkpoint"].exists() and not paths["parts"].exists()


@pytest.mark.parametrize("fmt", ["nc", "zarr"])
def test_records_written_after_the_last_checkpoint_are_discarded(tmp_path, reference_runs,
                                                                 fmt):
    """A crash between writing data and replacing the checkpoint: emulate it by putting an
    older checkpoint back after more data was written; the resumed file must still equal
    the uninterrupted one."""
    path = tmp_path / f"truth.{fmt}"
    paths = nature_paths(path)
    saved = tmp_path / "old-checkpoint.pt"

    def callback(phase: str, count: int) -> None:
        if (phase, count) == ("output", 2):
            shutil.copy(paths["checkpoint"], saved)
        if (phase, count) == ("output", 6):
            raise Kill("late kill")

    with pytest.raises(Kill):
        run(path, on_checkpoint=callback)
    shutil.copy(saved, paths["checkpoint"])
    if fmt == "nc":  # a temporary file of an interrupted part write is cleaned up too
        (paths["parts"] / ".part-00000006.nc.tmp-xyz.nc").write_bytes(b"garbage")
    resumed = load(run(path))
    np.testing.assert_array_equal(resumed.theta.values, reference_runs[fmt].theta.values)


def test_finished_run_is_returned_and_other_settings_refused(tmp_path):
    path = tmp_path / "truth.nc"
    run(path)
    mtime = path.stat().st_mtime_ns
    assert run(path) == path and path.stat().st_mtime_ns == mtime  # nothing recomputed
    with pytest.raises(InputError, match="overwrite=True"):
        run(path, seed=12)
    run(path, seed=12, overwrite=True)
    assert load(path).attrs["seed"] == 12
    # an unfinished run with other settings is refused too
    other = tmp_path / "other.zarr"
    with pytest.raises(Kill):
        run(other, on_checkpoint=killer("output", 2))
    with pytest.raises(InputError, match="checkpoint"):
        run(other, days=2)
    assert load(run(other, days=2, overwrite=True)).theta.shape[0] == 5


def test_divergence_stops_cleanly_with_the_last_good_state(tmp_path):
    """A fast jet (U = 300 m/s, 1-day relaxation) with dt = 4 h exceeds CFL 1 after a day."""
    params = bao2024_sqg64().replace(N=16, dt=14400.0, diff_efold=4 * DAY, U=300.0,
                                     tdiab=DAY)
    path = tmp_path / "blowup.zarr"
    with pytest.raises(DivergenceError, match="CFL") as info:
        sqg_nature_run(params, days=5, output_interval_s=DAY, path=path, spinup_days=0,
                       chunk=1, progress=False)
    saved = info.value.saved_path
    assert saved == str(nature_paths(path)["checkpoint"])
    checkpoint = torch.load(saved, weights_only=True)
    assert checkpoint["n_written"] == 2
    assert bool(torch.isfinite(checkpoint["state"]).all())
    ds = load(path)
    assert ds.attrs["complete"] == "false" and ds.theta.shape[0] == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"output_interval_s": 5000.0}, "whole number of model steps"),
    ({"days": 1.1}, "whole number"),
    ({"chunk": 0}, "chunk"),
    ({"spinup_days": -1.0}, "spinup_days"),
    ({"seed": -3}, "seed"),
    ({"fmt": "zarr"}, "does not end in"),
    ({"fmt": "grib"}, "fmt"),
    ({"dtype": torch.float16}, "dtype"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        run(tmp_path / "truth.nc", **kwargs)


def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(InputError, match="suffix"):
        run(tmp_path / "truth.h5")
