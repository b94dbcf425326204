"""EnSF (Lorenz-96) scaling and accuracy measurements on this machine.

Three measurements, each one MPI launch of the scaling harness
(:func:`turbda_kit.experiments.scaling.run_scaling`, COMM_WORLD split per rank count, idle
ranks sleeping), one thread per rank (``OMP_NUM_THREADS=1``):

* ``weak``: weak scaling, 1 rank vs 2 ranks in the same launch (the baseline), 2**20
  points per rank, 20 members, 100 Euler steps, 4 cycles (the first is warm-up).
  Efficiency ``T(1) / T(2)``; target >= 0.9.
* ``big``: one cycle at 1e8 variables on 2 ranks (5e7 each). EnSF needs >= 2 members, so
  2 members and few Euler steps; reports time and peak memory per rank.
* ``accuracy``: the EnSF paper's setting (Bao, Zhang & Zhang 2024: L96 F=8, RK4 dt=0.01,
  arctan(x) observed every 10 steps, sigma=0.05, 20 members, 500 Euler steps; they report
  a final RMSE ~0.20 at 1e6 variables over 150 cycles) at 1e5 variables with fewer cycles.

Each run writes its Dataset under ``--out`` (default ``runs/bench-ensf-scaling``) and
prints a summary. The machine's load average is printed too: timings on a shared machine
are only as good as the cores left free.

Usage::

    python benchmarks/bench_ensf_scaling.py weak
    python benchmarks/bench_ensf_scaling.py big
    python benchmarks/bench_ensf_scaling.py accuracy --size 100000 --cycles 40
    python benchmarks/bench_ensf_scaling.py weak --size 65536 --cycles 3   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _launch(n_ranks: int, study: dict, out: Path, name: str) -> None:
    """Run this file's worker under ``mpiexec -n n_ranks`` with one thread per rank."""
    bindir = Path(sys.executable).parent
    mpiexec = bindir / "mpiexec" if (bindir / "mpiexec").exists() else "mpiexec"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TURBDA_PLAIN_PROGRESS": "1",
           "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores",
          flush=True)
    start = time.perf_counter()
    subprocess.run([str(mpiexec), "-n", str(n_ranks), sys.executable, __file__, "_worker",
                    json.dumps(study), str(out / f"{name}.nc")], check=True, env=env)
    print(f"launch wall time {time.perf_counter() - start:.1f} s; load average after: "
          f"{os.getloadavg()[0]:.1f}", flush=True)


def _worker(study_json: str, path: str) -> None:
    import torch
    from mpi4py import MPI

    from turbda_kit.experiments.scaling import ScalingStudy, run_scaling
    from turbda_kit.io import write_dataset
    from turbda_kit.parallel.mpi import abort_on_exception

    comm = MPI.COMM_WORLD
    with abort_on_exception(comm):
        torch.set_num_threads(1)
        ds = run_scaling(ScalingStudy(**json.loads(study_json)), comm, device="auto")
        if comm.Get_rank() == 0:
            write_dataset(ds, path)


def _summary(path: Path) -> None:
    from turbda_kit.io import open_dataset

    with open_dataset(path) as ds:
        print(f"\n{ds.attrs['mode']} scaling, {ds.attrs['n_members']} members, "
              f"{ds.attrs['euler_steps']} Euler steps, {ds.sizes['cycle']} cycles "
              f"({ds.attrs['warmup_cycles']} warm-up), {ds.attrs['threads_per_rank']} thread(s) "
              f"per rank, {ds.attrs['device']}")
        table = ds[["n_global", "time_per_cycle_s", "forecast_per_cycle_s", "halo_per_cycle_s",
                    "analysis_per_cycle_s", "reduce_per_cycle_s", "efficiency",
                    "efficiency_cpu", "cpu_utilisation"]].to_dataframe()
        table["peak_MiB_per_rank"] = (ds["peak_memory_bytes"] / 2 ** 20).to_dataframe(
            name="x")["x"].round(0)
        table["baseline_MiB"] = (ds["baseline_memory_bytes"] / 2 ** 20).to_dataframe(
            name="x")["x"].round(0)
        print(table.round(3).to_string())
        rmse = ds["rmse_analysis"]
        print("analysis RMSE per cycle (largest rank count):",
              " ".join(f"{v:.3f}" for v in rmse.isel(ranks=-1, size=0).values))


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_worker":
        _worker(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["weak", "big", "accuracy"])
    parser.add_argument("--size", type=int, default=None,
                        help="weak: points per rank (2**20); big: total (1e8); accuracy: total (1e5)")
    parser.add_argument("--members", type=int, default=None)
    parser.add_argument("--euler-steps", type=int, default=None)
    parser.add_argument("--cycles", type=int, default=None)
    parser.add_argument("--spinup-steps", type=int, default=None)
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks of the launch")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-ensf-scaling")
    args = parser.parse_args(argv)

    def pick(value, default):
        return default if value is None else value

    if args.what == "weak":
        study = dict(mode="weak", sizes=[pick(args.size, 2 ** 20)],
                     ranks=list(range(1, args.ranks + 1)), n_members=pick(args.members, 20),
                     euler_steps=pick(args.euler_steps, 100), n_cycles=pick(args.cycles, 4),
                     spinup_steps=pick(args.spinup_steps, 100))
    elif args.what == "big":
        study = dict(mode="strong", sizes=[pick(args.size, 100_000_000)], ranks=[args.ranks],
                     n_members=pick(args.members, 2), euler_steps=pick(args.euler_steps, 10),
                     n_cycles=pick(args.cycles, 1), warmup_cycles=0,
                     spinup_steps=pick(args.spinup_steps, 10))
    else:
        study = dict(mode="strong", sizes=[pick(args.size, 100_000)], ranks=[args.ranks],
                     n_members=pick(args.members, 20), euler_steps=pick(args.euler_steps, 500),
                     n_cycles=pick(args.cycles, 40), warmup_cycles=0,
                     spinup_steps=pick(args.spinup_steps, 1000))
    print(f"{args.what}: {json.dumps(study)} on {args.ranks} MPI ranks x 1 thread", flush=True)
    name = f"{args.what}_{study['sizes'][0]}"
    _launch(args.ranks, study, args.out, name)
    _summary(args.out / f"{name}.nc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
