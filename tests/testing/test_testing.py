"""The public testing module: builders are seeded and realistic, assertions say where."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from turbda_kit.data.shards import open_shards
from turbda_kit.errors import InputError
from turbda_kit.testing import (
    assert_cf_complete,
    assert_datasets_identical,
    assert_ensembles_close,
    assert_shard_roots_identical,
    small_ensemble,
    synthetic_nature_run,
    synthetic_shard_root,
)


def test_synthetic_nature_run_is_seeded_and_cf_complete():
    a = synthetic_nature_run(n_days=3, steps_per_day=2, grid=4, seed=1)
    assert a.theta.dims == ("time", "z", "y", "x") and a.theta.shape == (6, 2, 4, 4)
    assert a.theta.dtype == np.float32 and a.theta.attrs["units"] == "K"
    np.testing.assert_array_equal(a.time.values, 43200.0 * np.arange(6))
    assert_cf_complete(a)
    assert_datasets_identical(a, synthetic_nature_run(n_days=3, steps_per_day=2, grid=4, seed=1))
    with pytest.raises(AssertionError, match="theta: 192 of 192 values differ"):
        assert_datasets_identical(a, synthetic_nature_run(n_days=3, steps_per_day=2, grid=4,
                                                          seed=2))
    with pytest.raises(InputError, match="grid=0"):
        synthetic_nature_run(grid=0)


def test_synthetic_shard_roots_in_both_layouts_hold_the_same_fields(tmp_path):
    kit = synthetic_shard_root(tmp_path / "kit", split_days=(0, 2, 3, 4), seed=3)
    seed = synthetic_shard_root(tmp_path / "seed", layout="climax", split_days=(0, 2, 3, 4),
                                splits=("val", "test"), seed=3)
    assert (tmp_path / "kit_nature.nc").is_file() and (kit / "manifest.json").is_file()
    a, b = open_shards(kit), open_shards(seed, hours_per_step=6.0)
    assert (a.layout, b.layout) == ("kit", "climax")
    assert a.splits == ("train", "val", "test") and b.splits == ("val", "test")
    for ref_a, ref_b in zip(a.shards("test"), b.shards("test")):
        assert (ref_a.day, ref_a.shard) == (ref_b.day, ref_b.shard)
        np.testing.assert_array_equal(a.load(ref_a), b.load(ref_b))
    with pytest.raises(InputError, match="layout='zip'"):
        synthetic_shard_root(tmp_path / "x", layout="zip")
    with pytest.raises(InputError, match="always holds train, val and test"):
        synthetic_shard_root(tmp_path / "y", splits=("test",))
    with pytest.raises(InputError, match="splits="):
        synthetic_shard_root(tmp_path / "z", layout="climax", splits=("training",))


def test_small_ensemble_is_seeded_members_first_and_device_independent():
    a = small_ensemble(5, (2, 3, 3), mean=290.0, spread=2.0, seed=4)
    assert a.shape == (5, 2, 3, 3) and a.dtype == torch.float64
    torch.testing.assert_close(a, small_ensemble(5, (2, 3, 3), mean=290.0, spread=2.0, seed=4),
                               rtol=0, atol=0)
    generator = torch.Generator().manual_seed(4)
    first = small_ensemble(5, (2, 3, 3), mean=290.0, spread=2.0, generator=generator)
    torch.testing.assert_close(first, a, rtol=0, atol=0)
    second = small_ensemble(5, (2, 3, 3), mean=290.0, spread=2.0, generator=generator)
    assert not torch.equal(first, second)  # the generator advanced
    big = small_ensemble(4000, (10,), mean=1.0, spread=3.0, seed=0, dtype=torch.float32)
    assert big.dtype == torch.float32
    assert abs(float(big.mean()) - 1.0) < 0.1 and abs(float(big.std()) - 3.0) < 0.1
    with pytest.raises(InputError, match="n_members=0"):
        small_ensemble(0, (3,))


def test_assert_ensembles_close_names_the_members_that_differ():
    expected = small_ensemble(4, (2, 5), seed=0)
    assert_ensembles_close(expected.clone(), expected)
    assert_ensembles_close(expected.numpy(), expected, check_dtype=True)
    nudged = expected.clone()
    nudged[2, 1, 3] += 1e-3
    assert_ensembles_close(nudged, expected, atol=2e-3)
    with pytest.raises(AssertionError, match=r"in 1 of 4 members \[2\].*member 2, index \(1, 3\)"):
        assert_ensembles_close(nudged, expected, atol=1e-4)
    nudged[0, 0, 0] = float("nan")
    with pytest.raises(AssertionError, match=r"members \[0, 2\]"):
        assert_ensembles_close(nudged, expected, atol=1e-4)
    with pytest.raises(AssertionError, match="shapes"):
        assert_ensembles_close(expected[:3], expected)
    with pytest.raises(AssertionError, match="dtypes"):
        assert_ensembles_close(expected.float(), expected)
    assert_ensembles_close(expected.float(), expected, rtol=1e-6, check_dtype=False)


def test_assert_datasets_identical_is_bitwise_and_lists_attributes():
    ds = synthetic_nature_run(n_days=1, steps_per_day=2, grid=3, seed=0)
    other = ds.copy(deep=True)
    other.theta.values[0, 0, 0, 0] = ds.theta.values[0, 0, 0, 0] + 0.5
    with pytest.raises(AssertionError, match=r"theta: 1 of 36 values differ, first at "
                                             r"\{'time': 0, 'z': 0, 'y': 0, 'x': 0\}"):
        assert_datasets_identical(other, ds)
    zeros = xr.Dataset({"a": ("i", np.array([0.0, 1.0]))})
    negative = xr.Dataset({"a": ("i", np.array([-0.0, 1.0]))})
    with pytest.raises(AssertionError, match="a: 1 of 2 values differ"):
        assert_datasets_identical(negative, zeros)
    labelled = ds.assign_attrs(finished_utc="2026-01-01T00:00:00Z")
    with pytest.raises(AssertionError, match="dataset: attribute 'finished_utc' only in the first"):
        assert_datasets_identical(labelled, ds)
    assert_datasets_identical(labelled, ds, ignore_attrs=("finished_utc",))
    assert_datasets_identical(labelled, ds, check_attrs=False)
    with pytest.raises(AssertionError, match="theta: dtype float64 vs float32"):
        assert_datasets_identical(ds.astype("float64"), ds)
    with pytest.raises(AssertionError, match="variable 'extra' only in the first"):
        assert_datasets_identical(ds.assign(extra=("time", [1, 2])), ds)


def test_assert_cf_complete_lists_what_is_missing():
    ds = synthetic_nature_run(n_days=1, steps_per_day=2, grid=3)
    bare = ds.assign(u=(("y", "x"), np.zeros((3, 3))))
    bare["x"].attrs = {}
    with pytest.raises(AssertionError, match=r"u: no units\n  u: no long_name\n  x: no units"):
        assert_cf_complete(bare)
    with pytest.raises(AssertionError, match="no time coordinate"):
        assert_cf_complete(ds.isel(time=0, drop=True))
    assert_cf_complete(ds.isel(time=0, drop=True), require_time=False)


def test_assert_shard_roots_identical_names_the_arrays(tmp_path):
    a = synthetic_shard_root(tmp_path / "a", split_days=(0, 2, 3, 4), seed=1)
    b = synthetic_shard_root(tmp_path / "b", split_days=(0, 2, 3, 4), seed=1)
    c = synthetic_shard_root(tmp_path / "c", split_days=(0, 2, 3, 4), seed=2)
    assert_shard_roots_identical(a, b)
    with pytest.raises(AssertionError, match=r"normalize_mean.npz:sqg_0: float64\(1,\) vs "
                                             r"float64\(1,\), values differ"):
        assert_shard_roots_identical(a, c)
    (b / "train" / "0_0.npz").unlink()
    with pytest.raises(AssertionError, match=r"train/0_0.npz:sqg_0: only in the first root"):
        assert_shard_roots_identical(a, b)
    assert_shard_roots_identical(a, b, exclude=("train",))
