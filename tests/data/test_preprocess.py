"""Preprocessing: exact shards, exact day splits, exact statistics, resume, refusal, MPI.

Both pipelines are covered: the default, where each rank reads its days straight from the
nature run, and ``via_chunks=True``, where stage 1 writes raw ``.npy`` chunk files first.
They must give byte-identical results.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from turbda_kit.data.chunking import (
    CHUNK_DIR,
    chunk_is_valid,
    chunk_meta_path,
    chunk_path,
    split_nature_run,
)
from turbda_kit.data.preprocess import preprocess
from turbda_kit.data.readers import (
    NatureRunReader,
    _layout_netcdf4,
    _layout_xarray,
    inspect_nature_run,
)
from turbda_kit.data.splits import SplitDays
from turbda_kit.errors import InputError
from turbda_kit.io import write_dataset
from turbda_kit.testing import assert_shard_roots_identical, synthetic_nature_run

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


def crash_at(stage_name: str, at: int):
    """A preprocess hook that raises ("killed") after ``stage_name`` item ``at``."""

    def hook(stage, index):
        if stage == stage_name and index == at:
            raise RuntimeError("killed")

    return hook


def test_a_run_killed_during_the_split_resumes_identically(nature, reference, tmp_path):
    root = tmp_path / "shards"

    with pytest.raises(RuntimeError, match="killed"):
        preprocess(nature, root, **SETTINGS, via_chunks=True, hook=crash_at("chunk", 1))
    assert chunk_path(root, 0).exists() and chunk_meta_path(root, 1).exists()
    assert not chunk_path(root, 2).exists()
    assert json.loads((root / "manifest.json").read_text())["status"] == "running"
    summary = preprocess(nature, root, **SETTINGS, via_chunks=True)
    assert (summary.chunks_skipped, summary.chunks_written) == (2, 6)
    assert_shard_roots_identical(root, reference)  # the reference was made without chunks
    assert not (root / CHUNK_DIR).exists()


@pytest.mark.parametrize("via_chunks", [False, True])
def test_a_run_killed_during_sharding_resumes_and_repairs_bad_files(nature, reference, tmp_path,
                                                                    via_chunks):
    root = tmp_path / "shards"

    with pytest.raises(RuntimeError, match="killed"):
        preprocess(nature, root, **SETTINGS, via_chunks=via_chunks, hook=crash_at("day", 2))
    # Damage one finished shard (and one chunk): both must be detected and rewritten.
    (root / "train" / "0_1.npz").write_bytes(b"not a zip file")
    stale = root / "test" / ".4_0.npz.tmp-123-456-abcdef.npz"  # a write cut off by the kill
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"PK\x03\x04 half an archive")
    if via_chunks:
        chunk_path(root, 7).write_bytes(b"garbage")
    summary = preprocess(nature, root, **SETTINGS, via_chunks=via_chunks, keep_chunks=True)
    assert not stale.exists()  # a finished root holds no temporaries
    expected_chunks = (1, 7) if via_chunks else (0, 0)
    assert (summary.chunks_written, summary.chunks_skipped) == expected_chunks
    assert summary.days_skipped == 2 and summary.days_written == 4  # days 1 and 2 (day 0 damaged)
    assert_shard_roots_identical(root, reference, exclude=(CHUNK_DIR,))


def test_a_root_started_through_chunks_resumes_directly(nature, reference, tmp_path):
    root = tmp_path / "shards"

    with pytest.raises(RuntimeError, match="killed"):
        preprocess(nature, root, **SETTINGS, via_chunks=True, hook=crash_at("day", 1))
    assert chunk_path(root, 7).exists()
    summary = preprocess(nature, root, **SETTINGS)
    assert (summary.days_skipped, summary.days_written) == (2, 4)
    assert (summary.chunks_written, summary.chunks_skipped) == (0, 0)
    assert not (root / CHUNK_DIR).exists()  # leftovers removed with the chunk directory
    assert_shard_roots_identical(root, reference)


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
    (dict(workers=0), "workers=0 must be an integer >= 1"),
    (dict(fmt="hdf5"), "fmt='hdf5'"),
    (dict(variable="pv"), "variable='pv' is not in"),
    (dict(levels=[5000.0]), "level 5000.0 m is not in"),
])
def test_bad_input_is_refused_with_a_clear_message(nature, tmp_path, changes, message):
    with pytest.raises(InputError, match=message):
        preprocess(nature, tmp_path / "out", **{**SETTINGS, **changes})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [1, 3])
def test_the_number_of_worker_threads_does_not_change_a_byte(nature, reference, tmp_path,
                                                             workers):
    preprocess(nature, tmp_path / "out", **SETTINGS, workers=workers)
    assert_shard_roots_identical(tmp_path / "out", reference)


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


def test_the_chunk_pipeline_equals_the_direct_one_byte_for_byte(nature, reference, tmp_path):
    root = tmp_path / "chunks"
    summary = preprocess(nature, root, **SETTINGS, via_chunks=True, keep_chunks=True)
    assert (summary.chunks_written, summary.chunks_skipped) == (8, 0)
    assert chunk_path(root, 0).name == "chunk_00000.npy"
    assert np.array_equal(np.load(chunk_path(root, 1)), theta(nature)[3:6])  # all levels
    assert_shard_roots_identical(root, reference, exclude=(CHUNK_DIR,))
    a = json.loads((root / "manifest.json").read_text())
    b = json.loads((reference / "manifest.json").read_text())
    assert a["settings"] == b["settings"] and a["statistics"] == b["statistics"]


def test_raw_chunk_files_are_verified_before_they_are_skipped(nature, tmp_path):
    info = inspect_nature_run(nature)
    assert split_nature_run(nature, tmp_path, 5, info=info) == {"written": 6, "skipped": 0}
    path = chunk_path(tmp_path, 2)
    assert chunk_is_valid(path, info, 2, 5)
    assert not chunk_is_valid(path, info, 3, 5)  # another chunk's place
    assert not chunk_is_valid(path, info, 2, 4)  # other steps per file: other times
    good_meta = chunk_meta_path(tmp_path, 2).read_text()
    foreign = inspect_nature_run(_write_other(tmp_path))
    assert not chunk_is_valid(path, foreign, 2, 5)  # another nature run's fingerprint
    chunk_meta_path(tmp_path, 2).unlink()  # data written, metadata not yet: unfinished
    assert not chunk_is_valid(path, info, 2, 5)
    chunk_meta_path(tmp_path, 2).write_text(good_meta)
    data = path.read_bytes()
    path.write_bytes(data[:-4])  # truncated
    assert not chunk_is_valid(path, info, 2, 5)
    path.write_bytes(data + b"\0" * 4)  # trailing bytes
    assert not chunk_is_valid(path, info, 2, 5)
    path.write_bytes(b"garbage")
    assert not chunk_is_valid(path, info, 2, 5)
    # A rerun rewrites exactly the bad chunk, and it comes back identical.
    assert split_nature_run(nature, tmp_path, 5, info=info) == {"written": 1, "skipped": 5}
    assert path.read_bytes() == data


def _write_other(tmp_path: Path) -> Path:
    other = tmp_path / "other.nc"
    if not other.exists():
        write_dataset(synthetic_nature_run(N_DAYS, STEPS_PER_DAY, GRID, seed=4), other)
    return other


def test_netcdf4_and_xarray_describe_a_nature_run_alike(nature, tmp_path):
    fast = _layout_netcdf4(nature, "theta")
    slow = _layout_xarray(nature, "theta")
    assert fast is not None  # write_dataset output takes the fast path
    assert (fast.shape, fast.dtype) == (slow.shape, slow.dtype)
    for name in ("seconds", "z", "y", "x", "first", "last"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    with NatureRunReader(nature, inspect_nature_run(nature)) as reader:
        assert reader.raw
        assert np.array_equal(reader.read(5, 9), theta(nature)[5:9])
    # Other order of dims, packed integers, a zarr store: xarray reads those.
    transposed = tmp_path / "transposed.nc"
    write_dataset(synthetic_nature_run(2, 4, 4).transpose("time", "y", "x", "z"), transposed)
    assert _layout_netcdf4(transposed, "theta") is None
    assert _layout_netcdf4(tmp_path / "absent.nc", "theta") is None


def test_compressed_sources_and_level_orders_read_exactly(nature, tmp_path):
    import xarray as xr

    compressed = tmp_path / "compressed.nc"
    with xr.open_dataset(nature) as ds:
        ds.load().to_netcdf(compressed, encoding={"theta": {
            "zlib": True, "complevel": 1, "chunksizes": (5, 1, GRID, GRID)}})
    source = theta(nature)
    for path in (nature, compressed):
        info = inspect_nature_run(path, levels=[10000.0, 0.0])  # reversed: not a slice
        with NatureRunReader(path, info) as reader:
            assert reader.raw
            assert np.array_equal(reader.read(3, 11), source[3:11][:, [1, 0]])
            out = np.empty((2, 2, GRID, GRID), dtype=np.float32)
            assert reader.read(0, 2, out=out) is out
            assert np.array_equal(out, source[:2][:, [1, 0]])
            with pytest.raises(InputError, match="out has shape"):
                reader.read(0, 3, out=out)
    roots = []
    for via_chunks in (False, True):
        roots.append(tmp_path / f"shards_{via_chunks}")
        summary = preprocess(compressed, roots[-1], **SETTINGS, levels=[10000.0, 0.0],
                             via_chunks=via_chunks)
        assert summary.variables == ["sqg_10000", "sqg_0"]
    assert_shard_roots_identical(*roots)
    with np.load(roots[0] / "test" / "5_0.npz") as npz:
        assert np.array_equal(npz["sqg_0"][:, 0], source[20:22, 0])


def test_packed_and_reordered_sources_are_decoded_through_xarray(tmp_path):
    import xarray as xr

    ds = synthetic_nature_run(N_DAYS, STEPS_PER_DAY, GRID, seed=5)
    packed = tmp_path / "packed.nc"
    ds.to_netcdf(packed, encoding={"theta": {"dtype": "int16", "scale_factor": 0.01,
                                             "add_offset": 290.0, "_FillValue": -32768}})
    reordered = tmp_path / "reordered.nc"
    write_dataset(ds.transpose("time", "y", "x", "z"), reordered)
    for path in (packed, reordered):
        info = inspect_nature_run(path)
        with NatureRunReader(path, info) as reader:
            assert not reader.raw
        root = tmp_path / f"shards_{path.stem}"
        preprocess(path, root, **SETTINGS)
        with xr.open_dataset(path) as opened:
            decoded = opened.theta.transpose("time", "z", "y", "x").values
        with np.load(root / "val" / "3_1.npz") as npz:
            first = 3 * STEPS_PER_DAY + 2
            assert npz["sqg_10000"].dtype == decoded.dtype
            assert np.array_equal(npz["sqg_10000"][:, 0], decoded[first:first + 2, 1])


def test_stage_times_and_the_via_chunks_flag(nature, tmp_path):
    summary = preprocess(nature, tmp_path / "shards", **SETTINGS)
    assert {"inspect", "read", "statistics", "write", "finalize"} <= set(summary.stage_seconds)
    assert "split" not in summary.stage_seconds
    assert all(v >= 0 for v in summary.stage_seconds.values())
    with pytest.raises(InputError, match="via_chunks='yes' must be True or False"):
        preprocess(nature, tmp_path / "other", **SETTINGS, via_chunks="yes")


@pytest.mark.mpi
@pytest.mark.parametrize("fmt", ["npz", "zarr"])
def test_two_ranks_write_byte_identical_shards_and_statistics(nature, reference, tmp_path, fmt):
    root = tmp_path / "parallel"
    proc = run_mpi(2, [str(SCRIPTS / "preprocess_mpi.py"), str(nature), str(root), fmt],
                   timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "chunks_written=0" in proc.stdout and "days_written=6" in proc.stdout
    if fmt == "npz":
        assert_shard_roots_identical(root, reference)
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


# preprocess_mpi.py (shared) always runs the default pipeline; this script also takes the
# mode and the stage a simulated crash happens in.
MPI_MODES_SCRIPT = textwrap.dedent("""
    import sys

    from turbda_kit.data.preprocess import preprocess
    from turbda_kit.parallel.mpi import get_comm

    nature, root, via_chunks = sys.argv[1], sys.argv[2], sys.argv[3] == "chunks"
    comm = get_comm()
    hook = None
    if len(sys.argv) > 4:
        fail_rank, fail_stage, fail_after = int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
        done = []

        def hook(stage, index):
            if stage == fail_stage and comm.Get_rank() == fail_rank:
                done.append(index)
                if len(done) >= fail_after:
                    raise RuntimeError(f"simulated crash after {stage} {index}")

    summary = preprocess(nature, root, 0, 3, 4, 6, steps_per_file=3, num_shards=2,
                         comm=comm, via_chunks=via_chunks, hook=hook)
    if comm.Get_rank() == 0:
        print(f"SUMMARY chunks_written={summary.chunks_written} "
              f"chunks_skipped={summary.chunks_skipped} days_written={summary.days_written} "
              f"days_skipped={summary.days_skipped}", flush=True)
