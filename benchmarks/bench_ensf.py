"""EnSF analysis speed against memory bandwidth, and the paper's Lorenz-96 accuracy.

Speed (default): one :func:`turbda_kit.filters.ensf.ensf_analysis` at 1e6 variables x 20
members x 100 Euler steps (paired prior score, arctan observations of every component),
with, measured in the same run on arrays of the same size:

* the machine's copy bandwidth (``y.copy_(x)``, 2 streams) and triad bandwidth
  (``z = x + a y``, 3 streams), the baselines;
* the time of the random draws alone (the same global-index draws, added into the
  ensemble), of the likelihood score alone and of the prior/likelihood update alone.

"Achieved bandwidth" is the bytes the update must stream (the model below: array reads +
writes of the in-place loop) divided by the analysis time; the target is >= 40% of copy
bandwidth. On CPU the Gaussian draws are compute-bound, so the figure is also given
without the RNG time.

Accuracy (``--accuracy``): the EnSF paper's Lorenz-96 setting (Bao, Zhang & Zhang 2024):
F = 8, RK4 dt = 0.01, arctan observations of all components with sigma = 0.05 every 10
steps, 20 members started from N(0, I), 500 Euler steps (``EnSFConfig.bao2024_lorenz96``),
forecasts clipped to +-50 as in the authors' code. Prints the analysis RMSE every 10
cycles and the free-running ensemble's RMSE. The paper reports ~0.20 after 150 cycles at
1e6 variables.

Usage::

    python benchmarks/bench_ensf.py                          # speed, 1e6 x 20 x 100
    python benchmarks/bench_ensf.py --n 1e5 --threads 1
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
import time
from typing import Any

import torch

from turbda_kit.filters.ensf import EnSFConfig, ensf_analysis
from turbda_kit.io import write_json
from turbda_kit.models.lorenz96 import L96Workspace, Lorenz96
from turbda_kit.obs.operators import Arctan, Identity, inverse_variance
from turbda_kit.random_streams import indexed_blocks, indexed_normal_

# Array streams (reads + writes, in units of one ensemble array) per Euler step.
# Tiled loop (paired score, elementwise operator): x is read and written and the prior read
# once per step; the score, its scratch and the noise live in a cache-sized tile.
_TILED_STREAMS = 3
# Whole-array loop: likelihood score (arctan: addcmul 2, atan 2, sub 2, div 3 = 9;
# identity: sub 2, mul 2 = 4), update (mul 2, add prior 3, add score 3 = 8), noise added
# from a cache-resident block (read + write x = 2).
_SCORE_STREAMS = {"arctan": 9, "identity": 4}
_WHOLE_STREAMS = 8 + 2


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _bandwidths(like: torch.Tensor) -> tuple[float, float]:
    """Copy (2 streams) and triad (3 streams) bandwidth in GB/s on arrays like ``like``."""
    a, b, c = (torch.empty_like(like).fill_(1.0) for _ in range(3))
    t_copy = _best(lambda: b.copy_(a), 5)
    t_triad = _best(lambda: torch.add(a, b, alpha=0.5, out=c), 5)
    nbytes = like.numel() * like.element_size()
    return 2 * nbytes / t_copy / 1e9, 3 * nbytes / t_triad / 1e9


def speed(n: int, members: int, steps: int, obs: str, dtype: torch.dtype, repeats: int,
          path: str) -> dict[str, Any]:
    item = torch.finfo(dtype).bits // 8
    array_bytes = members * n * item
    gen = torch.Generator().manual_seed(0)
    forecast = torch.randn(members, n, generator=gen, dtype=dtype).mul_(3.0).add_(8.0)
    truth = torch.randn(n, generator=gen, dtype=dtype).mul_(3.0).add_(8.0)
    operator = Arctan((n,)) if obs == "arctan" else Identity((n,))
    observations = operator(truth) + 0.05 * torch.randn(n, generator=gen, dtype=dtype)
    if path == "whole":
        operator.elementwise = False          # hides the pointwise kernel: whole-array passes
    config = EnSFConfig(n_steps=steps)

    copy_bw, triad_bw = _bandwidths(forecast)

    # Components over `steps` iterations, tile by tile like the tiled analysis.
    def draws():
        for k in range(steps):
            for _ in indexed_blocks(members, n, (1, k), block_size=config.block_size,
                                    dtype=dtype):
                pass
    t_rng = _best(draws, repeats)
    width = min(config.block_size, n)
    out, work = (torch.empty(members, width, dtype=dtype) for _ in range(2))
    inv_var = inverse_variance(0.05, n)
    kernel = type(operator)((n,)).pointwise_score_

    def scores():
        for _ in range(steps):
            for start in range(0, n, width):
                stop = min(start + width, n)
                w = stop - start
                kernel(forecast[:, start:stop], observations[start:stop], inv_var,
                       out[:, :w], work[:, :w])
    t_score = _best(scores, repeats)

    ensf_analysis(forecast[:, :1000].contiguous(), observations[:1000], type(operator)((1000,)),
                  0.05, 0, EnSFConfig(n_steps=2))         # warm-up
    t_total = _best(lambda: ensf_analysis(forecast, observations, operator, 0.05, 1, config),
                    repeats)

    per_step = _TILED_STREAMS if path == "tiled" else _SCORE_STREAMS[obs] + _WHOLE_STREAMS
    streams = steps * per_step + 2
    moved = streams * array_bytes
    achieved = moved / t_total / 1e9
    values = steps * members * n
    print(f"EnSF analysis ({path} loop): n={n:,} x {members} members x {steps} Euler steps, "
          f"{obs} obs, {str(dtype).replace('torch.', '')}, block {config.block_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  ensemble array            {array_bytes / 1e6:10.1f} MB")
    print(f"  copy bandwidth            {copy_bw:10.2f} GB/s   (triad {triad_bw:.2f} GB/s)")
    print(f"  analysis                  {t_total:10.2f} s      ({t_total / steps * 1e3:.1f} ms per "
          f"Euler step, {t_total / values * 1e9:.1f} ns per value and step)")
    print(f"  random draws alone        {t_rng:10.2f} s      ({t_rng / t_total:.0%} of the "
          f"analysis; {t_rng / values * 1e9:.1f} ns per value)")
    print(f"  likelihood score alone    {t_score:10.2f} s      ({t_score / t_total:.0%})")
    print(f"  memory traffic (model)    {moved / 1e9:10.1f} GB     ({per_step} array streams per "
          f"step; {moved / 1e9 / copy_bw:.2f} s at copy bandwidth)")
    print(f"  achieved bandwidth        {achieved:10.2f} GB/s   = {achieved / copy_bw:.0%} of copy")
    return {"benchmark": "ensf_analysis_speed", "n": n, "members": members, "euler_steps": steps,
            "obs": obs, "dtype": str(dtype).replace("torch.", ""), "path": path,
            "block_size": config.block_size, "threads": torch.get_num_threads(),
            "analysis_s": t_total, "ns_per_value_step": t_total / values * 1e9,
            "random_draws_s": t_rng, "likelihood_score_s": t_score,
            "copy_bandwidth_gb_s": copy_bw, "triad_bandwidth_gb_s": triad_bw,
            "array_streams_per_step": per_step, "memory_traffic_gb": moved / 1e9,
            "copy_bound_s": moved / 1e9 / copy_bw, "achieved_bandwidth_gb_s": achieved,
            "fraction_of_copy_bandwidth": achieved / copy_bw}


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
    parser.add_argument("--obs", choices=["arctan", "identity"], default="arctan")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--path", choices=["tiled", "whole"], default="tiled",
                        help="tiled loop (default) or whole-array passes")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--cycles", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    load_start = os.getloadavg()[0]
    if args.accuracy:
        summary = accuracy(int(args.n), args.members, args.cycles, args.steps or 500, dtype,
                           args.seed)
    else:
        summary = speed(int(args.n), args.members, args.steps or 100, args.obs, dtype,
                        args.repeats, args.path)
    if args.json:
        summary.update(command=shlex.join(["python", "benchmarks/bench_ensf.py", *sys.argv[1:]]),
                       torch=torch.__version__, cpu_count=os.cpu_count(),
                       load_average_start=load_start, load_average_end=os.getloadavg()[0])
        print("summary written to", write_json(args.json, summary))


if __name__ == "__main__":
    main()
