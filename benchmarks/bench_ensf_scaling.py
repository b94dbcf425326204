"""EnSF (Lorenz-96) scaling and accuracy measurements, and the scaling command line.

Each measurement is one MPI launch of the scaling harness
(:func:`turbda_kit.experiments.scaling.run_scaling`: COMM_WORLD split per rank count, idle
ranks sleeping) with the same resources for every rank count: ``--threads-per-rank``
torch threads (default 1, also ``OMP_NUM_THREADS``) and the EnSF noise prefetch thread off
unless ``--prefetch`` is given. Every rank count therefore keeps the same number of cores
busy per rank, and CPU utilisation (CPU time / (wall x ranks x cores per rank)) is reported
beside the efficiency, so a loaded or oversubscribed machine shows up in the numbers.

* ``weak``: weak scaling, 1 .. ``--ranks`` ranks in one launch, 2**20 points per rank,
  20 members, 100 Euler steps, 4 cycles (the first is warm-up). Efficiency ``T(1) / T(p)``.
* ``strong``: strong scaling, 1, 2, 4, ... ``--ranks`` ranks in one launch, a ring of
  2**21 points, otherwise as ``weak``. Efficiency ``T(1) / (p T(p))``.
* ``big``: one cycle at 1e8 variables on ``--ranks`` (2) ranks. EnSF needs >= 2 members, so
  2 members and 10 Euler steps; records the time of the cycle and peak memory per rank.
* ``accuracy``: the EnSF paper's setting (Bao, Zhang & Zhang 2024: L96 F=8, RK4 dt=0.01,
  arctan(x) observed every 10 steps, sigma=0.05, 20 members, 500 Euler steps; they report
  a final RMSE ~0.20 at 1e6 variables over 150 cycles) at 1e5 variables, 40 cycles.
* ``combine``: merge the scaling Datasets of several jobs (one per node count) into one,
  with ``--plots`` and ``--summary`` (used by ``launch/*/ensf_scaling.sbatch``).

Outputs go to ``--out`` (default: a new ``runs/bench-ensf-scaling-<UTC time>`` under the
current directory; the path is printed): ``scaling_<what>.nc`` (the Dataset; the name the
figure notebook ``fig_ensf_scaling`` looks for), ``<what>.png`` /
``.html`` (time, efficiency and CPU utilisation against ranks) and ``scaling_summary.json``
(every figure the README quotes: efficiency, CPU utilisation, threads per rank, prefetch
setting, sizes, times, peak memory per rank, the command and the machine's load average;
several measurements into one ``--out`` add up in one summary). ``--dry-run`` prints the
study and the launch command without running.

Usage::

    python benchmarks/bench_ensf_scaling.py weak
    python benchmarks/bench_ensf_scaling.py strong --ranks 4
    python benchmarks/bench_ensf_scaling.py big --out runs/big-1e8        # ~8 GiB, 2 ranks
    python benchmarks/bench_ensf_scaling.py accuracy --size 100000 --cycles 40
    python benchmarks/bench_ensf_scaling.py weak --size 65536 --cycles 3   # quick check
    python benchmarks/bench_ensf_scaling.py combine -o all_weak.nc --plots --summary \\
        runs/scaling/nodes-*/scaling_weak.nc
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SUMMARY = "scaling_summary.json"
MEASUREMENTS = ("weak", "strong", "big", "accuracy")


def _power_of_two_sweep(n_ranks: int) -> list[int]:
    """1, 2, 4, ... up to ``n_ranks``, and ``n_ranks`` itself."""
    return sorted({2 ** k for k in range(n_ranks.bit_length()) if 2 ** k <= n_ranks}
                  | {n_ranks})


def build_study(what: str, args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~turbda_kit.experiments.scaling.ScalingStudy` fields of a measurement."""

    def pick(value, default):
        return default if value is None else value

    resources = dict(threads_per_rank=args.threads_per_rank, prefetch_noise=args.prefetch)
    if what == "weak":
        study = dict(mode="weak", sizes=[pick(args.size, 2 ** 20)],
                     ranks=list(range(1, args.ranks + 1)), n_members=pick(args.members, 20),
                     euler_steps=pick(args.euler_steps, 100), n_cycles=pick(args.cycles, 4),
                     spinup_steps=pick(args.spinup_steps, 100))
    elif what == "strong":
        study = dict(mode="strong", sizes=[pick(args.size, 2 ** 21)],
                     ranks=_power_of_two_sweep(args.ranks), n_members=pick(args.members, 20),
                     euler_steps=pick(args.euler_steps, 100), n_cycles=pick(args.cycles, 4),
                     spinup_steps=pick(args.spinup_steps, 100))
    elif what == "big":
        study = dict(mode="strong", sizes=[pick(args.size, 100_000_000)], ranks=[args.ranks],
                     n_members=pick(args.members, 2), euler_steps=pick(args.euler_steps, 10),
                     n_cycles=pick(args.cycles, 1), warmup_cycles=0,
                     spinup_steps=pick(args.spinup_steps, 10))
    else:
        study = dict(mode="strong", sizes=[pick(args.size, 100_000)], ranks=[args.ranks],
                     n_members=pick(args.members, 20), euler_steps=pick(args.euler_steps, 500),
                     n_cycles=pick(args.cycles, 40), warmup_cycles=0,
                     spinup_steps=pick(args.spinup_steps, 1000))
    return {**study, **resources}


