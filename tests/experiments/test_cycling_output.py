"""What the cycling engine writes: CF-1.8 Datasets and ensemble members streamed per cycle.

Real experiments at toy sizes: SQG (N = 16, a few cycles) and Lorenz-96 (n = 40) through
the experiment builder, so the units, coordinates and member files are those users get.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from turbda_kit.errors import InputError
from turbda_kit.experiments import build_experiment, get_preset, run_comparison
from turbda_kit.experiments.members import MemberOutput, members_file_name
from turbda_kit.experiments.results import find_runs, load_runs, members_path, open_members
from turbda_kit.io import open_dataset, write_dataset
from turbda_kit.testing import assert_cf_complete, assert_datasets_identical

SQG = get_preset("bao2024_sqg_linear").replace(n_cycles=3, spinup_cycles=1, n_members=4)
L96 = get_preset("sakov2008").replace(n_cycles=6, spinup_cycles=2, n_members=6)
# Timing and the creation stamp differ between any two runs.
VOLATILE = ("time_forecast_s", "time_analysis_s")
VOLATILE_ATTRS = ("mean_wall_seconds_per_cycle", "realtime_factor",
                  "provenance_created_utc")


def _sqg(filter_name: str = "letkf", **kwargs):
    return build_experiment(SQG, filter_name, seed=3, spinup_days=0.5,
                            model_overrides={"N": 16}, save_means=True, **kwargs)


@pytest.fixture(scope="module")
def sqg_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sqg")
    members = MemberOutput(out / "cycling_letkf_members.nc")
    ds = _sqg().run(show_progress=False, members=members)
    return ds, write_dataset(ds, out / "cycling_letkf.nc"), members.path


def test_sqg_results_are_cf_complete_in_memory_and_on_disk(sqg_run):
    ds, path, _ = sqg_run
    assert_cf_complete(ds)
    with open_dataset(path) as reopened:
        assert_cf_complete(reopened)
        assert reopened.time.dtype.kind == "M"  # decodes to (nominal) dates
        assert str(reopened.time.values[0])[:19] == "2000-01-01T12:00:00"
        np.testing.assert_allclose(reopened.time_hours.values, [12.0, 24.0, 36.0])
    assert ds.attrs["Conventions"] == "CF-1.8"
    for name in ("rmse_analysis", "spread_forecast", "crps_analysis", "innovation_mean",
                 "innovation_std", "shock_std", "truth", "analysis_mean", "forecast_mean"):
        assert ds[name].attrs["units"] == "K", name
    assert "boundary potential temperature" in ds["truth"].attrs["long_name"]
    assert ds["time_forecast_s"].attrs["units"] == "s"
    assert ds["rank_histogram"].attrs["units"] == "1"
    # The grid: x, y in m (L / N apart), z = [0, H], as in the nature runs.
    assert ds.x.attrs["units"] == "m" and ds.x.attrs["standard_name"] == "projection_x_coordinate"
    np.testing.assert_allclose(ds.x.values, np.arange(16) * 20.0e6 / 16)
    np.testing.assert_allclose(ds.z.values, [0.0, 10.0e3])
    assert ds.truth.dims == ("cycle", "z", "y", "x")
    assert ds.time.dims == ("cycle",) and "time_hours" in ds.coords


def test_lorenz96_and_arctan_units(tmp_path):
    ds = build_experiment(L96, "letkf", seed=1).run(show_progress=False)
    assert_cf_complete(ds)
    assert ds["rmse_analysis"].attrs["units"] == "1"
    assert ds.i.attrs["units"] == "1"
    arctan = build_experiment(get_preset("bao2024_sqg_arctan").replace(
        n_cycles=1, spinup_cycles=0, n_members=3), "free", seed=0, spinup_days=0.2, model_overrides={"N": 16})
    ds = arctan.run(show_progress=False)
    assert ds["innovation_mean"].attrs["units"] == "1"   # arctan observations
    assert ds["rmse_analysis"].attrs["units"] == "K"
    assert_cf_complete(ds)


def test_members_file_holds_what_was_scored(sqg_run):
    ds, path, member_file = sqg_run
    assert ds.attrs["members_file"] == member_file.name == "cycling_letkf_members.nc"
    assert members_path(path) == member_file
    assert not member_file.with_name(".cycling_letkf_members.partial.nc").exists()
    members = open_members(path)
    assert_cf_complete(members)
    assert members.analysis_ensemble.dims == ("cycle", "member", "z", "y", "x")
    assert members.analysis_ensemble.shape == (3, 4, 2, 16, 16)
    assert members.analysis_ensemble.dtype == np.float32
    # One chunk per cycle on disk, and lazily one per cycle when read.
    assert members.analysis_ensemble.encoding["chunksizes"] == (1, 4, 2, 16, 16)
    assert members.analysis_ensemble.chunks[0] == (1, 1, 1)
    assert members.attrs["complete"] == "true" and members.attrs["members_saved"] == \
        "forecast, analysis"
    truth = members.truth.values
    np.testing.assert_array_equal(truth, ds.truth.values)
    np.testing.assert_array_equal(members.analysis_ensemble.mean("member").values,
                                  ds.analysis_mean.values)
    for kind in ("forecast", "analysis"):
        ensemble = members[f"{kind}_ensemble"].values.astype(np.float64)
        rmse = np.sqrt(((ensemble.mean(axis=1) - truth) ** 2).mean(axis=(1, 2, 3)))
        np.testing.assert_allclose(rmse, ds[f"rmse_{kind}"].values, rtol=1e-5)
        spread = np.sqrt(ensemble.var(axis=1, ddof=1).mean(axis=(1, 2, 3)))
        np.testing.assert_allclose(spread, ds[f"spread_{kind}"].values, rtol=1e-5)
    members.close()


def test_members_stream_per_cycle_and_resume_to_the_same_file(tmp_path):
    """Kill after cycle 2 (checkpoint every cycle), resume: the zarr store equals an
    uninterrupted run's, and it held each cycle on disk as soon as the cycle ended."""

    class Kill(Exception):
        pass

    def on_disk_after(cycle, record):
        store = xr.open_zarr(partial, consolidated=False)
        written = np.isfinite(store.analysis_ensemble.values).all(axis=(1, 2, 3, 4))
        seen.append(written.tolist())
        if cycle == 2 and kill:
            raise Kill

    seen: list[list[bool]] = []
    reference = MemberOutput(tmp_path / "ref" / "members.zarr", ("analysis",))
    partial = reference.partial_path
    kill = False
    whole = _sqg(checkpoint_every=1).run(out_dir=tmp_path / "ref", show_progress=False,
                                         members=reference, on_cycle_end=on_disk_after)
    assert seen == [[True, False, False], [True, True, False], [True, True, True]]

    resumed = MemberOutput(tmp_path / "run" / "members.zarr", ("analysis",))
    partial, kill = resumed.partial_path, True
    with pytest.raises(Kill):
        _sqg(checkpoint_every=1).run(out_dir=tmp_path / "run", show_progress=False,
                                     members=resumed, on_cycle_end=on_disk_after)
    assert partial.exists() and not resumed.path.exists()
    kill = False
    again = _sqg(checkpoint_every=1).run(out_dir=tmp_path / "run", show_progress=False,
                                         members=resumed, on_cycle_end=on_disk_after)
    assert_datasets_identical(again.drop_vars(VOLATILE), whole.drop_vars(VOLATILE),
                              ignore_attrs=(*VOLATILE_ATTRS, "members_file"))
    with open_dataset(reference.path) as a, open_dataset(resumed.path) as b:
        assert "forecast_ensemble" not in a
        assert_datasets_identical(a.load(), b.load(), ignore_attrs=VOLATILE_ATTRS)


