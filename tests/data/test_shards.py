"""Shard reader: exact round trips, leads, DDP × worker partitioning, shuffling, layouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from turbda_kit.data.datasets import ForecastSamples, ForecastShards, partition
from turbda_kit.data.normaliser import Normaliser, denormalise, normalise
from turbda_kit.data.preprocess import preprocess
from turbda_kit.data.shards import open_shards
from turbda_kit.errors import InputError
from turbda_kit.io import write_dataset
from turbda_kit.testing import synthetic_nature_run

STEPS_PER_DAY, GRID = 8, 8  # 3-hourly output
SETTINGS = dict(start_train_day=0, start_val_day=4, start_test_day=5, end_day=7,
                steps_per_file=8, num_shards=2)  # shards of 4 steps, 8 training shards


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("nature") / "nature_sqg.nc"
    ds = synthetic_nature_run(7, STEPS_PER_DAY, GRID, seed=11)
    write_dataset(ds, path)
    return path, ds.theta.values


@pytest.fixture(scope="module")
def roots(source, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("roots")
    for fmt in ("npz", "zarr"):
        preprocess(source[0], base / fmt, **SETTINGS, fmt=fmt)
    return {"npz": base / "npz", "zarr": base / "zarr"}


def key(sample) -> str:
    x, y, lead = sample
    return hashlib.sha1(x.numpy().tobytes() + y.numpy().tobytes()
                        + lead.numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["npz", "zarr"])
def test_catalog_describes_the_root(roots, fmt):
    catalog = open_shards(roots[fmt])
    assert catalog.fmt == fmt
    assert catalog.variables == ("sqg_0", "sqg_10000")
    assert catalog.grid_shape == (GRID, GRID)
    assert catalog.hours_per_step == 3.0
    assert [(r.day, r.shard) for r in catalog.shards("train")] == [
        (d, s) for d in range(4) for s in range(2)]
    assert all(r.steps == 4 for r in catalog.shards("test"))
    np.testing.assert_array_equal(catalog.y, 20000.0 * np.arange(GRID))
    assert catalog.climatology("val").shape == (2, GRID, GRID)


@pytest.mark.parametrize("fmt", ["npz", "zarr"])
def test_samples_are_exact_source_slices_at_the_lead(source, roots, fmt):
    theta = source[1]
    data = ForecastSamples(roots[fmt], "test", lead_steps=2, normalize=False)
    assert len(data) == 4 * (4 - 2)  # 2 days x 2 shards, 2 inputs per shard of 4 steps
    for i in range(len(data)):
        shard, t = data.locate(i)
        first = 5 * STEPS_PER_DAY + shard * 4 + t
        x, y, lead = data[i]
        assert x.dtype == torch.float32 and x.shape == (2, GRID, GRID)
        assert np.array_equal(x.numpy(), theta[first])
        assert np.array_equal(y.numpy(), theta[first + 2])
        assert float(lead) == 6.0


def test_normalised_samples_round_trip(source, roots):
    theta = source[1]
    raw = ForecastSamples(roots["npz"], "val", normalize=False)
    scaled = ForecastSamples(roots["npz"], "val")
    norm = scaled.normaliser
    train = theta[:4 * STEPS_PER_DAY].astype(np.float64)
    np.testing.assert_allclose(norm.mean, train.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(norm.std, train.std(axis=(0, 2, 3)), rtol=1e-12)
    for i in range(len(raw)):
        x_raw, _, _ = raw[i]
        x, _, _ = scaled[i]
        assert abs(float(x.mean())) < 5 and 0.05 < float(x.std()) < 20
        np.testing.assert_allclose(norm.denormalise(x), x_raw, rtol=1e-6, atol=0)
        np.testing.assert_allclose(x, norm.normalise(x_raw), rtol=0, atol=1e-6)


def test_normalise_keeps_dtype_and_device(device):
    mean, std = np.array([290.0, 280.0]), np.array([2.0, 4.0])
    x = 280.0 + 3.0 * torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(0),
                                  dtype=torch.float64).to(device)
    z = normalise(x, mean, std)
    assert z.dtype == x.dtype and z.device == x.device
    torch.testing.assert_close(denormalise(z, mean, std), x, rtol=1e-14, atol=0)
    torch.testing.assert_close(z[:, 1], (x[:, 1] - 280.0) / 4.0)
    n = Normaliser(("a", "b"), mean, std)
    assert np.allclose(n.denormalise(n.normalise(x.cpu().numpy())), x.cpu().numpy())


@pytest.mark.parametrize("n_items", [0, 3, 8, 13])
@pytest.mark.parametrize("world, workers", [(1, 1), (2, 2), (3, 1), (4, 3)])
def test_partition_takes_each_item_once(n_items, world, workers):
    taken = [partition(n_items, r, world, w, workers) for r in range(world) for w in range(workers)]
    assert sorted(i for part in taken for i in part) == list(range(n_items))
    even = [partition(n_items, r, world, w, workers, drop_remainder=True)
            for r in range(world) for w in range(workers)]
    assert len({len(p) for p in even}) == 1
    assert sum(len(p) for p in even) == n_items - n_items % (world * workers)


@pytest.mark.parametrize("shuffle, buffer_size", [(False, 0), (True, 5)])
def test_union_over_ranks_and_workers_is_exactly_the_split(roots, shuffle, buffer_size):
    everything = ForecastSamples(roots["npz"], "train", lead_steps=(1, 3), seed=7)
    expected = sorted(key(everything[i]) for i in range(len(everything)))
    assert len(set(expected)) == len(expected) == 8 * 1  # 8 shards x (4 - 3) inputs
    seen = []
    for rank in range(2):
        data = ForecastShards(roots["npz"], "train", lead_steps=(1, 3), seed=7, rank=rank,
                              world_size=2, shuffle=shuffle, buffer_size=buffer_size)
        loader = DataLoader(data, batch_size=None, num_workers=2)
        seen += [key(sample) for sample in loader]
    assert sorted(seen) == expected  # no sample lost, none repeated


def test_random_leads_are_seeded_bounded_and_independent_of_the_split(source, roots):
    theta = source[1]
    data = ForecastSamples(roots["npz"], "train", lead_steps=(1, 2), seed=3, normalize=False)
    leads = np.concatenate([data.leads(i) for i in range(len(data.shard_refs))])
    assert set(leads.tolist()) == {1, 2}
    again = ForecastSamples(roots["npz"], "train", lead_steps=(1, 2), seed=3)
    assert np.array_equal(leads, np.concatenate([again.leads(i) for i in range(8)]))
    again.set_epoch(1)
    assert not np.array_equal(leads, np.concatenate([again.leads(i) for i in range(8)]))
    for i in range(len(data)):
        shard, t = data.locate(i)
        x, y, lead = data[i]
        steps = int(round(float(lead) / 3.0))
        assert np.array_equal(y.numpy(), theta[shard * 4 + t + steps])


def test_shuffling_reorders_but_keeps_the_samples_and_is_seeded(roots):
    def run(seed, epoch=0):
        data = ForecastShards(roots["npz"], "train", lead_steps=1, shuffle=True,
                              buffer_size=4, seed=seed)
        data.set_epoch(epoch)
        return [key(s) for s in data]

    plain = [key(s) for s in ForecastShards(roots["npz"], "train", lead_steps=1)]
    first = run(0)
    assert sorted(first) == sorted(plain) and first != plain
    assert run(0) == first
    assert run(0, epoch=1) != first and run(1) != first


def test_a_data_loader_batches_samples(roots):
    data = ForecastShards(roots["zarr"], "train", lead_steps=1)
    assert data.variables == ("sqg_0", "sqg_10000") and data.grid_shape == (GRID, GRID)
    x, y, lead = next(iter(DataLoader(data, batch_size=5, num_workers=1)))
    assert x.shape == y.shape == (5, 2, GRID, GRID)
    assert lead.shape == (5,) and torch.all(lead == 3.0)
    assert data.num_samples == 8 * 3


def test_npz_and_zarr_roots_give_the_same_samples(roots):
    a = ForecastSamples(roots["npz"], "val", lead_steps=1)
    b = ForecastSamples(roots["zarr"], "val", lead_steps=1)
    assert len(a) == len(b)
    assert all(key(a[i]) == key(b[i]) for i in range(len(a)))


def test_a_published_climax_layout_is_read_as_is(tmp_path):
    """A hand-made root in the published layout: no manifest, lat/lon files, day names > 9."""
    rng = np.random.default_rng(0)
    root = tmp_path / "published"
    (root / "train").mkdir(parents=True)
    fields = {}
    for day in (2, 10):
        for shard in (0, 1):
            data = {v: rng.normal(290, 3, (3, 1, 4, 4)).astype(np.float32)
                    for v in ("sqg_0", "sqg_10000")}
            fields[(day, shard)] = data
            np.savez(root / "train" / f"{day}_{shard}.npz", **data)
    np.savez(root / "train" / "climatology.npz", sqg_0=np.zeros((1, 4, 4)),
             sqg_10000=np.zeros((1, 4, 4)))
    np.savez(root / "normalize_mean.npz", sqg_0=np.array([290.0]), sqg_10000=np.array([291.0]))
    np.savez(root / "normalize_std.npz", sqg_0=np.array([3.0]), sqg_10000=np.array([2.0]))
    np.save(root / "lat.npy", np.arange(4.0))
    np.save(root / "lon.npy", np.arange(4.0))

    catalog = open_shards(root)
    assert catalog.manifest is None and catalog.grid_shape == (4, 4)
    assert [(r.day, r.shard) for r in catalog.shards("train")] == [(2, 0), (2, 1), (10, 0), (10, 1)]
    with pytest.raises(InputError, match="hours_per_step"):
        ForecastSamples(root, "train")
    data = ForecastSamples(root, "train", variables=["sqg_10000"], lead_steps=1,
                           hours_per_step=12.0)
    assert len(data) == 4 * 2
    x, y, lead = data[5]  # shard (10, 0), input time 1
    expected = (fields[(10, 0)]["sqg_10000"][1:3, 0] - 291.0) / 2.0
    np.testing.assert_allclose(x.numpy()[0], expected[0], rtol=1e-6)
    np.testing.assert_allclose(y.numpy()[0], expected[1], rtol=1e-6)
    assert float(lead) == 12.0


def test_bad_requests_are_refused(roots, tmp_path):
    with pytest.raises(InputError, match="longest lead must be < 4"):
        ForecastShards(roots["npz"], "train", lead_steps=4)
    with pytest.raises(InputError, match="1 <= min <= max"):
        ForecastShards(roots["npz"], "train", lead_steps=(3, 2))
    with pytest.raises(InputError, match="available: sqg_0, sqg_10000"):
        open_shards(roots["npz"], variables=["u_500"])
    with pytest.raises(InputError, match="split='training'"):
        ForecastSamples(roots["npz"], "training")
    with pytest.raises(InputError, match="neither normalize_mean.npz"):
        open_shards(tmp_path)
