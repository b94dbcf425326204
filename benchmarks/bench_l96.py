"""Lorenz-96 step speed and memory (measured, never asserted).

Compares, in the same run and in fresh subprocesses (so each peak RSS is its own):

* ``inplace``: :meth:`turbda_kit.models.lorenz96.Lorenz96.advance_` (padded stage buffer,
  preallocated workspace, no array-sized temporaries: ``x`` + 3 work arrays);
* ``naive``: the textbook ``torch.roll`` RK4 (``k1..k4`` and every shifted copy are fresh
  arrays), the baseline.

For each size it prints seconds per step, effective bandwidth (bytes the in-place RK4
must move: ~70 array streams per step), and the peak resident set size of the process
against the size of one state. The task's headline: one 1e8-variable single-member step
in a few GB.

Usage::

    python benchmarks/bench_l96.py                       # 1e6, 1e7, 1e8 (float32)
    python benchmarks/bench_l96.py --sizes 1e6 1e7 --dtype float64
    python benchmarks/bench_l96.py --naive-max 1e7       # skip the baseline above this
    python benchmarks/bench_l96.py --threads 1

Timings are the best of ``--repeats`` runs (a shared machine only slows a run down).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

# Array streams (reads + writes) of one in-place RK4 step, for the bandwidth figure. Per
# stage: tendency 11 (sub 3, mul_ 3, sub_ 3, add_ 2; the shifted views of one array count
# once each), accumulator 3, next-stage state 3; plus copying x into the stage buffer.
_PASSES_PER_RK4_STEP = 4 * 17 + 2


def _naive_rk4(x: torch.Tensor, dt: float, forcing: float) -> torch.Tensor:
    def f(y):
        return (torch.roll(y, -1, -1) - torch.roll(y, 2, -1)) * torch.roll(y, 1, -1) - y + forcing
    k1 = f(x)
    k2 = f(x + dt / 2 * k1)
    k3 = f(x + dt / 2 * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _child(kind: str, n: int, dtype: str, steps: int, repeats: int) -> dict:
    """Run in a fresh process: time ``steps`` steps, report the best time and peak RSS."""
    from turbda_kit.models.lorenz96 import L96Workspace, Lorenz96

    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=gen, dtype=torch_dtype).add_(8.0)
    rss_state = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    if kind == "inplace":
        model = Lorenz96(n, dt=0.01)
        work = L96Workspace.like(x)
        model.advance_(x, 1, work)            # warm-up, allocates the workspace
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.advance_(x, steps, work)
            best = min(best, (time.perf_counter() - t0) / steps)
    else:
        x = _naive_rk4(x, 0.01, 8.0)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                x = _naive_rk4(x, 0.01, 8.0)
            best = min(best, (time.perf_counter() - t0) / steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "n": n, "seconds_per_step": best, "peak_rss_mb": peak / 1024,
            "rss_before_mb": rss_state / 1024, "finite": bool(torch.isfinite(x).all())}


def _run_child(kind: str, n: int, dtype: str, steps: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--child", kind,
           str(n), dtype, str(steps), str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-max", type=float, default=1e7,
                        help="largest size for the naive baseline (it needs ~15 arrays)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        kind, n, dtype, steps, repeats = args.child
        print(json.dumps(_child(kind, int(n), dtype, int(steps), int(repeats))))
        return

    item = torch.finfo(getattr(torch, args.dtype)).bits // 8
    print(f"Lorenz-96 RK4 step, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{'n':>12} {'kind':>8} {'s/step':>9} {'GB/s':>7} {'peak RSS MB':>12} "
          f"{'state MB':>9} {'RSS/state':>9}")
    for size in args.sizes:
        n = int(size)
        state_mb = n * item / 2 ** 20
        kinds = ["inplace"] + (["naive"] if n <= args.naive_max else [])
        steps = max(1, min(args.steps, int(2e8 // n)))
        for kind in kinds:
            r = _run_child(kind, n, args.dtype, steps, args.repeats)
            gbs = _PASSES_PER_RK4_STEP * n * item / r["seconds_per_step"] / 1e9
            print(f"{n:>12,} {kind:>8} {r['seconds_per_step']:>9.4f} "
                  f"{gbs if kind == 'inplace' else float('nan'):>7.2f} "
                  f"{r['peak_rss_mb']:>12.0f} {state_mb:>9.0f} "
                  f"{r['peak_rss_mb'] / state_mb:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
