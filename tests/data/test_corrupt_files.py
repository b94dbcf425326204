"""Damaged or missing files: every one is an InputError naming the file, what it should be,
and how to fix it (#13.4). Nothing is written into a root that is refused."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from turbda_kit.data.normaliser import read_normaliser
from turbda_kit.data.preprocess import preprocess
from turbda_kit.data.readers import inspect_nature_run
from turbda_kit.data.shards import open_shards
from turbda_kit.errors import InputError
from turbda_kit.io import write_dataset
from turbda_kit.testing import synthetic_nature_run, synthetic_shard_root

from ..conftest import run_mpi

SETTINGS = dict(start_train_day=0, start_val_day=3, start_test_day=4, end_day=6,
                steps_per_file=3, num_shards=2)


@pytest.fixture(scope="module")
def nature(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nature") / "nature_sqg.nc"
    write_dataset(synthetic_nature_run(7, 4, 8, seed=3), path)
    return path


@pytest.fixture()
def kit_root(tmp_path) -> Path:
    return synthetic_shard_root(tmp_path / "shards", split_days=(0, 3, 4, 6))


def says(path: Path, *phrases: str) -> str:
    """A regex matching a message that names ``path`` and every phrase, in that order."""
    return ".*".join([re.escape(str(path)), *(re.escape(p) for p in phrases)])


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.97])
def test_a_truncated_nature_run_is_named_with_the_fix(nature, tmp_path, fraction):
    data = nature.read_bytes()
    truncated = tmp_path / "nature_sqg.nc"
    truncated.write_bytes(data[:int(len(data) * fraction)])
    message = says(truncated, "cannot be read as a nature run", "theta (time, z, y, x)",
                   "To fix:", "01_generate_data")
    with pytest.raises(InputError, match=message):
        inspect_nature_run(truncated)
    with pytest.raises(InputError, match=message):
        preprocess(truncated, tmp_path / "out", **SETTINGS)
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_netcdf_is_named(tmp_path):
    other = tmp_path / "nature_sqg.nc"
    other.write_text("this is a text file\n")
    with pytest.raises(InputError, match=says(other, "cannot be read as a nature run")):
        inspect_nature_run(other)


def test_a_nature_file_without_theta_says_what_it_holds_and_what_to_pass(tmp_path):
    ds = synthetic_nature_run(2, 4, 4).rename({"theta": "pv"})
    path = tmp_path / "nature_sqg.nc"
    write_dataset(ds, path)
    message = says(path, "holds pv", "theta (time, z, y, x)", "pass variable=<name>")
    with pytest.raises(InputError, match="variable='theta' is not in " + message):
        preprocess(path, tmp_path / "out", 0, 1, 2, 3, steps_per_file=4, num_shards=1)
    assert not (tmp_path / "out").exists()


def test_a_shard_folder_without_its_statistics(kit_root):
    (kit_root / "normalize_std.npz").unlink()
    with pytest.raises(InputError, match=says(kit_root, "lacks normalize_std.npz",
                                              "preprocessing did not finish",
                                              "run preprocess again")):
        open_shards(kit_root)
    (kit_root / "normalize_mean.npz").unlink()
    with pytest.raises(InputError, match="lacks normalize_mean.npz and normalize_std.npz"):
        open_shards(kit_root)


def test_a_published_set_copied_without_its_statistics(tmp_path):
    root = synthetic_shard_root(tmp_path / "published", layout="climax", splits=("test",))
    for name in ("normalize_mean.npz", "normalize_std.npz"):
        (root / name).unlink()
    with pytest.raises(InputError, match=says(root, "lacks normalize_mean.npz",
                                              "beside its shards in test/",
                                              "copy both statistics files")):
        open_shards(root, hours_per_step=6.0)


@pytest.mark.parametrize("damage", ["truncate", "garble", "text"])
@pytest.mark.parametrize("name", ["normalize_mean.npz", "normalize_std.npz"])
def test_a_damaged_statistics_file(kit_root, name, damage):
    path = kit_root / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garble":  # keeps the zip directory: the CRC catches it
        middle = len(data) // 3
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 8])
                         + data[middle + 8:])
    else:
        path.write_text("mean = 290\n")
    message = says(path, "cannot be read as normalisation statistics", "To fix: delete it",
                   "run preprocess again with the same settings")
    with pytest.raises(InputError, match=message):
        open_shards(kit_root)
    with pytest.raises(InputError, match=message):
        read_normaliser(kit_root)


def test_the_fix_for_damaged_statistics_works(nature, tmp_path):
    root = tmp_path / "shards"
    preprocess(nature, root, **SETTINGS)
    good = (root / "normalize_mean.npz").read_bytes()
    (root / "normalize_mean.npz").unlink()  # what the message says to do with a damaged one
    summary = preprocess(nature, root, **SETTINGS)
    assert (summary.days_skipped, summary.days_written) == (6, 0)
    assert (root / "normalize_mean.npz").read_bytes() == good


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_a_damaged_shard_is_named_when_listed_or_loaded(kit_root, damage):
    catalog = open_shards(kit_root)
    refs = catalog.shards("train")  # listed while intact
    path = kit_root / "train" / "1_0.npz"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) - 100])  # loses the zip directory
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + b"\0" * 16 + data[middle + 16:])
    message = says(path, "cannot be read as a training shard", "(steps, 1, ny, nx)",
                   "To fix: delete the file and run preprocess again")
    if damage == "truncate":
        with pytest.raises(InputError, match=message):
            open_shards(kit_root).shards("train")
    ref = next(r for r in refs if r.path == path)
    with pytest.raises(InputError, match=message):
        catalog.load(ref)


def test_a_damaged_shard_of_a_published_set_says_to_copy_it_again(tmp_path):
    root = synthetic_shard_root(tmp_path / "published", layout="climax", splits=("test",))
    path = root / "test" / "5_1.npz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(InputError, match=says(path, "training shard",
                                              "copy the file again from the published")):
        open_shards(root, hours_per_step=6.0).shards("test")


def test_damaged_coordinates_and_climatology(kit_root):
    (kit_root / "y.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match=says(kit_root / "y.npy", "the y coordinate")):
        open_shards(kit_root)
    shutil.copy(kit_root / "x.npy", kit_root / "y.npy")
    clim = kit_root / "val" / "climatology.npz"
    clim.write_bytes(clim.read_bytes()[:-30])
    with pytest.raises(InputError, match=says(clim, "cannot be read as a climatology")):
        open_shards(kit_root).climatology("val")


@pytest.mark.parametrize("content", ['{"settings": {"format": "npz"', "[1, 2, 3]", "\xff\xfe"])
def test_a_manifest_that_is_not_json(nature, kit_root, content):
    manifest = kit_root / "manifest.json"
    manifest.write_bytes(content.encode("latin-1"))
    before = sorted(p.name for p in kit_root.iterdir())
    message = says(manifest, "cannot be read as the manifest", "JSON object",
                   "To fix: restore it from a copy of the root, or remove the root")
    with pytest.raises(InputError, match=message):
        open_shards(kit_root)
    with pytest.raises(InputError, match=message):
        preprocess(nature, kit_root, **SETTINGS)
    assert sorted(p.name for p in kit_root.iterdir()) == before
    assert manifest.read_bytes() == content.encode("latin-1")


BAD_MANIFEST_SCRIPT = textwrap.dedent("""
    import sys

    from turbda_kit.data.preprocess import preprocess
    from turbda_kit.errors import InputError
    from turbda_kit.parallel.mpi import get_comm

    comm = get_comm()
    try:
        preprocess(sys.argv[1], sys.argv[2], 0, 3, 4, 6, steps_per_file=3, num_shards=2,
                   comm=comm)
    except InputError as err:
        print(f"rank {comm.Get_rank()} refused: {str(err)[:60]}", flush=True)
