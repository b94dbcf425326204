"""The seed's published shards (ClimaX layout, no manifest) in training and evaluation (#16),
and kit roots the seed's own loader can read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from turbda_kit.data.datasets import ForecastSamples, ForecastShards
from turbda_kit.data.normaliser import Normaliser, read_normaliser
from turbda_kit.data.shards import open_shards
from turbda_kit.errors import InputError
from turbda_kit.surrogate.rollout import split_trajectory
from turbda_kit.testing import synthetic_nature_run, synthetic_shard_root

DAYS = (0, 3, 4, 6)
STEPS_PER_DAY = 4  # 6-hourly
VARIABLES = ("sqg_0", "sqg_10000")


@pytest.fixture(scope="module")
def seed_root(tmp_path_factory) -> Path:
    """Laid out as sqg_N64_12hrly_npy: only test/, float64, statistics of one day."""
    return synthetic_shard_root(tmp_path_factory.mktemp("seed") / "published", layout="climax",
                                split_days=DAYS, splits=("test",), dtype="float64", seed=5)


@pytest.fixture(scope="module")
def kit_root(tmp_path_factory) -> Path:
    return synthetic_shard_root(tmp_path_factory.mktemp("kit") / "shards", split_days=DAYS,
                                seed=5)


def theta() -> np.ndarray:
    return synthetic_nature_run(DAYS[-1], STEPS_PER_DAY, 8, seed=5).theta.values


def test_a_seed_root_is_described_as_it_is(seed_root):
    catalog = open_shards(seed_root)
    assert catalog.layout == "climax" and catalog.manifest is None
    assert catalog.splits == ("test",) and catalog.variables == VARIABLES
    assert catalog.hours_per_step is None  # not recorded: the caller gives it
    assert [(r.day, r.shard) for r in catalog.shards("test")] == [
        (d, s) for d in (4, 5) for s in range(2)]
    assert open_shards(seed_root, hours_per_step=6.0).hours_per_step == 6.0
    np.testing.assert_array_equal(catalog.y, 20000.0 * np.arange(8))  # the seed's metres


def test_missing_splits_say_which_exist_and_why(seed_root):
    catalog = open_shards(seed_root, hours_per_step=6.0)
    for split in ("train", "val"):
        with pytest.raises(InputError, match=f"split '{split}' of .* holds no shards: the splits "
                                             "with shards are test/.*only test/"):
            catalog.shards(split)
    with pytest.raises(InputError, match="only test/"):
        ForecastShards(seed_root, "train", hours_per_step=6.0)


def test_the_step_length_is_given_for_a_seed_root_and_checked_for_a_kit_root(seed_root,
                                                                             kit_root):
    with pytest.raises(InputError, match="hours_per_step is unknown .* pass hours_per_step"):
        ForecastSamples(seed_root, "test")
    samples = ForecastSamples(seed_root, "test", lead_steps=1, hours_per_step=6.0,
                              normalize=False)
    x, y, lead = samples[1]  # shards of 2 steps: one sample each; shard (4, 1) is times 18, 19
    np.testing.assert_array_equal(x.numpy(), theta()[18].astype(np.float32))
    np.testing.assert_array_equal(y.numpy(), theta()[19].astype(np.float32))
    assert float(lead) == 6.0
    assert open_shards(kit_root, hours_per_step=6.0).hours_per_step == 6.0
    with pytest.raises(InputError, match="contradicts .* records 6.0 h"):
        open_shards(kit_root, hours_per_step=12.0)
    with pytest.raises(InputError, match="contradicts"):
        ForecastSamples(open_shards(kit_root), "val", hours_per_step=12.0)
    with pytest.raises(InputError, match="hours_per_step=-1"):
        open_shards(seed_root, hours_per_step=-1)


def test_split_trajectory_takes_a_seed_root_with_its_step_length(seed_root):
    trajectory, hours = split_trajectory(open_shards(seed_root, hours_per_step=6.0), "test")
    assert hours == 6.0
    np.testing.assert_array_equal(trajectory.numpy(), theta()[16:24].astype(np.float32))


def test_the_seeds_statistics_are_one_days_and_can_be_used_on_kit_data(seed_root, kit_root):
    seed_stats = read_normaliser(seed_root)
    last_day = theta()[20:24].astype(np.float64)  # day 5, the last the seed's loop saw
    np.testing.assert_array_equal(seed_stats.mean, last_day.mean(axis=(0, 2, 3)))
    np.testing.assert_array_equal(seed_stats.std, last_day.std(axis=(0, 2, 3)))
    kit_stats = read_normaliser(kit_root)
    train = theta()[:12].astype(np.float64)
    np.testing.assert_allclose(kit_stats.mean, train.mean(axis=(0, 2, 3)), rtol=1e-13)
    assert not np.allclose(kit_stats.std, seed_stats.std)
    # Data the kit made, normalised as a model trained on the seed's statistics expects.
    catalog = open_shards(kit_root, normaliser=seed_stats)
    np.testing.assert_array_equal(catalog.normaliser.std, seed_stats.std)
    samples = ForecastSamples(catalog, "val", lead_steps=1)
    x, _, _ = samples[0]
    expected = (theta()[12].astype(np.float32) - seed_stats.mean.astype(np.float32)[:, None, None]) \
        / seed_stats.std.astype(np.float32)[:, None, None]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)
    reversed_stats = Normaliser(VARIABLES[::-1], seed_stats.mean[::-1], seed_stats.std[::-1])
    assert open_shards(kit_root, normaliser=reversed_stats).normaliser == \
        open_shards(kit_root, normaliser=seed_stats).normaliser
    with pytest.raises(InputError, match="not in the statistics"):
        open_shards(kit_root, normaliser=Normaliser(("sqg_0",), [0.0], [1.0]))


def test_a_kit_root_reads_in_the_seeds_loader(kit_root):
    """What src/sqg/datamodule.py and model/dataset.py of jqyin/sqg_vit do with a root,
    redone in numpy: statistics, coordinates, climatology and a shard all fit."""
    variables = list(VARIABLES)
    mean = dict(np.load(kit_root / "normalize_mean.npz"))
    std = dict(np.load(kit_root / "normalize_std.npz"))
    assert np.concatenate([mean[v] for v in variables]).shape == (2,)
    assert np.concatenate([std[v] for v in variables]).shape == (2,)
    lat, lon = np.load(kit_root / "lat.npy"), np.load(kit_root / "lon.npy")
    assert lat.shape == (8,) and lon.shape == (8,)
    w_lat = np.cos(np.deg2rad(lat))
    np.testing.assert_array_equal(w_lat / w_lat.mean(), np.ones(8))  # plain means: f-plane
    clim = np.load(kit_root / "val" / "climatology.npz")
    assert np.concatenate([clim[v] for v in variables]).shape == (2, 8, 8)
    shard = np.load(kit_root / "train" / "0_1.npz")
    x = np.concatenate([shard[k].astype(np.float32) for k in variables], axis=1)
    assert x.shape == (2, 2, 8, 8)
    np.testing.assert_array_equal(x, theta()[2:4])
    assert open_shards(kit_root).y is not None  # the kit still prefers y.npy (metres)
    np.testing.assert_array_equal(open_shards(kit_root).y, 20000.0 * np.arange(8))


PUBLISHED = os.environ.get("TURBDA_SEED_SHARDS")


@pytest.mark.skipif(not PUBLISHED, reason="set TURBDA_SEED_SHARDS to a copy of the seed's "
                                          "coupled_vit_ensf/sqg_N64_12hrly_npy")
def test_the_published_set_as_documented():
    """The numbers docs/preprocess.md states about jqyin/sqg_vit's published 64x64 shards."""
    root = Path(PUBLISHED)
    catalog = open_shards(root, hours_per_step=12.0)
    assert catalog.layout == "climax" and catalog.splits == ("test",)
    refs = catalog.shards("test")
    assert (refs[0].day, refs[-1].day, len(refs)) == (100, 399, 300)
    last = catalog.load(refs[-1]).astype(np.float64)
    assert last.dtype == np.float64 and last.shape == (2, 2, 64, 64)
    stats = read_normaliser(root)
    np.testing.assert_array_equal(stats.mean, last.mean(axis=(0, 2, 3)))
    np.testing.assert_array_equal(stats.std, last.std(axis=(0, 2, 3)))
    w_lat = np.cos(np.deg2rad(catalog.y))  # lat.npy holds metres
    w_lat = w_lat / w_lat.mean()
    assert np.abs(w_lat).max() > 1e11 and (w_lat < 0).sum() == 32
    trajectory, hours = split_trajectory(catalog, "test")
    assert trajectory.shape == (600, 2, 64, 64) and hours == 12.0
