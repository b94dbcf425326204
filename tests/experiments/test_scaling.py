"""Scaling harness: the Dataset and its derived figures, fair resources per rank, merged jobs,
the JSON summary, split-comm sweeps over MPI, the benchmark command line, the notebook under
mpiexec, ipyparallel engines and the launch scripts.

The efficiency maths are tested in ``test_efficiency.py``, the fingerprint in
``tests/parallel/test_fingerprint.py``, the communicator helpers in ``tests/parallel/test_mpi.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from tests.conftest import mpiexec_path, run_mpi
from turbda_kit.errors import InputError
from turbda_kit.experiments.scaling import ScalingStudy, run_scaling
from turbda_kit.experiments.scaling_results import (
    SUMMARY_KIND,
    combine_scaling,
    scaling_summary,
    scaling_table,
    summarize,
)
from turbda_kit.io import open_dataset, write_dataset
from turbda_kit.parallel.mpi import SerialComm

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "scripts" / "scaling_run.py"
BENCHMARK = REPO / "benchmarks" / "bench_ensf_scaling.py"
NOTEBOOK = REPO / "notebooks" / "04_ensf_scaling.ipynb"
TINY = dict(n_members=4, euler_steps=10, n_cycles=3, steps_per_cycle=5, spinup_steps=20,
            block_size=256)


def _env() -> dict[str, str]:
    bindir = Path(sys.executable).parent
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}


def _benchmark():
    """benchmarks/bench_ensf_scaling.py as a module (its ``main`` is the scaling CLI)."""
    spec = importlib.util.spec_from_file_location("bench_ensf_scaling", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the harness on one process -------------------------------------------------------


def test_serial_strong_study_dataset(tmp_path):
    study = ScalingStudy(mode="strong", sizes=(1024, 512), ranks=(1,), **TINY)
    ds = run_scaling(study, None, device="cpu", show_progress=False, log=False)
    assert dict(ds.sizes) == {"ranks": 1, "size": 2, "cycle": 3}
    assert ds["size"].values.tolist() == [512, 1024]            # sorted
    for name in ("rmse_forecast", "rmse_analysis", "spread_analysis", "time_forecast_s",
                 "time_halo_s", "time_analysis_s", "time_reduce_s", "time_total_s"):
        assert ds[name].dims == ("ranks", "size", "cycle") and np.isfinite(ds[name]).all(), name
    for name in ("time_per_cycle_s", "analysis_per_cycle_s", "efficiency", "peak_memory_bytes",
                 "n_global", "fingerprint"):
        assert ds[name].dims == ("ranks", "size"), name
    # the warm-up cycle is left out of the per-cycle times
    np.testing.assert_allclose(ds["time_per_cycle_s"], ds["time_total_s"][..., 1:].mean("cycle"))
    np.testing.assert_allclose(ds["efficiency"], 1.0)
    np.testing.assert_allclose(ds["efficiency_cpu"], 1.0)
    assert (ds["point_wall_s"] >= ds["time_total_s"].sum("cycle")).all()
    assert (ds["point_cpu_s"] > 0).all() and (ds["cpu_utilisation"] > 0).all()
    np.testing.assert_allclose(ds["cpu_utilisation"], ds["point_cpu_s"] / ds["point_wall_s"])
    # the resources per rank are stated: one thread, no prefetch thread, one core
    assert ds.attrs["threads_per_rank"] == 1 and ds.attrs["prefetch_noise"] == 0
    assert ds.attrs["cores_per_rank"] == 1 and ds.attrs["torch_threads"] == 1
    assert (ds["cores_available_per_rank"] >= 1).all() and not ds["oversubscribed"].any()
    assert ds["cores_available_per_rank"].dtype == np.float64
    assert "VmHWM" in ds.attrs["peak_memory_method"]
    assert ds["n_global"].values.tolist() == [[512, 1024]]
    assert (ds["peak_memory_bytes"] >= ds["baseline_memory_bytes"]).all()
    assert (ds["peak_memory_bytes"] > 10 * 2 ** 20).all()
    assert ds.attrs["mode"] == "strong" and ds.attrs["euler_steps"] == 10
    assert "provenance_git_revision" in ds.attrs
    # the parts of a cycle add up to (nearly) the whole
    parts = sum(ds[f"{c}_per_cycle_s"] for c in ("forecast", "analysis", "reduce"))
    assert (parts <= ds["time_per_cycle_s"] * 1.01 + 1e-4).all()
    path = write_dataset(ds, tmp_path / "strong.nc")
    with open_dataset(path, decode_times=False) as back:   # time: CF seconds since cycle 0
        xr.testing.assert_identical(back.load(), ds)
    with open_dataset(path) as back:
        assert back["time"].dtype.kind == "M"


def test_resources_per_rank_are_set_counted_and_restored():
    threads_before = torch.get_num_threads()
    off = run_scaling(ScalingStudy(sizes=(512,), **TINY), None, "cpu", show_progress=False,
                      log=False)
    on = run_scaling(ScalingStudy(sizes=(512,), threads_per_rank=2, prefetch_noise=True, **TINY),
                     None, "cpu", show_progress=False, log=False)
    assert torch.get_num_threads() == threads_before            # the study's threads are undone
    assert on.attrs["torch_threads"] == 2 and on.attrs["prefetch_noise"] == 1
    assert on.attrs["cores_per_rank"] == 3                        # 2 threads + the prefetch thread
    # utilisation counts the cores given: CPU time / (wall x 1 rank x 3 cores)
    np.testing.assert_allclose(on["cpu_utilisation"], on["point_cpu_s"] / (3 * on["point_wall_s"]))
    # resources change the timing, never the analysis
    assert on["fingerprint"].item() == off["fingerprint"].item()
    assert ScalingStudy(threads_per_rank=2, prefetch_noise=True).experiment(512).ensf.prefetch_noise
    assert not ScalingStudy().experiment(512).ensf.prefetch_noise


def test_utilisation_and_oversubscription_from_synthetic_records():
    base = run_scaling(ScalingStudy(sizes=(512,), **TINY), None, "cpu", show_progress=False,
                       log=False)
    job = _fake_job(base, [1, 2, 4], [1.0, 1.6, 2.0]).assign_attrs(cores_per_rank=2)
    job["point_wall_s"][:] = [[10.0], [6.0], [5.0]]
    job["point_cpu_s"][:] = [[15.0], [20.0], [30.0]]
    job["cores_available_per_rank"][:] = [[4.0], [2.0], [0.5]]
    ds = summarize(job)
    # CPU time / (wall x ranks x 2 cores): 15/20, 20/24, 30/40
    np.testing.assert_allclose(ds["cpu_utilisation"].values[:, 0], [0.75, 20 / 24, 0.75])
    # the 4-rank point had half a CPU per rank for ranks that keep 2 cores busy
    assert ds["oversubscribed"].values[:, 0].tolist() == [False, False, True]
    # strong efficiency p0 T(p0) / (p T(p)) with T = time per cycle / speed-up
    np.testing.assert_allclose(ds["efficiency"].values[:, 0], [1.0, 1.6 / 2, 2.0 / 4])
    # efficiency_cpu: CPU seconds per rank 15, 10, 7.5 -> 15 / (2 * 10), 15 / (4 * 7.5)
    np.testing.assert_allclose(ds["efficiency_cpu"].values[:, 0], [1.0, 0.75, 0.5])


def test_table_and_json_summary():
    base = run_scaling(ScalingStudy(sizes=(512,), **TINY), None, "cpu", show_progress=False,
                       log=False)
    job = _fake_job(base, [1, 2], [1.0, 1.5])
    table = scaling_table(job)
    assert list(table.index) == [(1, 512), (2, 512)]
    for column in ("time_per_cycle_s", "efficiency", "efficiency_cpu", "cpu_utilisation",
                   "peak_MiB_per_rank", "oversubscribed", "final_rmse_analysis"):
        assert column in table.columns, column
    summary = scaling_summary({"strong": job}, command="pytest")
    text = json.dumps(summary, allow_nan=False)                  # strict JSON
    assert json.loads(text)["kind"] == SUMMARY_KIND and summary["command"] == "pytest"
    study = summary["studies"]["strong"]
    settings = study["settings"]
    assert settings["threads_per_rank"] == 1 and settings["prefetch_noise"] is False
    assert settings["cores_per_rank"] == 1 and settings["mode"] == "strong"
    assert [(p["ranks"], p["size"]) for p in study["points"]] == [(1, 512), (2, 512)]
    point = study["points"][1]
    for key in ("time_per_cycle_s", "efficiency", "efficiency_cpu", "cpu_utilisation",
                "peak_memory_bytes", "peak_memory_gib_per_rank", "n_global", "fingerprint"):
        assert point[key] is not None, key
    headline = study["headline"][0]
    assert (headline["baseline_ranks"], headline["ranks"]) == (1, 2)
    assert headline["efficiency"] == pytest.approx(1.5 / 2)
    assert study["provenance"]["git_revision"]
    with pytest.raises(InputError, match="not a scaling Dataset"):
        scaling_summary({"x": job.assign_attrs(mode="diagonal")})


def test_same_ring_gives_the_same_analysis_in_both_modes():
    # weak at size s on 1 rank and strong at size s on 1 rank are the same experiment
    strong = run_scaling(ScalingStudy(mode="strong", sizes=(512,), **TINY), None, "cpu",
                         show_progress=False, log=False)
    weak = run_scaling(ScalingStudy(mode="weak", sizes=(512,), **TINY), None, "cpu",
                       show_progress=False, log=False)
    assert strong["fingerprint"].item() == weak["fingerprint"].item()
    np.testing.assert_array_equal(strong["rmse_analysis"], weak["rmse_analysis"])


def test_bad_inputs_are_refused_with_clear_messages():
    with pytest.raises(InputError, match=r"exceed the job's 1 MPI rank"):
        run_scaling(ScalingStudy(ranks=(1, 2), **TINY), SerialComm(), "cpu")
    with pytest.raises(InputError, match="too small for 4 ranks"):
        ScalingStudy(mode="strong", sizes=(600,), ranks=(1, 4), **TINY).check(4)
    with pytest.raises(InputError, match="multiple of align=256"):
        ScalingStudy(mode="weak", sizes=(1000,), **TINY)
    with pytest.raises(InputError, match="warmup_cycles"):
        ScalingStudy(n_cycles=2, warmup_cycles=2)
    with pytest.raises(InputError, match="mode"):
        ScalingStudy(mode="medium")
    with pytest.raises(InputError, match="n_members"):
        ScalingStudy(n_members=1)
    with pytest.raises(InputError, match="repeated"):
        ScalingStudy(ranks=(1, 1))
    with pytest.raises(InputError, match="sizes"):
        ScalingStudy(sizes=())
    with pytest.raises(InputError, match="dtype"):
        run_scaling(ScalingStudy(**TINY), None, "cpu", dtype="float16")
    with pytest.raises(InputError, match="device"):
        run_scaling(ScalingStudy(**TINY), None, "tpu")


def _fake_job(ds: xr.Dataset, ranks: list[int], speedup: list[float]) -> xr.Dataset:
    """A copy of a one-rank Dataset pretending to come from a job with other rank counts."""
    parts = []
    for p, s in zip(ranks, speedup):
        part = ds.isel(ranks=[0]).assign_coords(ranks=[p])
        for c in ("forecast", "halo", "analysis", "reduce", "total"):
            part[f"time_{c}_s"] = part[f"time_{c}_s"] / s
        parts.append(part)
    return summarize(xr.concat(parts, "ranks"))


def test_combine_datasets_of_several_jobs(tmp_path):
    base = run_scaling(ScalingStudy(mode="strong", sizes=(512,), **TINY), None, "cpu",
                       show_progress=False, log=False)
    t1 = base["time_per_cycle_s"].item()
    node1 = _fake_job(base, [8], [8.0])
    node2 = _fake_job(base, [16, 32], [12.0, 16.0])
    # CPU seconds summed over ranks: 80 s on 8 ranks, 96 s on 16 and 160 s on 32
    node1["point_cpu_s"][:] = 80.0
    node2["point_cpu_s"][:] = [[96.0], [160.0]]
    merged = combine_scaling([node2, node1])
    assert merged["ranks"].values.tolist() == [8, 16, 32]
    # strong: CPU seconds per rank as T: 8 * 10 / (16 * 6) and 8 * 10 / (32 * 5)
    np.testing.assert_allclose(merged["efficiency_cpu"].values[:, 0], [1.0, 80 / 96, 80 / 160])
    np.testing.assert_allclose(merged["time_per_cycle_s"].values[:, 0],
                               [t1 / 8, t1 / 12, t1 / 16])
    # efficiency against the smallest rank count of the merged sweep (8)
    np.testing.assert_allclose(merged["efficiency"].values[:, 0], [1.0, 12 / 16, 16 / 32])
    # from files, through the benchmark's command line, with the JSON summary beside
    paths = [write_dataset(node1, tmp_path / "n1.nc"), write_dataset(node2, tmp_path / "n2.nc")]
    bench = _benchmark()
    assert bench.main(["combine", "-o", str(tmp_path / "all.nc"), "--summary",
                       *map(str, paths)]) == 0
    with open_dataset(tmp_path / "all.nc") as back:
        np.testing.assert_allclose(back["efficiency"], merged["efficiency"])
        assert "n1.nc" in back.attrs["combined_from"]
    summary = json.loads((tmp_path / "scaling_summary.json").read_text())
    assert [p["ranks"] for p in summary["studies"]["strong"]["points"]] == [8, 16, 32]
    assert summary["studies"]["strong"]["command"].startswith(
        "python benchmarks/bench_ensf_scaling.py combine")
    # sizes that differ between jobs become NaN points, not errors
    other = run_scaling(ScalingStudy(mode="strong", sizes=(1024,), **TINY), None, "cpu",
                        show_progress=False, log=False)
    mixed = combine_scaling([node1, _fake_job(other, [16], [2.0])])
    assert mixed["size"].values.tolist() == [512, 1024]
    assert np.isnan(mixed["time_per_cycle_s"].sel(ranks=8, size=1024))
    np.testing.assert_allclose(mixed["efficiency"].sel(ranks=16, size=1024), 1.0)
    with pytest.raises(InputError, match="rank count 8 appears in both"):
        combine_scaling([node1, node1])
    changed = node2.copy()
    changed.attrs = {**node2.attrs, "euler_steps": 500}
    with pytest.raises(InputError, match="euler_steps"):
        combine_scaling([node1, changed])
    with pytest.raises(InputError, match="at least one"):
        combine_scaling([])
    assert bench.main(["combine", "-o", str(tmp_path / "x.nc"), str(paths[0]),
                       str(paths[0])]) == 2


# --- MPI ------------------------------------------------------------------------------


@pytest.mark.mpi
def test_split_comm_sweeps_on_two_ranks(tmp_path):
    studies = [dict(mode="strong", sizes=[1024], ranks=[1, 2], **TINY),
               dict(mode="weak", sizes=[512], ranks=[1, 2], **TINY)]
    proc = run_mpi(2, [str(SCRIPT), str(tmp_path), json.dumps(studies), "--direct"], timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with open_dataset(tmp_path / "scaling_strong.nc") as opened:
        ds = opened.load()
    assert ds["ranks"].values.tolist() == [1, 2] and ds.attrs["job_ranks"] == 2
    assert np.isfinite(ds["time_per_cycle_s"]).all() and np.isfinite(ds["efficiency"]).all()
    assert ds["efficiency"].sel(ranks=1).item() == 1.0
    assert (ds["halo_per_cycle_s"] > 0).all() and (ds["peak_memory_bytes"] > 0).all()
    # the CPUs each rank could have, and the flag derived from them
    available = ds["cores_available_per_rank"].values
    assert (available > 0).all() and ds.attrs["cores_per_rank"] == 1
    assert (ds["oversubscribed"].values == (available < 1)).all()
    # strong scaling: the final analysis of one ring is bit-identical on 1 and 2 ranks
    fingerprints = ds["fingerprint"].values[:, 0]
    assert fingerprints[0] == fingerprints[1] >= 0
    one, two = np.load(tmp_path / "direct_p1.npy"), np.load(tmp_path / "direct_p2.npy")
    assert one.shape == (4, 1024) and np.array_equal(one, two)
    # RMSEs are global float sums whose order depends on the split: equal to rounding only
    np.testing.assert_allclose(ds["rmse_analysis"].sel(ranks=1), ds["rmse_analysis"].sel(ranks=2),
                               rtol=1e-6)
    # weak scaling: the ring grows with the ranks, efficiency T(1) / T(2)
    with open_dataset(tmp_path / "scaling_weak.nc") as weak:
        assert weak["n_global"].values[:, 0].tolist() == [512, 1024]
        t = weak["time_per_cycle_s"].values[:, 0]
        np.testing.assert_allclose(weak["efficiency"].values[:, 0], [1.0, t[0] / t[1]])
        # the 2-rank weak point is the 2-rank strong point at 1024
        assert weak["fingerprint"].values[1, 0] == fingerprints[1]


@pytest.mark.mpi
def test_benchmark_writes_datasets_and_one_summary_outside_the_checkout(tmp_path):
    tiny = ["--size", "512", "--members", "4", "--euler-steps", "5", "--spinup-steps", "5",
            "--no-plots", "--out", str(tmp_path / "bench")]
    for what, extra in (("weak", ["--cycles", "2"]), ("big", ["--prefetch"])):
        proc = subprocess.run([sys.executable, str(BENCHMARK), what, *tiny, *extra],
                              capture_output=True, text=True, timeout=300, env=_env(),
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert f"output directory: {tmp_path / 'bench'}" in proc.stdout
    summary = json.loads((tmp_path / "bench" / "scaling_summary.json").read_text())
    assert set(summary["studies"]) == {"weak", "big"}
    weak, big = summary["studies"]["weak"], summary["studies"]["big"]
    assert [p["ranks"] for p in weak["points"]] == [1, 2]
    assert weak["settings"]["prefetch_noise"] is False and weak["settings"]["cores_per_rank"] == 1
    assert weak["headline"][0]["efficiency"] > 0 and weak["machine"]["mpi_ranks"] == 2
    assert weak["command"].startswith("python benchmarks/bench_ensf_scaling.py weak --size 512")
    # the big run: one cycle on 2 ranks, time and peak memory per rank recorded
    (point,) = big["points"]
    assert point["ranks"] == 2 and point["n_global"] == 512
    assert point["time_per_cycle_s"] > 0 and point["peak_memory_gib_per_rank"] > 0
    assert big["settings"]["prefetch_noise"] is True and big["settings"]["cores_per_rank"] == 2
    # nothing was written into the checkout (the default goes to runs/ under the cwd)
    proc = subprocess.run([sys.executable, str(BENCHMARK), "strong", "--dry-run"],
                          capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0 and "would run:" in proc.stdout
    assert "runs/bench-ensf-scaling-" in proc.stdout and not (tmp_path / "runs").exists()


@pytest.mark.mpi
def test_bad_input_aborts_the_mpi_job_instead_of_hanging(tmp_path):
    studies = [dict(mode="strong", ranks=[1, 3], **TINY)]
    proc = run_mpi(2, [str(SCRIPT), str(tmp_path), json.dumps(studies)], timeout=120)
    assert proc.returncode != 0
    assert "exceed the job's 2 MPI rank" in proc.stderr and "InputError" in proc.stderr
    assert not (tmp_path / "scaling_strong.nc").exists()


@pytest.mark.mpi
def test_notebook_under_mpiexec_with_turbda_run(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [mpiexec_path(), "-n", "2", sys.executable, "-m", "turbda_kit", "run", str(NOTEBOOK),
         "--out", str(out), "-q", "-p", "sizes", "[512]", "-p", "n_members", "4", "-p", "euler_steps", "10",
         "-p", "spinup_steps", "20", "-p", "plots", "false"],
        capture_output=True, text=True, timeout=300, env={**_env(), "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2 and record["rank"] == 0
    assert (out / "logs" / "rank1.ipynb").is_file()
    for mode in ("strong", "weak"):
        with open_dataset(out / f"scaling_{mode}.nc") as ds:
            assert ds["ranks"].values.tolist() == [1, 2] and ds.attrs["job_ranks"] == 2
            assert np.isfinite(ds["efficiency"]).all()


@pytest.mark.mpi
def test_engine_kernel_on_two_ipyparallel_engines(tmp_path, monkeypatch):
    from turbda_kit.experiments.scaling import engine_kernel
    from turbda_kit.parallel.engines import mpi_engines

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PATH", _env()["PATH"])
    study = ScalingStudy(mode="strong", sizes=(1024,), ranks=(1, 2), **TINY)
    with mpi_engines(2, launcher="mpiexec", profile_dir=tmp_path / "profile") as view:
        results = view.apply_sync(engine_kernel, study, "cpu", "float32")
        with pytest.raises(Exception, match="exceed"):
            view.apply_sync(engine_kernel, ScalingStudy(ranks=(3,), **TINY), "cpu")
    ds = results[0]
    assert results[1] is None and ds.attrs["job_ranks"] == 2
    serial = run_scaling(ScalingStudy(mode="strong", sizes=(1024,), ranks=(1,), **TINY), None,
                         "cpu", show_progress=False, log=False)
    assert ds["fingerprint"].values[:, 0].tolist() == [serial["fingerprint"].item()] * 2


def _run_launch_script(tmp_path: Path, script: str, extra_env: dict[str, str]):
    out = tmp_path / "scaling"
    env = {**_env(), "SRUN": f"{mpiexec_path()} -n 2", "TASKS_PER_NODE": "2", "OUT": str(out),
           "VENV": str(Path(sys.executable).parent.parent), "PLOTS": "0", "MODULES": "",
           **extra_env}
    proc = subprocess.run(["bash", str(REPO / "launch" / script / "ensf_scaling.sbatch"),
                           "-p", "sizes", "[512]", "-p", "n_members", "4", "-p", "euler_steps",
                           "10", "-p", "spinup_steps", "20", "-p", "plots", "false", "-q"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow  # 48-80 s on the shared 2-core machine (two Python start-ups per rank)
@pytest.mark.mpi
def test_generic_launch_script_runs_locally_under_mpiexec(tmp_path):
    out = _run_launch_script(tmp_path, "slurm", {})
    record = json.loads((out / "nodes-1" / "run.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    for mode in ("strong", "weak"):
        with open_dataset(out / f"scaling_{mode}.nc") as ds:
            assert ds["ranks"].values.tolist() == [1, 2]
    summary = json.loads((out / "scaling_summary.json").read_text())
    assert set(summary["studies"]) == {"strong", "weak"}
    assert summary["studies"]["weak"]["settings"]["threads_per_rank"] == 1


@pytest.mark.slow
@pytest.mark.mpi
def test_frontier_launch_script_sweeps_node_counts_locally(tmp_path):
    # Two "node counts" of one rank each and of two ranks: two runs, then one combined file.
    out = _run_launch_script(tmp_path, "frontier", {"NODE_COUNTS": "1 2", "TASKS_PER_NODE": "1",
                                                    "SRUN": ""})
    for mode in ("strong", "weak"):
        with open_dataset(out / f"scaling_{mode}.nc") as ds:
            assert ds["ranks"].values.tolist() == [1, 2]
            assert "nodes-1" in ds.attrs["combined_from"] and "nodes-2" in ds.attrs["combined_from"]


@pytest.mark.slow
@pytest.mark.mpi
def test_ipp_engines_script_serves_engines_to_a_client(tmp_path):
    import signal
    import time

    import ipyparallel as ipp

    from turbda_kit.experiments.scaling import engine_kernel

    profile = tmp_path / "profile"
    env = {**_env(), "SRUN": f"{mpiexec_path()} -n 2", "IPP_PROFILE_DIR": str(profile),
           "IPYTHONDIR": str(tmp_path / "ipython"),
           "TURBDA_VENV": str(Path(sys.executable).parent.parent)}
    log = tmp_path / "engines.log"
    with open(log, "w") as out:
        script = subprocess.Popen(["bash", str(REPO / "launch" / "frontier" / "ipp_engines.sh"), "2"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (profile / "security" / "ipcontroller-client.json").exists():
            assert script.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        client = ipp.Client(profile_dir=str(profile))
        client.wait_for_engines(2, timeout=120)
        study = ScalingStudy(mode="strong", sizes=(1024,), ranks=(1, 2), **TINY)
        results = client[:].apply_sync(engine_kernel, study, "cpu", "float32")
        client.close()
    finally:
        os.killpg(script.pid, signal.SIGTERM)  # the script's own process group
        script.wait(timeout=60)
    fingerprints = results[0]["fingerprint"].values[:, 0]
    assert results[1] is None and fingerprints[0] == fingerprints[1]