""")


@pytest.mark.mpi
def test_a_bad_manifest_is_refused_on_every_rank(nature, tmp_path):
    """Rank 0 reads the manifest; the others must get its error, not wait forever."""
    root = tmp_path / "shards"
    root.mkdir()
    (root / "manifest.json").write_text("{not json")
    script = tmp_path / "bad_manifest.py"
    script.write_text(BAD_MANIFEST_SCRIPT)
    proc = run_mpi(2, [str(script), str(nature), str(root)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rank 0 refused" in proc.stdout and "rank 1 refused" in proc.stdout


def test_a_zarr_root_without_statistics(tmp_path):
    root = synthetic_shard_root(tmp_path / "zarr", split_days=(0, 3, 4, 6), fmt="zarr")
    import zarr

    group = zarr.open_group(str(root / "data.zarr"), mode="r+")
    del group.attrs["normalize_std"]
    with pytest.raises(InputError, match="no statistics in its attributes"):
        open_shards(root)


def test_a_statistics_file_of_other_variables(kit_root):
    np.savez(kit_root / "normalize_std.npz", u_500=np.array([1.0]))
    with pytest.raises(InputError, match="share no variable"):
        read_normaliser(kit_root)
    manifest = json.loads((kit_root / "manifest.json").read_text())
    assert manifest["status"] == "complete"
