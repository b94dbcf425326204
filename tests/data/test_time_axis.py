"""Nature-run time (#20): CF-decodable on disk, and files with the old units still read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

from turbda_kit.data.nature import nature_paths, sqg_nature_run
from turbda_kit.data.preprocess import preprocess
from turbda_kit.data.readers import _layout_netcdf4, _layout_xarray, inspect_nature_run
from turbda_kit.data.time_axis import (
    TIME_CALENDAR,
    TIME_UNITS,
    seconds_from_stored,
    time_attrs,
    time_in_seconds,
    time_seconds,
)
from turbda_kit.errors import InputError
from turbda_kit.io import write_dataset
from turbda_kit.models.sqg import bao2024_sqg64
from turbda_kit.testing import (
    assert_cf_complete,
    assert_shard_roots_identical,
    synthetic_nature_run,
)

SETTINGS = dict(start_train_day=1, start_val_day=3, start_test_day=4, end_day=6,
                steps_per_file=3, num_shards=2)


def old_style(ds: xr.Dataset) -> xr.Dataset:
    """The same run with time as files written before the CF encoding carry it."""
    return ds.assign_coords(time=("time", ds.time.values,
                                  {"units": "s", "long_name": "time since start of output"}))


def test_the_encoding_decodes_to_dates_from_the_nominal_time_zero():
    assert TIME_UNITS == "seconds since 2000-01-01 00:00:00"
    assert TIME_CALENDAR == "proleptic_gregorian"
    ds = synthetic_nature_run(3, 4, 4, start_day=2)
    decoded = xr.decode_cf(ds)
    assert decoded.time.dtype.kind == "M"
    assert str(decoded.time.values[0])[:19] == "2000-01-03T00:00:00"  # day 2
    np.testing.assert_array_equal(time_seconds(decoded), ds.time.values)
    np.testing.assert_array_equal(time_seconds(ds), ds.time.values)        # not decoded
    np.testing.assert_array_equal(time_seconds(old_style(ds)), ds.time.values)
    assert_cf_complete(ds)
    assert_cf_complete(decoded)
    with pytest.raises(AssertionError, match="units 's'.*seconds since <date>"):
        assert_cf_complete(old_style(ds))


def test_seconds_from_other_units_and_values():
    values = np.array([0.0, 0.5, 1.0])
    np.testing.assert_array_equal(seconds_from_stored(values, "hours since 1990-1-1"),
                                  [0.0, 1800.0, 3600.0])
    np.testing.assert_array_equal(seconds_from_stored(values, "days since 2000-01-01",
                                                      "standard"), [0.0, 43200.0, 86400.0])
    assert seconds_from_stored(values, "days since 2000-01-01", "noleap") is None
    assert seconds_from_stored(values, "K") is None
    dates = np.array(["2000-01-01T06:00", "2000-01-01T12:00"], dtype="datetime64[ns]")
    np.testing.assert_array_equal(time_in_seconds(dates, TIME_UNITS), [21600.0, 43200.0])
    np.testing.assert_array_equal(time_in_seconds(dates, "hours since 2000-01-01 06:00 UTC"),
                                  [0.0, 21600.0])
    np.testing.assert_array_equal(time_in_seconds(dates), [0.0, 21600.0])  # from the first
    np.testing.assert_array_equal(time_in_seconds(np.array([1, 2], "timedelta64[h]")),
                                  [3600.0, 7200.0])
    with pytest.raises(InputError, match="no 'time'"):
        time_seconds(xr.Dataset())


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_old_and_new_files_are_read_alike(tmp_path, suffix):
    """Same data, old units 's' or CF units, netCDF (fast path) or zarr (xarray): the same
    description, fingerprint and byte-identical shards."""
    ds = synthetic_nature_run(7, 4, 8, seed=2)
    new, old = tmp_path / f"new{suffix}", tmp_path / f"old{suffix}"
    write_dataset(ds, new)
    write_dataset(old_style(ds), old)
    described, described_old = inspect_nature_run(new), inspect_nature_run(old)
    assert dataclasses.replace(described_old, path=described.path) == described
    if suffix == ".nc":
        for path in (new, old):
            fast, slow = _layout_netcdf4(path, "theta"), _layout_xarray(path, "theta")
            assert fast is not None  # read without xarray, old file or new
            assert fast.seconds.tobytes() == slow.seconds.tobytes()
    preprocess(new, tmp_path / "from_new", **SETTINGS)
    preprocess(old, tmp_path / "from_old", **SETTINGS)
    assert_shard_roots_identical(tmp_path / "from_new", tmp_path / "from_old")


def test_a_run_begun_by_an_older_version_finishes_with_the_cf_units(tmp_path):
    """Parts written with units 's' before a resume: the finished file is CF all the same."""
    params = bao2024_sqg64().replace(N=16, dt=4800.0, diff_efold=4 * 86400.0)
    path = tmp_path / "truth.nc"

    class Kill(Exception):
        pass

    def kill(phase, count):
        if (phase, count) == ("output", 4):
            raise Kill

    settings = dict(params=params, days=3, output_interval_s=43200.0, path=path, seed=1,
                    spinup_days=1, chunk=2, progress=False)
    with pytest.raises(Kill):
        sqg_nature_run(**settings, on_checkpoint=kill)
    parts = sorted(nature_paths(path)["parts"].glob("part-*.nc"))
    assert len(parts) == 2
    for part in parts:  # as an older version wrote them
        with xr.open_dataset(part, decode_times=False) as opened:
            ds = opened.load()
        write_dataset(old_style(ds), part)
    sqg_nature_run(**settings)
    with xr.open_dataset(path) as finished:
        assert finished.time.encoding["units"] == TIME_UNITS
        assert_cf_complete(finished)
        np.testing.assert_array_equal(time_seconds(finished), 43200.0 * np.arange(7))


def test_time_attrs_keep_a_long_name_and_axis():
    attrs = time_attrs("time since the first output")
    assert attrs == {"units": TIME_UNITS, "calendar": TIME_CALENDAR, "standard_name": "time",
                     "long_name": "time since the first output", "axis": "T"}
    assert "axis" not in time_attrs("t", axis=False)