def _launcher(n_ranks: int, launcher: str | None) -> list[str]:
    """``--launcher`` as given; else ``srun -n N`` inside a Slurm job, else ``mpiexec -n N``
    (the venv's, from the mpich wheel, when there is one)."""
    if launcher:
        return shlex.split(launcher)
    if os.environ.get("SLURM_JOB_ID") and shutil.which("srun"):
        return ["srun", "-n", str(n_ranks)]
    local = Path(sys.executable).parent / "mpiexec"
    return [str(local) if local.exists() else "mpiexec", "-n", str(n_ranks)]


def _launch_command(n_ranks: int, study: dict[str, Any], path: Path,
                    launcher: str | None = None) -> list[str]:
    return [*_launcher(n_ranks, launcher), sys.executable, str(Path(__file__).resolve()),
            "_worker", json.dumps(study), str(path)]


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _launch(n_ranks: int, study: dict[str, Any], path: Path,
            launcher: str | None = None) -> dict[str, Any]:
    """Run the worker on ``n_ranks`` ranks; return the machine's state around it."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": str(study["threads_per_rank"]),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "TURBDA_PLAIN_PROGRESS": "1", "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    before = _load()
    print(f"load average before: {before} (1 min) on {os.cpu_count()} CPUs", flush=True)
    start = time.perf_counter()
    subprocess.run(_launch_command(n_ranks, study, path, launcher), check=True, env=env)
    wall = time.perf_counter() - start
    after = _load()
    print(f"launch wall time {wall:.1f} s; load average after: {after}", flush=True)
    return {"load_average_before": before, "load_average_after": after,
            "cpu_count": os.cpu_count(), "launch_wall_s": wall, "mpi_ranks": n_ranks}


def _worker(study_json: str, path: str) -> None:
    from mpi4py import MPI

    from turbda_kit.experiments.scaling import ScalingStudy, run_scaling
    from turbda_kit.io import write_dataset
    from turbda_kit.parallel.mpi import abort_on_exception

    comm = MPI.COMM_WORLD
    with abort_on_exception(comm):
        ds = run_scaling(ScalingStudy(**json.loads(study_json)), comm, device="auto")
        if comm.Get_rank() == 0:
            write_dataset(ds, path)


def _update_summary(out: Path, datasets: dict[str, Any], command: str,
                    machine: dict[str, Any] | None = None) -> Path:
    """Add these studies to ``out/scaling_summary.json`` (created if missing)."""
    from turbda_kit.experiments.scaling_results import SUMMARY_KIND, scaling_summary
    from turbda_kit.io import write_json

    path = out / SUMMARY
    document = scaling_summary(datasets, command=None)
    document.pop("command")
    for study in document["studies"].values():
        study["command"] = command
        if machine:
            study["machine"] = machine
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("kind") == SUMMARY_KIND:
            previous["studies"].update(document["studies"])
            document = previous
    return write_json(path, document)


def _report(name: str, ds, out: Path, plots: bool) -> None:
    from turbda_kit.experiments.scaling_results import scaling_table

    attrs = ds.attrs
    prefetch = "unknown" if "prefetch_noise" not in attrs else bool(int(attrs["prefetch_noise"]))
    print(f"\n{name}: {attrs['mode']} scaling, {attrs['n_members']} members, "
          f"{attrs['euler_steps']} Euler steps, {ds.sizes['cycle']} cycles "
          f"({attrs['warmup_cycles']} warm-up), {attrs.get('threads_per_rank')} thread(s) per "
          f"rank, noise prefetch {prefetch} -> {attrs.get('cores_per_rank')} core(s) per rank, "
          f"{attrs.get('device')}")
    print(scaling_table(ds).round(3).to_string())
    print("analysis RMSE per cycle (largest rank count):",
          " ".join(f"{v:.3f}" for v in ds["rmse_analysis"].isel(ranks=-1, size=0).values))
    if plots and ds.sizes["ranks"] > 1:
        from turbda_kit.viz.scaling_plots import save_scaling_plots

        for path in save_scaling_plots(ds, out, prefix=name):
            print("wrote", path)


def measure(what: str, args: argparse.Namespace, command: str) -> int:
    """Run one measurement into ``args.out`` and print its table and summary."""
    from turbda_kit.io import open_dataset

    study = build_study(what, args)
    out = args.out
    path = out / f"scaling_{what}.nc"
    print(f"{what}: {json.dumps(study)} on {args.ranks} MPI rank(s) x "
          f"{study['threads_per_rank']} thread(s)", flush=True)
    if args.dry_run:
        print("would run:", shlex.join(_launch_command(args.ranks, study, path, args.launcher)))
        print(f"would write {path}, {out / SUMMARY}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    print(f"output directory: {out.resolve()}", flush=True)
    machine = _launch(args.ranks, study, path, args.launcher)
    with open_dataset(path) as opened:
        ds = opened.load()
    _report(what, ds, out, plots=not args.no_plots)
    print("wrote", _update_summary(out, {what: ds}, command, machine))
    return 0


def combine(args: argparse.Namespace, command: str) -> int:
    """Merge the Datasets of several jobs into ``args.output`` (+ plots, + summary)."""
    from turbda_kit.errors import InputError
    from turbda_kit.experiments.scaling_results import combine_scaling
    from turbda_kit.io import write_dataset

    try:
        ds = combine_scaling(args.inputs)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output = Path(args.output)
    write_dataset(ds, output)
    print(f"wrote {output}: {ds.attrs['mode']} scaling, ranks {ds['ranks'].values.tolist()}, "
          f"sizes {ds['size'].values.tolist()}")
    _report(ds.attrs["mode"], ds, output.parent, plots=False)
    if args.plots:
        from turbda_kit.viz.scaling_plots import save_scaling_plots

        for path in save_scaling_plots(ds, output.parent, prefix=output.stem):
            print("wrote", path)
    if args.summary:
        print("wrote", _update_summary(output.parent, {ds.attrs["mode"]: ds}, command))
    return 0


def _default_out() -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path("runs") / f"bench-ensf-scaling-{stamp}"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_worker":
        _worker(argv[1], argv[2])
        return 0
    command = shlex.join(["python", "benchmarks/bench_ensf_scaling.py", *argv])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="what", required=True)
    for what in MEASUREMENTS:
        sub = commands.add_parser(what, help=f"the {what} measurement")
        sub.add_argument("--size", type=int, default=None,
                         help="weak: points per rank (2**20); strong: ring (2**21); big: ring "
                              "(1e8); accuracy: ring (1e5)")
        sub.add_argument("--members", type=int, default=None)
        sub.add_argument("--euler-steps", type=int, default=None)
        sub.add_argument("--cycles", type=int, default=None)
        sub.add_argument("--spinup-steps", type=int, default=None)
        sub.add_argument("--ranks", type=int, default=2, help="MPI ranks of the launch (2)")
        sub.add_argument("--launcher", default=None,
                         help="launch command, e.g. 'srun -n 2 -c 7 --gpus-per-task=1' "
                              "(default: srun -n RANKS inside a Slurm job, else mpiexec -n RANKS)")
        sub.add_argument("--threads-per-rank", type=int, default=1,
                         help="torch threads per rank, the same for every rank count (1)")
        sub.add_argument("--prefetch", action="store_true",
                         help="draw EnSF noise in a background thread (one more core per rank)")
        sub.add_argument("--out", type=Path, default=None,
                         help="output directory (default: runs/bench-ensf-scaling-<UTC time>)")
        sub.add_argument("--no-plots", action="store_true", help="skip the PNG/HTML plots")
        sub.add_argument("--dry-run", action="store_true",
                         help="print the study and the launch command, run nothing")
    merge = commands.add_parser("combine", help="merge the Datasets of several jobs")
    merge.add_argument("inputs", nargs="+", help="scaling_*.nc files (same mode and settings)")
    merge.add_argument("-o", "--output", required=True, help="output .nc file")
    merge.add_argument("--plots", action="store_true", help="also write PNG/HTML plots beside it")
    merge.add_argument("--summary", action="store_true",
                       help=f"add the merged study to {SUMMARY} beside it")
    args = parser.parse_args(argv)
    if args.what == "combine":
        return combine(args, command)
    args.out = args.out or _default_out()
    return measure(args.what, args, command)


if __name__ == "__main__":
    sys.exit(main())
