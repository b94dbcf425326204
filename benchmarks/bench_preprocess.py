"""Throughput of the preprocessing pipeline against a plain file copy of the same bytes.

Generates a synthetic 256×256 two-level nature run of about ``--size-gb`` GB in a
temporary directory, then times, in the same run:

* ``copy``: ``shutil.copyfile`` of the nature run (read + write the bytes once; on Linux
  a kernel-side ``sendfile``, no user-space copy at all): the baseline;
* ``copy via user space``: the same bytes read into a 16 MiB buffer and written back,
  the least any pipeline that looks at the data pays;
* ``CPU budget``: single-thread seconds of the work no pipeline can skip (read each day,
  its exact statistics, its CRC-32, write it to a new file), and the wall-time floor that
  gives on this machine's cores;
* ``preprocess`` serially and under ``mpiexec -n N`` for each ``--ranks`` entry, in each
  ``--modes`` entry: ``direct`` (the default: every rank reads its days straight from
  the nature run) and ``chunks`` (``via_chunks=True``: split into chunk files first).

``direct`` moves the data once (read the run, write the shards), so an I/O-bound run
takes about one copy's time; ``chunks`` moves it twice (two copies). The ``vs ideal``
column is that ideal divided by the measured time (1.0 = as fast as the copy). Each
configuration runs ``--repeat`` times; the stage columns show where rank 0's time went
(``PreprocessSummary.stage_seconds``) in the fastest repeat.

Usage::

    python benchmarks/bench_preprocess.py                  # 1 GB, 1 and 2 ranks, both modes
    python benchmarks/bench_preprocess.py --size-gb 0.05   # quick check
    python benchmarks/bench_preprocess.py --json bench_preprocess.json   # also the summary

``--json PATH`` writes every printed row (seconds, MB/s, the fraction of the ideal, the
stage seconds) with the sizes, cores and command as one JSON summary, atomically; the
printed table is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_nature_run(path: Path, size_gb: float, grid: int, steps_per_day: int) -> int:
    """Write a synthetic nature run of about ``size_gb`` GB; returns the number of days."""
    import xarray as xr

    from turbda_kit.cf import CONVENTIONS
    from turbda_kit.data.time_axis import time_attrs
    from turbda_kit.io import write_dataset

    bytes_per_day = steps_per_day * 2 * grid * grid * 4
    n_days = max(4, int(np.ceil(size_gb * 1e9 / bytes_per_day)))
    rng = np.random.default_rng(0)
    n_time = n_days * steps_per_day
    theta = np.empty((n_time, 2, grid, grid), dtype=np.float32)
    # A random walk filled step by step: one field of memory for the increments.
    state = np.full((2, grid, grid), 290.0, dtype=np.float32)
    for i in range(n_time):
        state += 0.1 * rng.standard_normal((2, grid, grid), dtype=np.float32)
        theta[i] = state
    dt = 86400.0 / steps_per_day
    ds = xr.Dataset(
        {"theta": (("time", "z", "y", "x"), theta,
                   {"units": "K", "long_name": "potential temperature (random walk)"})},
        coords={"time": ("time", dt * np.arange(n_time), time_attrs("time since time zero")),
                "z": ("z", [0.0, 10000.0], {"units": "m", "long_name": "height"}),
                "y": ("y", 20000.0 * np.arange(grid),
                      {"units": "m", "long_name": "northward distance"}),
                "x": ("x", 20000.0 * np.arange(grid),
                      {"units": "m", "long_name": "eastward distance"})},
        attrs={"title": "synthetic nature run for the preprocessing benchmark",
               "Conventions": CONVENTIONS})
    write_dataset(ds, path)
    return n_days


def split_days(n_days: int) -> dict[str, int]:
    """80 / 10 / 10 per cent of the days for train / val / test."""
    # Clamped so that val and test keep at least one day each (n_days >= 4).
    val = min(max(1, int(round(0.8 * n_days))), n_days - 2)
    test = min(max(val + 1, int(round(0.9 * n_days))), n_days - 1)
    return dict(start_train_day=0, start_val_day=val, start_test_day=test, end_day=n_days)


def cpu_budget(nature: Path, steps_per_day: int, out_dir: Path) -> dict[str, float]:
    """Single-thread seconds of each unavoidable piece of work, on the whole run.

    Reads every day into one buffer with h5py (as the pipeline does), computes its exact
    statistics, its CRC-32 and writes it to a new file. The pieces are timed separately
    (one pass each over all days), so their sum is the CPU time a pipeline needs at least
    and ``sum / cores`` a floor for its wall time.
    """
    import h5py

    from turbda_kit.data.day_pipeline import row_blocks
    from turbda_kit.data.day_statistics import field_moments
    from turbda_kit.data.npz import crc32

    seconds = dict.fromkeys(("read", "statistics", "crc", "write"), 0.0)
    out_dir.mkdir(exist_ok=True)
    with h5py.File(nature, "r") as handle:
        theta = handle["theta"]
        buffer = np.empty((steps_per_day, *theta.shape[1:]), dtype=theta.dtype)
        mean, m2 = np.empty(buffer.shape[1:]), np.empty(buffer.shape[1:])
        scratch = np.empty(buffer.size)
        blocks = row_blocks(buffer.shape[1], buffer.shape[2], 4)  # as the pipeline does
        for day in range(theta.shape[0] // steps_per_day):
            start = time.perf_counter()
            theta.read_direct(buffer, np.s_[day * steps_per_day:(day + 1) * steps_per_day])
            seconds["read"] += time.perf_counter() - start
            start = time.perf_counter()
            for v, rows in blocks:
                field_moments(buffer[:, v, rows], mean[v, rows], m2[v, rows], scratch)
            seconds["statistics"] += time.perf_counter() - start
            start = time.perf_counter()
            crc32(buffer)
            seconds["crc"] += time.perf_counter() - start
            start = time.perf_counter()
            with open(out_dir / f"{day}.raw", "wb", buffering=0) as target:
                target.write(buffer)
            seconds["write"] += time.perf_counter() - start
    shutil.rmtree(out_dir)
    return seconds


def worker(args: argparse.Namespace) -> None:
    """Entry of one rank (also the serial run): preprocess and print the wall time."""
    from turbda_kit.data.preprocess import preprocess

    extra = {"via_chunks": True} if args.mode == "chunks" else {}
    summary = preprocess(args.nature, args.root, **split_days(args.n_days),
                         steps_per_file=args.steps_per_day, num_shards=args.num_shards,
                         fmt=args.fmt, **extra)
    if not summary.already_complete and os.environ.get("PMI_RANK", "0") == "0":
        print(f"WALL {summary.wall_seconds:.3f}", flush=True)
        print(f"STAGES {json.dumps(getattr(summary, 'stage_seconds', {}))}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="nature run size (GB)")
    parser.add_argument("--grid", type=int, default=256)
    parser.add_argument("--steps-per-day", type=int, default=24)
    parser.add_argument("--num-shards", type=int, default=2)
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    parser.add_argument("--modes", default="direct,chunks",
                        help="comma-separated: direct (default pipeline), chunks (via_chunks)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration")
    parser.add_argument("--fmt", default="npz", choices=["npz", "zarr"])
    parser.add_argument("--tmpdir", default=None, help="where to put the data (default: $TMPDIR)")
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nature", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--n-days", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="direct", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="bench_preprocess_") as tmp:
        base = Path(tmp)
        nature = base / "nature_sqg.nc"
        start = time.perf_counter()
        n_days = make_nature_run(nature, args.size_gb, args.grid, args.steps_per_day)
        size = nature.stat().st_size
        print(f"nature run: {size / 1e6:.0f} MB, {n_days} days x {args.steps_per_day} steps, "
              f"{args.grid}x{args.grid}x2 float32 (generated in "
              f"{time.perf_counter() - start:.1f} s) in {base}")

        def copy() -> float:
            start = time.perf_counter()
            shutil.copyfile(nature, base / "copy.nc")
            seconds = time.perf_counter() - start
            (base / "copy.nc").unlink()
            return seconds

        def copy_through_user_space() -> float:
            # What any pipeline that looks at the data pays at least: the bytes come up
            # into a buffer and go back down (no CRC, no arithmetic).
            buffer = memoryview(bytearray(16 << 20))
            start = time.perf_counter()
            with open(nature, "rb", buffering=0) as src, \
                    open(base / "copy.nc", "wb", buffering=0) as dst:
                while n := src.readinto(buffer):
                    dst.write(buffer[:n])
            seconds = time.perf_counter() - start
            (base / "copy.nc").unlink()
            return seconds

        copies = [copy() for _ in range(max(1, args.repeat))]
        copy_seconds = min(copies)
        user_copies = [copy_through_user_space() for _ in range(max(1, args.repeat))]
        stages = ("mpi", "inspect", "split", "read", "statistics", "write", "finalize")
        print(f"\n{'run':<22}{'wall (s)':>10}{'MB/s':>8}{'vs ideal':>10}   "
              + " ".join(f"{s:>6.6}" for s in stages) + "  other   (s; with start-up)")
        print(f"{'copy (baseline)':<22}{copy_seconds:>10.2f}{size / 1e6 / copy_seconds:>8.0f}"
              f"{'':>10}   (each: {', '.join(f'{c:.2f}' for c in copies)})")
        user_seconds = min(user_copies)
        print(f"{'copy via user space':<22}{user_seconds:>10.2f}{size / 1e6 / user_seconds:>8.0f}"
              f"{copy_seconds / user_seconds:>10.2f}   "
              f"(each: {', '.join(f'{c:.2f}' for c in user_copies)})")

        budgets = [cpu_budget(nature, args.steps_per_day, base / "budget")
                   for _ in range(max(1, args.repeat))]
        budget = {k: min(b[k] for b in budgets) for k in budgets[0]}
        total = sum(budget.values())
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        summary = {
            "benchmark": "preprocess_throughput",
            "command": " ".join(["python", "benchmarks/bench_preprocess.py",
                                 *sys.argv[1:]]),
            "nature_run_mb": size / 1e6, "grid": args.grid, "days": n_days,
            "steps_per_day": args.steps_per_day, "num_shards": args.num_shards,
            "format": args.fmt, "cores": cores, "load_average_start": os.getloadavg()[0],
            "copy_s": copy_seconds, "copy_mb_s": size / 1e6 / copy_seconds,
            "user_space_copy_s": user_seconds, "cpu_budget_s": total,
            "cpu_budget_parts_s": budget, "runs": []}
        print(f"{'CPU budget, 1 thread':<22}{total:>10.2f}   "
              + ", ".join(f"{k} {v:.2f}" for k, v in budget.items())
              + f"; on {cores} cores >= {total / cores:.2f} s ({copy_seconds * cores / total:.2f}"
              " of ideal at best)")

        mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}:"
                                               f"{os.environ.get('PATH', '')}")
        for mode in args.modes.split(","):
            copies_moved = 2 if mode == "chunks" else 1
            for n_ranks in (int(r) for r in args.ranks.split(",")):
                root = base / f"shards_{mode}_{n_ranks}"
                cmd = [sys.executable, __file__, "--worker", "--nature", str(nature), "--root",
                       str(root), "--n-days", str(n_days), "--steps-per-day",
                       str(args.steps_per_day), "--num-shards", str(args.num_shards), "--fmt",
                       args.fmt, "--mode", mode]
                if n_ranks > 1:
                    if mpiexec is None:
                        print(f"{n_ranks} ranks: skipped (no mpiexec)")
                        continue
                    cmd = [mpiexec, "-n", str(n_ranks), *cmd]
                env = {**os.environ, "OMP_NUM_THREADS": "1", "TURBDA_PLAIN_PROGRESS": "1",
                       "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
                runs = []
                for _ in range(max(1, args.repeat)):
                    start = time.perf_counter()
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    outside = time.perf_counter() - start
                    shutil.rmtree(root, ignore_errors=True)
                    if proc.returncode != 0:
                        print(f"{mode} x{n_ranks} failed:\n{proc.stderr[-2000:]}")
                        break
                    lines = proc.stdout.splitlines()
                    wall = float(next(x.split()[1] for x in lines if x.startswith("WALL")))
                    found = [x.split(" ", 1)[1] for x in lines if x.startswith("STAGES")]
                    runs.append((wall, outside, json.loads(found[0]) if found else {}))
                if not runs:
                    continue
                wall, outside, seconds = min(runs)
                label = f"{mode} x{n_ranks}"
                summary["runs"].append({
                    "mode": mode, "ranks": n_ranks, "threads_per_rank": 1, "wall_s": wall,
                    "mb_s": size / 1e6 / wall, "vs_ideal": copies_moved * copy_seconds / wall,
                    "stage_seconds": seconds, "repeats_s": [r[0] for r in runs]})
                print(f"{label:<22}{wall:>10.2f}{size / 1e6 / wall:>8.0f}"
                      f"{copies_moved * copy_seconds / wall:>10.2f}   "
                      + " ".join(f"{seconds.get(s, 0.0):>6.2f}" for s in stages)
                      + f" {wall - sum(seconds.values()):>6.2f}"
                      + f"   ({outside:.1f}; each: {', '.join(f'{r[0]:.2f}' for r in runs)})")
        summary["load_average_end"] = os.getloadavg()[0]
        if args.json:
            from turbda_kit.io import write_json

            print("summary written to", write_json(args.json, summary))

if __name__ == "__main__":
    main()
