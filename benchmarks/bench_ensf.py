"""EnSF analysis speed against the seed's update and memory bandwidth; Lorenz-96 accuracy.

Speed (default): one analysis at 1e6 variables x 20 members x 100 Euler steps (paired
prior score, arctan observations of every component, float32), timed in one run against

* the seed's (paper's) EnSF update, reimplemented faithfully in ``benchmarks/seed_ensf.py``
  (whole-array torch operations with fresh allocations per step, ``randn`` noise), on the
  same forecast, observations and schedule;
* the machine's copy bandwidth (``y.copy_(x)`` on arrays of the ensemble's size).

Both sides run on ``--threads`` torch threads (default 1, with no helper threads: the
kit's noise-prefetch thread is off and the fused step uses the calling thread only; a
"one-core" figure uses one core; with more, the kit splits the columns over the caller
and ``threads - 1`` pool threads). Wall and CPU (process) times are printed: on a loaded
machine the CPU time is the fairer figure, and CPU/wall shows the cores actually used.
"Fraction of copy" = (bytes the update must stream: x read + written and the prior read, 3
ensemble arrays per step) / analysis time / copy bandwidth.

Accuracy (``--accuracy``): the EnSF paper's Lorenz-96 setting (Bao, Zhang & Zhang 2024):
F = 8, RK4 dt = 0.01, arctan observations of all components with sigma = 0.05 every 10
steps, 20 members started from N(0, I), 500 Euler steps (``EnSFConfig.bao2024_lorenz96``),
forecasts clipped to +-50 as in the authors' code. Prints the analysis RMSE every 10
cycles and the free-running ensemble's RMSE. The paper reports ~0.20 after 150 cycles at
1e6 variables.

Usage::

    python benchmarks/bench_ensf.py --threads 1 --json ensf_speed_1core.json
    python benchmarks/bench_ensf.py --threads 2 --json ensf_speed_2core.json
    python benchmarks/bench_ensf.py --n 1e5 --noise blocks      # the previous noise stream
    python benchmarks/bench_ensf.py --accuracy --n 1e4 --cycles 150
    python benchmarks/bench_ensf.py --json bench_ensf.json    # also write the summary

``--json PATH`` writes the printed figures (speed) or the per-cycle RMSEs with the start
and length of the run (accuracy) as one JSON summary, atomically; the printed output is
unchanged.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seed_ensf import seed_ensf_update  # noqa: E402

from turbda_kit import native  # noqa: E402
from turbda_kit.filters.ensf import EnSFConfig, ensf_analysis  # noqa: E402
from turbda_kit.io import write_json  # noqa: E402
from turbda_kit.models.lorenz96 import L96Workspace, Lorenz96  # noqa: E402
from turbda_kit.obs.operators import Arctan  # noqa: E402
from turbda_kit.random_streams import indexed_normal_  # noqa: E402

# Ensemble arrays the update must stream per Euler step: x read and written, prior read.
_STREAMS_PER_STEP = 3


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall time, the CPU time of that run, and the last result."""
    best = (float("inf"), float("inf"))
    result = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if wall < best[0]:
            best = (wall, cpu)
    return best[0], best[1], result


def _copy_bandwidth(like: torch.Tensor) -> float:
    """GB/s of ``y.copy_(x)`` (one read + one write stream) on arrays like ``like``."""
    x, y = torch.empty_like(like).fill_(1.0), torch.empty_like(like).fill_(2.0)
    wall, _, _ = _timed(lambda: y.copy_(x), 7)
    return 2 * like.numel() * like.element_size() / wall / 1e9


