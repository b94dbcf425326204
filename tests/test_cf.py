"""Every Dataset the kit writes is CF-complete: one checker walks a toy instance of each writer.

The checker is :func:`turbda_kit.testing.assert_cf_complete` (units and long names on every
variable and coordinate, ``Conventions``, a coordinate for every dimension, a time axis
xarray decodes). Each writer runs at toy size, its file is read back decoded and
undecoded, and where it has a ``time`` axis xarray must decode it to dates.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from turbda_kit.cf import CONVENTIONS, VariableInfo, describe
from turbda_kit.io import open_dataset, write_dataset
from turbda_kit.testing import assert_cf_complete

REPO = Path(__file__).resolve().parents[1]
L96 = dict(n_cycles=4, spinup_cycles=1, n_members=6)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Toy sizes: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_file(path, *, time: bool = True, **open_kwargs) -> xr.Dataset:
    """Assert the file at ``path`` is CF-complete read back decoded and undecoded."""
    with open_dataset(path, decode_times=False, **open_kwargs) as raw:
        assert_cf_complete(raw, require_time=time)
    with open_dataset(path, **open_kwargs) as decoded:
        assert_cf_complete(decoded, require_time=time)
        if time:
            assert decoded["time"].dtype.kind == "M", f"{path}: time not decoded to dates"
        assert decoded.attrs["Conventions"] == CONVENTIONS
        return decoded.load()


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- one toy run per writer ---------------------------------------------------------------


def write_nature_run(tmp_path: Path) -> list[Path]:
    from turbda_kit.data.nature import sqg_nature_run
    from turbda_kit.models.sqg import bao2024_sqg64

    params = bao2024_sqg64().replace(N=8, dt=4800.0, diff_efold=4 * 86400.0)
    return [sqg_nature_run(params, days=1, output_interval_s=43200.0, spinup_days=0.5,
                           path=tmp_path / f"nature.{fmt}", chunk=2, progress=False)
            for fmt in ("nc", "zarr")]


def write_synthetic_nature_run(tmp_path: Path) -> list[Path]:
    from turbda_kit.testing import synthetic_nature_run

    return [write_dataset(synthetic_nature_run(2, 4, 4), tmp_path / "synthetic.nc")]


def write_preprocess_benchmark_input(tmp_path: Path) -> list[Path]:
    bench = _module(REPO / "benchmarks" / "bench_preprocess.py")
    path = tmp_path / "bench_nature.nc"
    bench.make_nature_run(path, size_gb=1e-6, grid=4, steps_per_day=2)
    return [path]


def write_lorenz96_problem(tmp_path: Path) -> list[Path]:
    from turbda_kit.data.lorenz96_problem import Lorenz96Problem
    from turbda_kit.data.lorenz96_problem import write_lorenz96_problem as write

    problem = Lorenz96Problem(n=8, n_cycles=3, burn_in_steps=10, operators=("arctan", "identity"))
    return [write(problem, tmp_path / f"l96.{fmt}", show_progress=False)
            for fmt in ("nc", "zarr")]


def write_cycling_results(tmp_path: Path) -> list[Path]:
    from turbda_kit.experiments import build_experiment, get_preset, run_comparison

    preset = get_preset("sakov2008").replace(**L96)
    run_comparison(["letkf"], lambda name: build_experiment(preset, name, seed=1), tmp_path,
                   "cycling", show_progress=False, verbose=False, save_members="both")
    return [tmp_path / "cycling_letkf.nc", tmp_path / "cycling_letkf_members.nc"]


def write_scaling_study(tmp_path: Path) -> list[Path]:
    from turbda_kit.experiments.scaling import ScalingStudy, run_scaling
    from turbda_kit.experiments.scaling_results import combine_scaling

    study = ScalingStudy(mode="weak", sizes=(256,), ranks=(1,), n_members=4, euler_steps=5,
                         n_cycles=2, steps_per_cycle=2, spinup_steps=5, block_size=256)
    ds = run_scaling(study, None, device="cpu", show_progress=False, log=False)
    # The same point relabelled stands in for a second job (2 ranks); both merged as
    # `bench_ensf_scaling.py combine` writes them.
    paths = [write_dataset(ds, tmp_path / "scaling_1.nc"),
             write_dataset(ds.assign_coords(ranks=("ranks", [2], ds["ranks"].attrs)),
                           tmp_path / "scaling_2.nc")]
    return [*paths, write_dataset(combine_scaling(paths), tmp_path / "scaling_combined.nc")]


def write_sweep(tmp_path: Path) -> list[Path]:
    from turbda_kit.experiments import get_preset
    from turbda_kit.experiments.sweep import sweep

    out = tmp_path / "sweep.nc"
    sweep(get_preset("sakov2008").replace(n_members=6), "letkf",
          [{"inflation_factor": 1.02}, {"inflation_factor": 1.06}], n_cycles=4,
          spinup_cycles=1, out_path=out)
    return [out]


WRITERS = {
    "nature run": (write_nature_run, True),
    "synthetic nature run": (write_synthetic_nature_run, True),
    "preprocessing benchmark input": (write_preprocess_benchmark_input, True),
    "Lorenz-96 problem": (write_lorenz96_problem, True),
    "cycling results and members": (write_cycling_results, True),
    "scaling study": (write_scaling_study, True),
    "sweep table": (write_sweep, False),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_dataset_the_kit_writes_is_cf_complete(tmp_path, writer):
    write, has_time = WRITERS[writer]
    for path in write(tmp_path):
        check_file(path, time=has_time)


def test_zarr_shard_store_groups_are_cf_complete(tmp_path):
    from turbda_kit.testing import synthetic_shard_root

    root = synthetic_shard_root(tmp_path / "shards", fmt="zarr", split_days=(0, 2, 3, 4),
                                steps_per_day=2, grid=4)
    for split in ("train", "val", "test"):
        ds = check_file(root / "data.zarr", group=split)
        assert ds["climatology_sqg_0"].attrs["units"] == "K", split
        assert ds["x"].attrs["standard_name"] == "projection_x_coordinate"


@pytest.mark.slow  # a kernel start-up
def test_kit_check_notebook_writes_a_cf_complete_dataset(tmp_path):
    from turbda_kit.workflow import run_notebook

    run_notebook(REPO / "notebooks" / "00_kit_check.ipynb", {"n_values": 3}, tmp_path / "run",
                 log_output=False)
    check_file(tmp_path / "run" / "check.nc", time=False)


# --- what the files say ---------------------------------------------------------------


def test_lorenz96_problem_time_is_model_time_in_seconds(tmp_path):
    from turbda_kit.data.lorenz96_problem import Lorenz96Problem, generate_lorenz96_problem
    from turbda_kit.data.time_axis import time_seconds

    problem = Lorenz96Problem(n=8, n_cycles=3, burn_in_steps=10, dt=0.05, steps_per_cycle=1)
    ds = generate_lorenz96_problem(problem)
    assert_cf_complete(ds)
    np.testing.assert_allclose(ds["time_mtu"].values, problem.times)
    path = write_dataset(ds, tmp_path / "l96.nc")
    with open_dataset(path) as decoded:
        # 0.05 model time units are 6 hours (Lorenz 1996)
        assert str(decoded.time.values[0])[:19] == "2000-01-01T06:00:00"
        np.testing.assert_allclose(time_seconds(decoded), [21600.0, 43200.0, 64800.0])


def test_scaling_time_axis_and_units(tmp_path):
    from turbda_kit.experiments.scaling_results import describe_scaling, summarize

    [one, _, combined] = write_scaling_study(tmp_path)
    with open_dataset(one) as ds:
        # steps_per_cycle = 2 of dt 0.01 model time units per cycle: 2.4 h
        np.testing.assert_allclose(ds["time_hours"].values, [2.4, 4.8])
        assert ds["peak_memory_bytes"].attrs["units"] == "bytes"
        assert ds["time_per_cycle_s"].attrs["units"] == "s"
        assert ds["efficiency"].attrs["units"] == "1"
    with open_dataset(combined) as ds:
        assert ds["ranks"].values.tolist() == [1, 2]
        # an older file without the time axis and attributes gets them again
        old = ds.load().drop_vars(["time", "time_hours"])
        for name in old.variables:
            old[name].attrs = {}
        del old.attrs["Conventions"]
        assert_cf_complete(summarize(old))
        assert_cf_complete(describe_scaling(old.copy()))


def test_sweep_scores_take_the_state_units(tmp_path):
    [path] = write_sweep(tmp_path)
    with open_dataset(path) as ds:
        assert ds["mean_rmse_analysis"].attrs["units"] == "1"   # Lorenz-96
        assert "cycles 1..3" in ds["mean_rmse_analysis"].attrs["long_name"]
        assert "units" not in ds["label"].attrs and ds["wall_s"].attrs["units"] == "s"


def test_describe_keeps_what_a_writer_said_and_refuses_nothing():
    ds = xr.Dataset({"a": ("n", [1.0], {"long_name": "specific"}), "b": ("n", [2.0])},
                    coords={"n": [0]})
    describe(ds, {"a": VariableInfo("generic", "m"), "b": VariableInfo("b", "s", "time"),
                  "absent": VariableInfo("not here", "1")}, title="t")
    assert ds["a"].attrs == {"long_name": "specific", "units": "m"}
    assert ds["b"].attrs == {"long_name": "b", "units": "s", "standard_name": "time"}
    assert ds.attrs == {"Conventions": "CF-1.8", "title": "t"}
    describe(ds, {"a": VariableInfo("generic", "m")}, replace=True)
    assert ds["a"].attrs["long_name"] == "generic"


def test_checker_wants_no_units_on_text():
    ds = xr.Dataset(coords={"label": ("n", ["x"], {"long_name": "label"}),
                            "n": ("n", [0], {"units": "1", "long_name": "index"})},
                    attrs={"Conventions": CONVENTIONS})
    assert_cf_complete(ds, require_time=False)
    ds["label"].attrs["units"] = "1"
    with pytest.raises(AssertionError, match="label: text with units"):
        assert_cf_complete(ds, require_time=False)
