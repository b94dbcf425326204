"""LETKF analysis speed on the SQG grid, against a per-point NumPy loop in the same run.

Setting (the speed target): SQG 64 x 64 x 2, 20 members, every one of the 8192 grid
values observed (identity operator), Gaspari–Cohn half-width 2000 km (cut-off 4000 km), on
a periodic domain L = 20 Rossby radii = 20 000 km (N_b H / f = 1e-2 * 1e4 / 1e-4 m), so
dx = 312.5 km and each grid column sees about 1020 observations (both levels; no vertical
localisation). Target: one analysis in under 1 s on 2 CPU cores.

The baseline is the textbook per-grid-point LETKF in NumPy (distances, taper, local
ETKF with ``numpy.linalg.eigh``), timed on a subset of points and extrapolated to the
8192 points; the batched result is checked against it on that subset.

Usage::

    python benchmarks/bench_letkf.py [--threads 2] [--n 64] [--members 20]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from turbda_kit.filters.letkf import LETKFConfig, letkf_analysis, plan_localization
from turbda_kit.filters.localization import sqg_positions

ROSSBY_RADIUS_M = 1.0e-2 * 1.0e4 / 1.0e-4      # N_b H / f
DOMAIN_M = 20 * ROSSBY_RADIUS_M                 # 2.0e7 m
LID_M = 1.0e4


def numpy_gaspari_cohn(z: np.ndarray) -> np.ndarray:
    """GC taper of normalised distance z = d / c (baseline's own copy)."""
    out = np.zeros_like(z)
    inner, outer = z <= 1, (z > 1) & (z < 2)
    zi, zo = z[inner], z[outer]
    out[inner] = -zi**5 / 4 + zi**4 / 2 + 5 * zi**3 / 8 - 5 * zi**2 / 3 + 1
    out[outer] = (zo**5 / 12 - zo**4 / 2 + 5 * zo**3 / 8 + 5 * zo**2 / 3 - 5 * zo + 4
                  - 2 / (3 * zo))
    return out


def numpy_letkf_points(forecast: np.ndarray, hx: np.ndarray, y: np.ndarray, std: float,
                       state_xy: np.ndarray, obs_xy: np.ndarray, length: float,
                       half_width: float, points: np.ndarray) -> np.ndarray:
    """Per-point LETKF (Hunt et al. 2007) for the state indices ``points``; (m, len(points))."""
    m = forecast.shape[0]
    x_mean = forecast.mean(0)
    x_anom = forecast - x_mean
    y_mean = hx.mean(0)
    y_anom = (hx - y_mean) / std
    innov = (y - y_mean) / std
    out = np.empty((m, len(points)))
    for col, i in enumerate(points):
        d = np.abs(obs_xy - state_xy[i])
        d = np.minimum(d, length - d)
        dist = np.sqrt((d * d).sum(1))
        local = dist < 2 * half_width
        weight = numpy_gaspari_cohn(dist[local] / half_width)
        yl = y_anom[:, local]                                   # (m, p)
        precision = (yl * weight) @ yl.T + (m - 1) * np.eye(m)
        evals, evecs = np.linalg.eigh(precision)
        w_mean = evecs @ ((evecs.T @ ((yl * weight) @ innov[local])) / evals)
        w_anom = (evecs * np.sqrt((m - 1) / evals)) @ evecs.T
        out[:, col] = x_mean[i] + x_anom[:, i] @ (w_mean[:, None] + w_anom)
    return out


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall time and matching CPU time of ``repeats`` calls, and the last result."""
    best_wall, best_cpu, result = math.inf, math.inf, None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if wall < best_wall:
            best_wall, best_cpu = wall, cpu
    return best_wall, best_cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=64, help="grid points per horizontal axis")
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--half-width-m", type=float, default=2.0e6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-points", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=LETKFConfig().chunk_size)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    n, m = args.n, args.members
    print(f"LETKF benchmark: SQG {n}x{n}x2, {m} members, all {2 * n * n} points observed, "
          f"GC half-width {args.half_width_m / 1e3:.0f} km, L = {DOMAIN_M / 1e3:.0f} km, "
          f"dx = {DOMAIN_M / n / 1e3:.1f} km")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    config = LETKFConfig(localization_radius=args.half_width_m, chunk_size=args.chunk_size)
    gen = torch.Generator().manual_seed(0)
    results = {}
    for dtype in (torch.float64, torch.float32):
        positions = sqg_positions(n, DOMAIN_M, LID_M, dtype=dtype)
        obs_positions = positions.reshape(-1, 3)
        forecast = torch.randn(m, 2, n, n, generator=gen, dtype=torch.float64).to(dtype)
        obs_ensemble = forecast.reshape(m, -1)
        obs = torch.randn(2 * n * n, generator=gen, dtype=torch.float64).to(dtype)

        def full(forecast=forecast, obs_ensemble=obs_ensemble, obs=obs, positions=positions,
                 obs_positions=obs_positions):
            return letkf_analysis(forecast, obs_ensemble, obs, 1.0, config=config,
                                  state_positions=positions, obs_positions=obs_positions,
                                  domain_lengths=(DOMAIN_M, DOMAIN_M))

        wall, cpu, analysis_ens = timed(full, args.repeats)
        plan_wall, plan_cpu, plan = timed(
            lambda positions=positions, obs_positions=obs_positions: plan_localization(
                positions, obs_positions, (DOMAIN_M, DOMAIN_M), config, precompute=True), 1)
        cached_wall, cached_cpu, _ = timed(
            lambda forecast=forecast, obs_ensemble=obs_ensemble, obs=obs, plan=plan:
            letkf_analysis(forecast, obs_ensemble, obs, 1.0, config=config, plan=plan),
            args.repeats)
        k_max = plan.cached_chunks[0][1].shape[1]
        name = str(dtype).replace("torch.", "")
        results[name] = wall
        print(f"[{name}] batched LETKF, one analysis incl. geometry: {wall:.3f} s wall "
              f"({cpu:.3f} s CPU)")
        print(f"[{name}] plan_localization (once per network):     {plan_wall:.3f} s wall "
              f"({plan_cpu:.3f} s CPU); {plan.n_locations} locations, k_max = {k_max}")
        print(f"[{name}] batched LETKF with a precomputed plan:     {cached_wall:.3f} s wall "
              f"({cached_cpu:.3f} s CPU)")
        if dtype == torch.float64:
            reference = (forecast, obs_ensemble, obs, analysis_ens, positions)

    forecast, obs_ensemble, obs, analysis_ens, positions = reference
    state_xy = positions.reshape(-1, 3)[:, :2].numpy()
    rng = np.random.default_rng(0)
    points = np.sort(rng.choice(2 * n * n, size=min(args.baseline_points, 2 * n * n),
                                replace=False))
    wall, cpu, baseline = timed(lambda: numpy_letkf_points(
        forecast.reshape(m, -1).numpy(), obs_ensemble.numpy(), obs.numpy(), 1.0, state_xy,
        state_xy, DOMAIN_M, args.half_width_m, points), 1)
    per_point = wall / len(points)
    extrapolated = per_point * 2 * n * n
    error = np.abs(baseline - analysis_ens.reshape(m, -1).numpy()[:, points]).max()
    print(f"[float64] per-point NumPy loop: {per_point * 1e3:.2f} ms/point on {len(points)} "
          f"points -> {extrapolated:.1f} s wall for {2 * n * n} points (extrapolated; "
          f"{cpu / len(points) * 2 * n * n:.1f} s CPU)")
    print(f"[float64] max |batched - per-point| on those points: {error:.2e}")
    print(f"speed-up of the batched LETKF over the per-point loop: "
          f"{extrapolated / results['float64']:.0f}x (float64), "
          f"{extrapolated / results['float32']:.0f}x (float32 batched)")
    verdict = "meets" if min(results.values()) < 1.0 else "misses"
    print(f"target < 1 s per analysis: {verdict} it (best {min(results.values()):.3f} s; "
          f"float64 {results['float64']:.3f} s)")


if __name__ == "__main__":
    main()