""")


def modes_script(tmp_path: Path) -> str:
    path = tmp_path / "preprocess_modes_mpi.py"
    path.write_text(MPI_MODES_SCRIPT)
    return str(path)


@pytest.mark.mpi
def test_two_ranks_via_chunks_equal_the_serial_direct_run(nature, reference, tmp_path):
    root = tmp_path / "parallel"
    proc = run_mpi(2, [modes_script(tmp_path), str(nature), str(root), "chunks"], timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "chunks_written=8" in proc.stdout and "days_written=6" in proc.stdout
    assert_shard_roots_identical(root, reference)


@pytest.mark.mpi
@pytest.mark.parametrize("mode, stage", [("chunks", "chunk"), ("direct", "day")])
def test_a_crash_on_one_rank_aborts_the_job_and_a_rerun_resumes(nature, reference, tmp_path,
                                                                mode, stage):
    root = tmp_path / "parallel"
    args = [modes_script(tmp_path), str(nature), str(root), mode]
    crashed = run_mpi(2, [*args, "1", stage, "2"], timeout=120)
    said = f"stdout:\n{crashed.stdout}\nstderr:\n{crashed.stderr}"
    assert crashed.returncode != 0, said
    assert "simulated crash" in crashed.stderr, said
    resumed = run_mpi(2, args, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    skipped = "chunks_skipped=" if mode == "chunks" else "days_skipped="
    assert skipped in resumed.stdout and f"{skipped}0" not in resumed.stdout, resumed.stdout
    assert_shard_roots_identical(root, reference)


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_notebook_runs_serially_on_a_synthetic_run(tmp_path):
    from turbda_kit.workflow import run_notebook

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