def test_resume_without_its_member_file_is_refused(tmp_path):
    class Kill(Exception):
        pass

    def kill(cycle, record):
        if cycle == 2:
            raise Kill

    output = MemberOutput(tmp_path / "members.nc")
    with pytest.raises(Kill):
        _sqg(checkpoint_every=1).run(out_dir=tmp_path, show_progress=False, members=output,
                                     on_cycle_end=kill)
    output.partial_path.unlink()
    with pytest.raises(InputError, match="members.partial.nc, which is missing: delete the "
                                         "run's checkpoint"):
        _sqg(checkpoint_every=1).run(out_dir=tmp_path, show_progress=False, members=output)
    # Resuming without members is a run of other settings.
    with pytest.raises(InputError, match="other settings"):
        _sqg(checkpoint_every=1).run(out_dir=tmp_path, show_progress=False)


def test_member_settings_are_checked():
    with pytest.raises(InputError, match="save_members='all'"):
        MemberOutput.from_setting("all", "x.nc")
    with pytest.raises(InputError, match="suffix"):
        MemberOutput("x.h5")
    with pytest.raises(InputError, match="kinds"):
        MemberOutput("x.nc", ("truth",))
    with pytest.raises(InputError, match="members_format='hdf'"):
        members_file_name("cycling", "letkf", "hdf")
    assert MemberOutput.from_setting("forecast", "x.zarr").variables == ("forecast_ensemble",)


def test_run_comparison_writes_member_files_beside_the_results(tmp_path):
    preset = L96.replace(n_cycles=3, spinup_cycles=1)
    comparison = run_comparison(["free", "letkf"], lambda name: build_experiment(
        preset, name, seed=0), tmp_path, prefix="cycling", verbose=False,
        show_progress=False, save_members="analysis")
    assert set(comparison.results) == {"free", "letkf"}
    for name in ("free", "letkf"):
        assert (tmp_path / f"cycling_{name}_members.nc").is_file()
    # Member files are not runs of their own.
    assert set(find_runs([tmp_path])) == {"free", "letkf"}
    loaded = load_runs(find_runs([tmp_path], runs=["letkf"]))["letkf"]
    members = open_members(loaded)
    assert members.analysis_ensemble.dims == ("cycle", "member", "i")
    assert math.isclose(float(np.sqrt(((members.analysis_ensemble.mean("member")
                                        - members.truth) ** 2).mean("i")).values[-1]),
                        float(loaded.rmse_analysis.values[-1]), rel_tol=1e-12)
    members.close()
    with pytest.raises(InputError, match="no ensemble members saved .*save_members"):
        open_members(write_dataset(loaded, tmp_path / "other" / "cycling_x.nc"))
    with pytest.raises(InputError, match="save_members='every'"):
        run_comparison(["free"], lambda name: build_experiment(preset, name), tmp_path,
                       prefix="cycling", save_members="every")


def test_state_units_can_be_given():
    experiment = build_experiment(L96.replace(n_cycles=1, spinup_cycles=0), "free", seed=0)
    ds = experiment.run(show_progress=False, state_units="m s-1")
    assert ds["rmse_analysis"].attrs["units"] == "m s-1"
    assert torch.float64 == experiment.initial_ensemble.dtype