def speed(n: int, members: int, steps: int, repeats: int, seed_repeats: int,
          noise: str) -> dict[str, Any]:
    dtype = torch.float32
    threads = torch.get_num_threads()
    array_bytes = members * n * torch.finfo(dtype).bits // 8
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(n, generator=gen, dtype=dtype).mul_(3.0).add_(8.0)
    forecast = truth + torch.randn(members, n, generator=gen, dtype=dtype)
    sigma = 0.05
    operator = Arctan((n,))
    observations = operator(truth) + sigma * torch.randn(n, generator=gen, dtype=dtype)
    config = EnSFConfig(n_steps=steps, noise=noise, prefetch_noise=False)

    copy_gbps = _copy_bandwidth(forecast)
    seed_gen = torch.Generator().manual_seed(1)
    seed_s, seed_cpu, seed_analysis = _timed(
        lambda: seed_ensf_update(forecast, observations, sigma, steps, config.eps_alpha,
                                 config.eps_beta, seed_gen), seed_repeats)
    w0 = time.perf_counter()
    native_kernel = native.available()        # builds the C kernel once (cached on disk)
    ensf_analysis(forecast[:, :1000].contiguous(), observations[:1000], Arctan((1000,)),
                  sigma, 0, EnSFConfig(n_steps=2, noise=noise, prefetch_noise=False))
    warmup_s = time.perf_counter() - w0
    kit_s, kit_cpu, kit_analysis = _timed(
        lambda: ensf_analysis(forecast, observations, operator, sigma, 1, config), repeats)
    threads_alive = threading.active_count()

    def rmse(ensemble):
        return float((ensemble.mean(0) - truth).pow(2).mean().sqrt())

    moved = (_STREAMS_PER_STEP * steps) * array_bytes
    achieved = moved / kit_s / 1e9
    values = steps * members * n
    summary = {
        "n": n, "members": members, "steps": steps, "threads": threads,
        "seed_threads": threads, "kit_threads": threads,
        # The kit's threads: the caller plus threads - 1 pool threads splitting the columns.
        "kit_helper_threads": threads - 1,
        "python_threads_alive": threads_alive,
        "seed_s": seed_s, "kit_s": kit_s, "speedup": seed_s / kit_s,
        "seed_cpu_s": seed_cpu, "kit_cpu_s": kit_cpu, "speedup_cpu": seed_cpu / kit_cpu,
        "copy_GBps": copy_gbps, "kit_GBps": achieved, "fraction_of_copy": achieved / copy_gbps,
        "kit_ns_per_value_step": kit_s / values * 1e9, "noise": noise,
        "fused_c_kernel": native_kernel, "warmup_s": warmup_s,
        "prior_rmse": rmse(forecast), "seed_rmse": rmse(seed_analysis),
        "kit_rmse": rmse(kit_analysis), "dtype": "float32", "obs": "arctan",
        "torch": torch.__version__, "load_average_1min": os.getloadavg()[0],
        "command": "python benchmarks/bench_ensf.py " + " ".join(sys.argv[1:]),
    }
    print(f"EnSF analysis: n={n:,} x {members} members x {steps} Euler steps, arctan obs of "
          f"every component (sigma {sigma}), paired score, float32, torch {torch.__version__}")
    helpers = ("no helper thread" if threads == 1 else
               f"the kit's columns split over the caller + {threads - 1} pool thread(s)")
    print(f"  threads: {threads} torch thread(s) for both sides, {helpers} (kit "
          f"noise={noise}, prefetch off, C kernel {'on' if native_kernel else 'off'}); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  copy bandwidth (y.copy_(x), {array_bytes / 1e6:.0f} MB)  {copy_gbps:8.2f} GB/s")
    print(f"  seed's update          wall {seed_s:8.2f} s   cpu {seed_cpu:8.2f} s")
    print(f"  kit ensf_analysis      wall {kit_s:8.2f} s   cpu {kit_cpu:8.2f} s   "
          f"({kit_s / values * 1e9:.2f} ns per value and step; warm-up {warmup_s:.1f} s)")
    print(f"  speed-up               wall {seed_s / kit_s:8.1f} x   cpu {seed_cpu / kit_cpu:8.1f} x")
    print(f"  kit bandwidth          {achieved:8.2f} GB/s = {achieved / copy_gbps:.0%} of copy "
          f"({_STREAMS_PER_STEP} arrays per step, {moved / 1e9:.0f} GB)")
    print(f"  analysis RMSE          prior {summary['prior_rmse']:.3f}, seed "
          f"{summary['seed_rmse']:.3f}, kit {summary['kit_rmse']:.3f} (same job, other noise)")
    return summary


