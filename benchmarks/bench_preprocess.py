"""Throughput of the preprocessing pipeline against a plain file copy of the same bytes.

Generates a synthetic 256×256 two-level nature run of about ``--size-gb`` GB in a
temporary directory, then times, in the same run:

* ``copy``: ``shutil.copyfile`` of the nature run (read + write the bytes once);
* ``preprocess`` serially and under ``mpiexec -n N`` for each ``--ranks`` entry.

The pipeline moves the data twice (split: read + write chunks; shard: read chunks +
write shards), so an I/O-bound pipeline takes about two copies' time: the ``vs 2 copies``
column is that ideal divided by the measured time (1.0 = as fast as the disk allows).

Usage::

    python benchmarks/bench_preprocess.py                  # 1 GB, 1 and 2 ranks
    python benchmarks/bench_preprocess.py --size-gb 0.05   # quick check
"""

from __future__ import annotations

import argparse
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
        {"theta": (("time", "z", "y", "x"), theta, {"units": "K"})},
        coords={"time": ("time", dt * np.arange(n_time), {"units": "s"}),
                "z": ("z", [0.0, 10000.0], {"units": "m"}),
                "y": ("y", 20000.0 * np.arange(grid), {"units": "m"}),
                "x": ("x", 20000.0 * np.arange(grid), {"units": "m"})})
    write_dataset(ds, path)
    return n_days


def split_days(n_days: int) -> dict[str, int]:
    """80 / 10 / 10 per cent of the days for train / val / test."""
    val = max(1, int(round(0.8 * n_days)))
    test = max(val + 1, int(round(0.9 * n_days)))
    return dict(start_train_day=0, start_val_day=val, start_test_day=test, end_day=n_days)


def worker(args: argparse.Namespace) -> None:
    """Entry of one rank (also the serial run): preprocess and print the wall time."""
    from turbda_kit.data.preprocess import preprocess

    summary = preprocess(args.nature, args.root, **split_days(args.n_days),
                         steps_per_file=args.steps_per_day, num_shards=args.num_shards,
                         fmt=args.fmt)
    if not summary.already_complete and os.environ.get("PMI_RANK", "0") == "0":
        print(f"WALL {summary.wall_seconds:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="nature run size (GB)")
    parser.add_argument("--grid", type=int, default=256)
    parser.add_argument("--steps-per-day", type=int, default=24)
    parser.add_argument("--num-shards", type=int, default=2)
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    parser.add_argument("--fmt", default="npz", choices=["npz", "zarr"])
    parser.add_argument("--tmpdir", default=None, help="where to put the data (default: $TMPDIR)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nature", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--n-days", type=int, help=argparse.SUPPRESS)
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

        start = time.perf_counter()
        shutil.copyfile(nature, base / "copy.nc")
        copy_seconds = time.perf_counter() - start
        (base / "copy.nc").unlink()
        copy_rate = size / 1e6 / copy_seconds
        print(f"\n{'run':<18}{'wall (s)':>10}{'MB/s':>10}{'vs 2 copies':>13}")
        print(f"{'copy (baseline)':<18}{copy_seconds:>10.2f}{copy_rate:>10.0f}{'':>13}")

        mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}:"
                                               f"{os.environ.get('PATH', '')}")
        for n_ranks in (int(r) for r in args.ranks.split(",")):
            root = base / f"shards_{n_ranks}"
            cmd = [sys.executable, __file__, "--worker", "--nature", str(nature), "--root",
                   str(root), "--n-days", str(n_days), "--steps-per-day",
                   str(args.steps_per_day), "--num-shards", str(args.num_shards), "--fmt",
                   args.fmt]
            if n_ranks > 1:
                if mpiexec is None:
                    print(f"{n_ranks} ranks: skipped (no mpiexec)")
                    continue
                cmd = [mpiexec, "-n", str(n_ranks), *cmd]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "TURBDA_PLAIN_PROGRESS": "1",
                   "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            outside = time.perf_counter() - start
            if proc.returncode != 0:
                print(f"{n_ranks} ranks failed:\n{proc.stderr[-2000:]}")
                continue
            wall = float(next(line.split()[1] for line in proc.stdout.splitlines()
                              if line.startswith("WALL")))
            label = f"preprocess x{n_ranks}"
            print(f"{label:<18}{wall:>10.2f}{size / 1e6 / wall:>10.0f}"
                  f"{2 * copy_seconds / wall:>13.2f}   (with start-up {outside:.1f} s)")
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
