"""Preprocessing: exact shards, exact day splits, exact statistics, resume, refusal, MPI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from turbda_kit.data.preprocess import (
    CHUNK_DIR,
    SplitDays,
    chunk_path,
    inspect_nature_run,
    preprocess,
    split_nature_run,
    synthetic_nature_run,
)
from turbda_kit.errors import InputError
from turbda_kit.io import write_dataset

from ..conftest import run_mpi

SCRIPTS = Path(__file__).resolve().parent / "scripts"
DAYS = dict(start_train_day=0, start_val_day=3, start_test_day=4, end_day=6)
STEPS_PER_DAY, GRID, N_DAYS = 4, 8, 7
SETTINGS = dict(**DAYS, steps_per_file=3, num_shards=2)


@pytest.fixture(scope="module")
def nature(tmp_path_factory) -> Path:
    """7 days at 6-hourly output on an 8x8 grid, two levels (0 and 10 km)."""
    path = tmp_path_factory.mktemp("nature") / "nature_sqg.nc"
    write_dataset(synthetic_nature_run(N_DAYS, STEPS_PER_DAY, GRID, seed=3), path)
    return path


@pytest.fixture(scope="module")
def reference(nature, tmp_path_factory) -> Path:
    """A clean serial run, the yardstick for resumed and parallel runs."""
    root = tmp_path_factory.mktemp("reference") / "shards"
    preprocess(nature, root, **SETTINGS)
    return root


def theta(nature: Path) -> np.ndarray:
    import xarray as xr

    with xr.open_dataset(nature) as ds:
        return ds.theta.transpose("time", "z", "y", "x").values


def arrays_of(root: Path) -> dict[str, np.ndarray]:
    """Every array under ``root`` (npz members and npy files), keyed by relative path."""
    found = {}
    for path in sorted(root.rglob("*.np[yz]")):
        rel = str(path.relative_to(root))
        if path.suffix == ".npy":
            found[rel] = np.load(path)
        else:
            with np.load(path) as npz:
                found.update({f"{rel}:{k}": npz[k] for k in npz.files})
    return found


def assert_same_arrays(a: Path, b: Path) -> None:
    left, right = arrays_of(a), arrays_of(b)
    assert sorted(left) == sorted(right)
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert left[key].shape == right[key].shape, key
        assert left[key].tobytes() == right[key].tobytes(), key


def test_layout_matches_climax(reference):
    names = ["sqg_0", "sqg_10000"]
    with np.load(reference / "normalize_mean.npz") as mean, \
            np.load(reference / "normalize_std.npz") as std:
        assert mean.files == names and std.files == names
        assert all(mean[n].shape == (1,) and std[n].shape == (1,) for n in names)
    for split, days in (("train", range(0, 3)), ("val", range(3, 4)), ("test", range(4, 6))):
        files = sorted(p.name for p in (reference / split).iterdir())
        expected = sorted([f"{d}_{s}.npz" for d in days for s in range(2)] + ["climatology.npz"])
        assert files == expected
        with np.load(reference / split / "climatology.npz") as clim:
            assert clim.files == names and clim["sqg_0"].shape == (1, GRID, GRID)
        with np.load(reference / split / f"{days[0]}_1.npz") as shard:
            assert shard.files == names
            assert shard["sqg_10000"].shape == (2, 1, GRID, GRID)
            assert shard["sqg_10000"].dtype == np.float32
    np.testing.assert_array_equal(np.load(reference / "y.npy"), 20000.0 * np.arange(GRID))
    np.testing.assert_array_equal(np.load(reference / "x.npy"), 20000.0 * np.arange(GRID))
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["settings"]["variables"] == names
    assert manifest["settings"]["hours_per_step"] == 6.0
    assert not (reference / CHUNK_DIR).exists()  # removed after success by default


def test_shards_are_exact_source_slices_and_splits_partition_the_days(nature, reference):
    source = theta(nature)
    seen = []
    for split, days in (("train", range(0, 3)), ("val", range(3, 4)), ("test", range(4, 6))):
        for day in days:
            for shard in range(2):
                first = day * STEPS_PER_DAY + shard * 2
                with np.load(reference / split / f"{day}_{shard}.npz") as npz:
                    for level, name in enumerate(("sqg_0", "sqg_10000")):
                        assert np.array_equal(npz[name][:, 0], source[first:first + 2, level])
                seen += [first, first + 1]
    # Every time of days 0..5 lies in exactly one shard of exactly one split; day 6 in none.
    assert sorted(seen) == list(range(6 * STEPS_PER_DAY))


def test_statistics_equal_numpy_on_the_training_days(nature, reference):
    source = theta(nature).astype(np.float64)
    train = source[:3 * STEPS_PER_DAY]
    with np.load(reference / "normalize_mean.npz") as mean, \
            np.load(reference / "normalize_std.npz") as std:
        for level, name in enumerate(("sqg_0", "sqg_10000")):
            np.testing.assert_allclose(mean[name], [train[:, level].mean()], rtol=1e-14)
            np.testing.assert_allclose(std[name], [train[:, level].std()], rtol=1e-12)
    for split, (a, b) in (("train", (0, 3)), ("val", (3, 4)), ("test", (4, 6))):
        with np.load(reference / split / "climatology.npz") as clim:
            expected = source[a * STEPS_PER_DAY:b * STEPS_PER_DAY].mean(axis=0)
            np.testing.assert_allclose(clim["sqg_10000"][0], expected[1], rtol=1e-7)


def test_a_completed_root_is_left_alone(nature, reference):
    summary = preprocess(nature, reference, **SETTINGS)
    assert summary.already_complete


def test_a_run_killed_during_the_split_resumes_identically(nature, reference, tmp_path):
    root = tmp_path / "shards"

    def crash_after_two(stage, index):
        if stage == "chunk" and index == 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        preprocess(nature, root, **SETTINGS, hook=crash_after_two)
    assert chunk_path(root, 0).exists() and chunk_path(root, 1).exists()
    assert not chunk_path(root, 2).exists()
    assert json.loads((root / "manifest.json").read_text())["status"] == "running"
    summary = preprocess(nature, root, **SETTINGS)
    assert (summary.chunks_skipped, summary.chunks_written) == (2, 6)
    assert_same_arrays(root, reference)


def test_a_run_killed_during_sharding_resumes_and_repairs_bad_files(nature, reference, tmp_path):
    root = tmp_path / "shards"

    def crash_on_day_two(stage, index):
        if stage == "day" and index == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        preprocess(nature, root, **SETTINGS, hook=crash_on_day_two)
    # Damage one finished shard and one chunk: both must be detected and rewritten.
    (root / "train" / "0_1.npz").write_bytes(b"not a zip file")
    chunk_path(root, 7).write_bytes(b"garbage")
    summary = preprocess(nature, root, **SETTINGS, keep_chunks=True)
    assert summary.chunks_written == 1 and summary.chunks_skipped == 7
    assert summary.days_skipped == 2 and summary.days_written == 4  # days 1 and 2 (day 0 damaged)
    arrays = {k: v for k, v in arrays_of(root).items() if not k.startswith(CHUNK_DIR)}
    reference_arrays = arrays_of(reference)
    assert sorted(arrays) == sorted(reference_arrays)
    assert all(arrays[k].tobytes() == reference_arrays[k].tobytes() for k in arrays)


def test_other_settings_in_the_same_root_are_refused(nature, reference, tmp_path):
    with pytest.raises(InputError, match="num_shards: 2 there, 4 now"):
        preprocess(nature, reference, **{**SETTINGS, "num_shards": 4})
    other = tmp_path / "other.nc"
    write_dataset(synthetic_nature_run(N_DAYS, STEPS_PER_DAY, GRID, seed=4), other)
    with pytest.raises(InputError, match="source_fingerprint"):
        preprocess(other, reference, **SETTINGS)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="no manifest.json"):
        preprocess(nature, foreign, **SETTINGS)


@pytest.mark.parametrize("changes, message", [
    (dict(end_day=8), "day 7 holds 0 of 4"),
    (dict(start_val_day=0), "strictly increasing"),
    (dict(start_test_day=3), "strictly increasing"),
    (dict(start_train_day=-1), "start_train_day=-1 must be >= 0"),
    (dict(num_shards=3), "num_shards=3 must divide the 4"),
    (dict(steps_per_file=0), "steps_per_file=0"),
    (dict(fmt="hdf5"), "fmt='hdf5'"),
    (dict(variable="pv"), "variable='pv' is not in"),
    (dict(levels=[5000.0]), "level 5000.0 m is not in"),
])
def test_bad_input_is_refused_with_a_clear_message(nature, tmp_path, changes, message):
    with pytest.raises(InputError, match=message):
        preprocess(nature, tmp_path / "out", **{**SETTINGS, **changes})
    assert not (tmp_path / "out").exists()


def test_missing_file_and_irregular_times_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        inspect_nature_run(tmp_path / "absent.nc")
    ds = synthetic_nature_run(2, 4, 4)
    ds = ds.assign_coords(time=ds.time.values ** 1.01)
    write_dataset(ds, tmp_path / "irregular.nc")
    with pytest.raises(InputError, match="not uniformly spaced"):
        inspect_nature_run(tmp_path / "irregular.nc")
    ds = synthetic_nature_run(2, 4, 4).assign_coords(time=7000.0 * np.arange(8))
    write_dataset(ds, tmp_path / "odd.nc")
    with pytest.raises(InputError, match="does not divide a day"):
        inspect_nature_run(tmp_path / "odd.nc")


def test_a_level_subset_and_a_zarr_source(tmp_path):
    path = tmp_path / "nature.zarr"
    write_dataset(synthetic_nature_run(N_DAYS, STEPS_PER_DAY, GRID, seed=3), path)
    summary = preprocess(path, tmp_path / "lid", **SETTINGS, levels=[10000.0])
    assert summary.variables == ["sqg_10000"]
    with np.load(tmp_path / "lid" / "val" / "3_0.npz") as npz:
        assert npz.files == ["sqg_10000"]


def test_split_days_and_chunks(nature, tmp_path):
    days = SplitDays(0, 3, 4, 6)
    assert [days.split_of(d) for d in range(6)] == ["train"] * 3 + ["val"] + ["test"] * 2
    info = inspect_nature_run(nature)
    assert info.steps_per_day == 4 and info.dt_seconds == 21600.0 and info.grid_shape == (8, 8)
    counts = split_nature_run(nature, tmp_path, steps_per_file=5, info=info)
    assert counts == {"written": 6, "skipped": 0}  # 28 times: five of 5, one of 3
    assert split_nature_run(nature, tmp_path, 5, info=info) == {"written": 0, "skipped": 6}


def test_zarr_store_holds_the_same_data_and_statistics(nature, reference, tmp_path):
    import xarray as xr
    import zarr

    root = tmp_path / "zarr"
    preprocess(nature, root, **SETTINGS, fmt="zarr")
    store = root / "data.zarr"
    attrs = zarr.open_group(str(store), mode="r").attrs
    with np.load(reference / "normalize_mean.npz") as mean, \
            np.load(reference / "normalize_std.npz") as std:
        for name in ("sqg_0", "sqg_10000"):
            assert attrs["normalize_mean"][name] == mean[name].tolist()
            assert attrs["normalize_std"][name] == std[name].tolist()
    test = xr.open_zarr(store, group="test", consolidated=False)
    with np.load(reference / "test" / "5_1.npz") as npz:
        assert np.array_equal(test.sqg_0.values[6:8], npz["sqg_0"][:, 0])
    with np.load(reference / "test" / "climatology.npz") as clim:
        assert np.array_equal(test.climatology_sqg_10000.values, clim["sqg_10000"][0])
    assert test.sqg_0.encoding["chunks"] == (2, GRID, GRID)  # one zarr chunk per shard


def test_an_interrupted_zarr_build_resumes(nature, tmp_path):
    import zarr

    root = tmp_path / "zarr"

    def crash_on_day_four(stage, index):
        if stage == "day" and index == 4:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        preprocess(nature, root, **SETTINGS, fmt="zarr", hook=crash_on_day_four)
    assert not (root / "data.zarr").exists()
    summary = preprocess(nature, root, **SETTINGS, fmt="zarr")
    assert summary.days_skipped == 5 and summary.days_written == 1  # day 4 finished first
    group = zarr.open_group(str(root / "data.zarr"), mode="r")
    assert np.array_equal(group["train"]["sqg_0"][:], theta(nature)[:12, 0])


@pytest.mark.mpi
@pytest.mark.parametrize("fmt", ["npz", "zarr"])
def test_two_ranks_write_byte_identical_shards_and_statistics(nature, reference, tmp_path, fmt):
    root = tmp_path / "parallel"
    proc = run_mpi(2, [str(SCRIPTS / "preprocess_mpi.py"), str(nature), str(root), fmt],
                   timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "chunks_written=8" in proc.stdout and "days_written=6" in proc.stdout
    if fmt == "npz":
        assert_same_arrays(root, reference)
        return
    import zarr

    serial = tmp_path / "serial"
    preprocess(nature, serial, **SETTINGS, fmt="zarr")
    a = zarr.open_group(str(root / "data.zarr"), mode="r")
    b = zarr.open_group(str(serial / "data.zarr"), mode="r")
    assert dict(a.attrs)["normalize_std"] == dict(b.attrs)["normalize_std"]
    for split in ("train", "val", "test"):
        for name in ("sqg_0", "sqg_10000", "climatology_sqg_0", "climatology_sqg_10000"):
            assert a[split][name][:].tobytes() == b[split][name][:].tobytes()


@pytest.mark.mpi
def test_a_crash_on_one_rank_aborts_the_job_and_a_rerun_resumes(nature, reference, tmp_path):
    root = tmp_path / "parallel"
    args = [str(SCRIPTS / "preprocess_mpi.py"), str(nature), str(root), "npz"]
    crashed = run_mpi(2, [*args, "1", "2"], timeout=120)
    assert crashed.returncode != 0
    assert "simulated crash" in crashed.stderr
    resumed = run_mpi(2, args, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert "chunks_skipped=" in resumed.stdout and "chunks_skipped=0" not in resumed.stdout
    assert_same_arrays(root, reference)


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_notebook_runs_serially_on_a_synthetic_run(tmp_path):
    from turbda_kit.runner import run_notebook

    result = run_notebook(REPO / "notebooks" / "02_preprocess.ipynb",
                          {"synthetic_if_missing": True}, tmp_path / "02_preprocess",
                          log_output=False)
    assert result.ok, result.record.get("error")
    assert (tmp_path / "02_preprocess" / "preprocess_fields.png").is_file()
    manifest = json.loads((tmp_path / "02_preprocess" / "shards" / "manifest.json").read_text())
    assert manifest["status"] == "complete"


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("script", ["slurm", "frontier"])
def test_the_launch_script_runs_locally_under_mpiexec(tmp_path, script):
    import os
    import subprocess
    import sys

    from ..conftest import mpiexec_path

    out = tmp_path / "02_preprocess"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "SRUN": f"{mpiexec_path()} -n 2", "OUT": str(out),
           "TURBDA_VENV": str(bindir.parent), "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(REPO / "launch" / script / "preprocess.sbatch"),
                           "-p", "synthetic_if_missing", "true", "-q"], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    assert (out / "logs" / "rank1.ipynb").is_file()
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