def accuracy(n: int, members: int, cycles: int, steps: int, dtype: torch.dtype,
             seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    model = Lorenz96(n, forcing=8.0, dt=0.01)
    truth = indexed_normal_(torch.empty(n, dtype=torch.float64), (seed, 0)).add_(8.0)
    model.advance_(truth, 1000)                      # onto the attractor
    truth = truth.to(dtype)
    ensemble = torch.randn(members, n, generator=gen, dtype=dtype)    # N(0, I), as the paper
    free = ensemble.clone()
    work_t, work_e, work_f = (L96Workspace.like(v) for v in (truth, ensemble, free))
    operator = Arctan((n,))
    config = EnSFConfig.bao2024_lorenz96(n_steps=steps)
    analysis_gen = torch.Generator().manual_seed(seed + 1)
    print(f"EnSF Lorenz-96 accuracy: n={n:,}, {members} members, {steps} Euler steps, "
          f"eps_alpha={config.eps_alpha}, eps_beta={config.eps_beta}, "
          f"{str(dtype).replace('torch.', '')}, {cycles} cycles of 10 RK4 steps")
    print(f"{'cycle':>6} {'forecast':>9} {'analysis':>9} {'spread':>8} {'free run':>9} {'s':>6}")
    rmse_history = []
    for cycle in range(1, cycles + 1):
        for _ in range(10):
            for state, work in ((truth, work_t), (ensemble, work_e), (free, work_f)):
                model.advance_(state, 1, work)
        ensemble.clamp_(-50.0, 50.0)
        obs = operator(truth) + 0.05 * torch.randn(n, generator=gen, dtype=dtype)
        forecast_rmse = float((ensemble.mean(0) - truth).pow(2).mean().sqrt())
        t0 = time.perf_counter()
        ensemble = ensf_analysis(ensemble, obs, operator, 0.05, analysis_gen, config)
        seconds = time.perf_counter() - t0
        rmse = float((ensemble.mean(0) - truth).pow(2).mean().sqrt())
        rmse_history.append(rmse)
        if cycle % 10 == 0 or cycle == 1 or cycle == cycles:
            spread = float(ensemble.var(0).mean().sqrt())
            free_rmse = float((free.mean(0) - truth).pow(2).mean().sqrt())
            print(f"{cycle:>6} {forecast_rmse:>9.3f} {rmse:>9.3f} {spread:>8.3f} "
                  f"{free_rmse:>9.3f} {seconds:>6.1f}", flush=True)
    tail = rmse_history[-10:]
    print(f"final analysis RMSE {rmse_history[-1]:.3f}; mean of the last {len(tail)} cycles "
          f"{sum(tail) / len(tail):.3f} (paper: ~0.20 at 1e6 variables, 150 cycles)")
    return {"benchmark": "ensf_lorenz96_accuracy", "n": n, "members": members,
            "euler_steps": steps, "cycles": cycles, "steps_per_cycle": 10, "dt": 0.01,
            "forcing": 8.0, "obs": "arctan", "obs_error_std": 0.05,
            "dtype": str(dtype).replace("torch.", ""), "seed": seed,
            "threads": torch.get_num_threads(),
            "start": "cold: members drawn from N(0, I); truth spun up 1000 steps from 8 + N(0, I)",
            "eps_alpha": config.eps_alpha, "eps_beta": config.eps_beta,
            "final_rmse_analysis": rmse_history[-1],
            "mean_rmse_analysis_last_10": sum(tail) / len(tail),
            "rmse_analysis": rmse_history,
            "paper": {"rmse_analysis": 0.20, "n": 1_000_000, "cycles": 150,
                      "source": "Bao, Zhang & Zhang 2024 (EnSF paper), Lorenz-96 experiment"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=float, default=1e6)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None,
                        help="Euler steps (default 100 for speed, 500 for --accuracy)")
    parser.add_argument("--repeats", type=int, default=2, help="kit analyses timed (best)")
    parser.add_argument("--seed-repeats", type=int, default=1,
                        help="seed updates timed (best)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides (default 1: one core)")
    parser.add_argument("--noise", choices=["counter", "blocks"], default="counter")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--cycles", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    if args.accuracy:
        summary = accuracy(int(args.n), args.members, args.cycles, args.steps or 500,
                           torch.float32, args.seed)
    else:
        summary = speed(int(args.n), args.members, args.steps or 100, args.repeats,
                        args.seed_repeats, args.noise)
    if args.json:
        summary.update(command=shlex.join(["python", "benchmarks/bench_ensf.py", *sys.argv[1:]]),
                       torch=torch.__version__, cpu_count=os.cpu_count(),
                       load_average_start=load_start, load_average_end=os.getloadavg()[0])
        print("summary written to", write_json(args.json, summary))


if __name__ == "__main__":
    main()
