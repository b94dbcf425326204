"""Forecast-model throughput (measured, never asserted).

SQG (``bench_sqg``): member-steps per second of :class:`turbda_kit.models.sqg.SQGModel`
at N = 64/128/256 with 1 and 20 members, the batched ensemble against a per-member
loop in the same run, and the headline comparison: advancing a 20-member N = 64
ensemble (the ``bao2024_sqg64`` preset) by 12 h of model time against a per-member
NumPy implementation of the same model (numpy.fft/pocketfft, float32), written below as
the baseline. Target: the torch ensemble needs under half the NumPy time.

Usage::

    python benchmarks/bench_models.py                 # everything, torch's default threads
    python benchmarks/bench_models.py --threads 1 2   # compare intra-op thread counts
    python benchmarks/bench_models.py --quick         # N = 64 only

Timings are the best of ``--repeats`` runs (a shared machine only ever slows a run
down); the load average at the start is printed with them.
"""

from __future__ import annotations

import os

# Idle OpenMP threads must sleep, not spin: on a shared or oversubscribed machine spinning
# makes 2-thread torch runs of these small problems 10-20x slower (measured). Must be set
# before torch loads OpenMP; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from turbda_kit.models.sqg import (  # noqa: E402
    SQGModel,
    SQGParams,
    bao2024_sqg64,
    random_initial_state,
    vit_scaling_sqg128,
    vit_scaling_sqg256,
)

# --------------------------------------------------------------------------------------
# NumPy baseline: the same model, one member at a time (rfft2 layout, float32)
# --------------------------------------------------------------------------------------


class NumpySQG:
    """Per-member NumPy SQG: same inversion, 3/2-padded Jacobian, relaxation, Ekman,
    hyperdiffusion integrating factor and IF-RK4 as the torch model.

    Parameters
    ----------
    params : SQGParams
    dtype : numpy dtype
        float32 (the baseline) or float64 (for checking against the torch model).
    """

    def __init__(self, params: SQGParams, dtype: Any = np.float32):
        self.p = params
        self.real = np.dtype(dtype)
        self.cplx = np.result_type(self.real, np.complex64)
        n = params.N
        self.n, self.half = n, n // 2
        self.m = 3 * n // 2 if params.dealias else n
        kx = np.arange(n // 2 + 1)[None, :] * (2 * np.pi / params.L)
        ky = np.fft.fftfreq(n, 1.0 / n)[:, None] * (2 * np.pi / params.L)
        ksq = kx**2 + ky**2
        ktot = np.sqrt(ksq)
        mu = ktot * params.rossby_radius
        safe = np.where(mu > 0, mu, 1.0)
        self.c = np.where(mu > 0, params.H / safe / np.tanh(safe), 0.0).astype(self.real)
        self.s = np.where(mu > 0, params.H / safe / np.sinh(safe), 0.0).astype(self.real)
        kx_d, ky_d = kx.copy(), ky.copy()
        kx_d[0, n // 2] = 0.0
        ky_d[n // 2, 0] = 0.0
        self.ik = (1j * kx_d).astype(self.cplx)
        self.il = (1j * ky_d).astype(self.cplx)
        rate = (ktot / (np.pi * n / params.L)) ** params.diff_order / params.diff_efold
        self.e = np.exp(-rate * params.dt).astype(self.real)
        self.eh = np.exp(-rate * params.dt / 2).astype(self.real)
        self.rksq = (params.r * ksq).astype(self.real)
        y = np.arange(n) * params.dx
        wn = 2 * np.pi / params.L
        mu1 = wn * params.rossby_radius
        if params.symmetric:
            amp = mu1 * 0.5 * params.U / (wn * params.H) / np.tanh(0.5 * mu1)
            eq = np.stack([-amp * np.cos(wn * y)] * 2)
        else:
            sfc = -(mu1 * params.U / (wn * params.H)) / np.sinh(mu1) * np.cos(wn * y)
            eq = np.stack([sfc, sfc * np.cosh(mu1)])
        eq = np.repeat(eq[:, :, None], n, axis=2)
        self.q_eq = np.fft.rfft2(eq, norm="forward").astype(self.cplx)
        self.relax = 0.0 if math.isinf(params.tdiab) else 1.0 / params.tdiab
        self.dt = self.real.type(params.dt)

    def tendency(self, q: np.ndarray) -> np.ndarray:
        """dq/dt of rfft2 amplitudes ``(2, N, N//2+1)`` (hyperdiffusion excluded)."""
        n, h, m = self.n, self.half, self.m
        psi = np.stack([self.s * q[1] - self.c * q[0], self.c * q[1] - self.s * q[0]])
        fields = np.stack([-self.il * psi, self.ik * psi, self.ik * q, self.il * q])
        if self.p.dealias:
            padded = np.zeros((4, 2, m, m // 2 + 1), self.cplx)
            padded[..., :h, :h] = fields[..., :h, :h]
            padded[..., m - h + 1:, :h] = fields[..., n - h + 1:, :h]
        else:
            padded = fields
        grid = np.fft.irfft2(padded, s=(m, m), norm="forward")
        adv = grid[0] * grid[2] + grid[1] * grid[3]
        spec = np.fft.rfft2(adv, norm="forward")
        if self.p.dealias:
            adv_spec = np.zeros_like(q)
            adv_spec[..., :h, :h] = spec[..., :h, :h]
            adv_spec[..., n - h + 1:, :h] = spec[..., m - h + 1:, :h]
        else:
            adv_spec = spec
        out = (self.q_eq - q) * self.real.type(self.relax) - adv_spec
        if self.p.r > 0:
            out[0] += self.rksq * psi[0]
            if self.p.symmetric:
                out[1] -= self.rksq * psi[1]
        return out

    def step(self, q: np.ndarray) -> np.ndarray:
        """One IF-RK4 step of amplitudes ``(2, N, N//2+1)``."""
        dt, e, eh = self.dt, self.e, self.eh
        half = self.real.type(0.5) * dt
        a = self.tendency(q)
        b = self.tendency(eh * (q + half * a))
        c = self.tendency(eh * q + half * b)
        d = self.tendency(e * q + dt * eh * c)
        return e * q + (dt / 6) * (e * a + 2 * eh * (b + c) + d)

    def advance(self, pv: np.ndarray, n_steps: int) -> np.ndarray:
        """Grid PV ``(2, N, N)`` advanced by ``n_steps``."""
        q = np.fft.rfft2(pv.astype(self.real), norm="forward").astype(self.cplx)
        for _ in range(n_steps):
            q = self.step(q)
        return np.fft.irfft2(q, s=(self.n, self.n), norm="forward").astype(self.real)


# --------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Smallest wall and CPU (process, all threads) times of ``repeats`` calls, seconds.

    One warm-up call first. On a shared machine the wall time includes waiting for a
    core; the CPU time does not, which makes single-threaded comparisons fair there.
    """
    fn()
    wall = cpu = math.inf
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def noise_ensemble(params: SQGParams, members: int, dtype: torch.dtype) -> torch.Tensor:
    """Seeded noise states (winds of tens of m/s); the cost per step does not depend on
    the flow, so no spin-up is needed for timing."""
    gen = torch.Generator().manual_seed(0)
    return random_initial_state(params, gen, batch_shape=(members,), noise_std=3000.0,
                                dtype=dtype)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------
# SQG benchmark
# --------------------------------------------------------------------------------------


def sqg_headline(repeats: int = 2) -> dict[str, float]:
    """20-member N=64 ensemble, 12 h (36 steps of 1200 s): torch batched vs NumPy loop."""
    params = bao2024_sqg64()
    steps = int(round(12 * 3600 / params.dt))
    ens = noise_ensemble(params, 20, torch.float32)
    model = SQGModel(params)
    reference = NumpySQG(params, np.float32)
    members_np = [m.numpy() for m in ens]

    torch_wall, torch_cpu = best_time(lambda: model.advance(ens, steps), repeats)
    loop_wall, loop_cpu = best_time(lambda: [model.advance(m, steps) for m in ens], repeats)
    numpy_wall, numpy_cpu = best_time(
        lambda: [reference.advance(m, steps) for m in members_np], repeats)
    # the two implementations compute the same thing
    torch_out = model.advance(ens[:2], steps).numpy()
    numpy_out = np.stack([reference.advance(m, steps) for m in members_np[:2]])
    rel = float(np.abs(torch_out - numpy_out).max() / np.abs(numpy_out).max())
    return {"steps": steps, "torch_batched_wall_s": torch_wall, "torch_batched_cpu_s": torch_cpu,
            "torch_loop_wall_s": loop_wall, "torch_loop_cpu_s": loop_cpu,
            "numpy_loop_wall_s": numpy_wall, "numpy_loop_cpu_s": numpy_cpu,
            "ratio_wall": torch_wall / numpy_wall, "ratio_cpu": torch_cpu / numpy_cpu,
            "max_rel_diff": rel}


def bench_sqg(sizes: tuple[int, ...] = (64, 128, 256), members: tuple[int, ...] = (1, 20),
              threads: tuple[int, ...] | None = None, repeats: int = 2,
              numpy_sizes: tuple[int, ...] = (64, 128)) -> list[dict[str, Any]]:
    """Print and return member-steps/s of the SQG model (see the module docstring).

    Parameters
    ----------
    sizes : grid sizes (presets bao2024_sqg64, vit_scaling_sqg128/256).
    members : ensemble sizes.
    threads : torch intra-op thread counts to try (None: torch's current setting).
    repeats : timing repetitions (best kept).
    numpy_sizes : sizes at which the per-member NumPy baseline is also timed.
    """
    presets = {64: bao2024_sqg64(), 128: vit_scaling_sqg128(), 256: vit_scaling_sqg256()}
    thread_counts = threads or (torch.get_num_threads(),)
    original_threads = torch.get_num_threads()
    print(f"# SQG benchmark: torch {torch.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {_load()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    rows: list[dict[str, Any]] = []
    try:
        for n_threads in thread_counts:
            torch.set_num_threads(n_threads)
            print(f"\n## torch threads = {n_threads}")
            head = sqg_headline(repeats)
            print(f"headline: 20 members, N=64, 12 h = {head['steps']} steps, float32 "
                  "(wall s / CPU s):")
            for key, label in (("torch_batched", "torch batched ensemble"),
                               ("torch_loop", "torch per-member loop"),
                               ("numpy_loop", "NumPy per-member (baseline)")):
                print(f"  {label:28s} {head[key + '_wall_s']:8.3f} / {head[key + '_cpu_s']:.3f}")
            print(f"  torch/NumPy: wall {head['ratio_wall']:.2f}, CPU {head['ratio_cpu']:.2f} "
                  f"(target < 0.5); max rel. diff torch vs NumPy {head['max_rel_diff']:.1e}")
            rows.append({"kind": "headline", "threads": n_threads, **head})
            print(f"{'N':>4} {'members':>7} {'dt[s]':>6} {'batched':>15} {'loop':>15} "
                  f"{'numpy':>15}   (member-steps per wall s [per CPU s], float32)")
            for n in sizes:
                params = presets[n]
                model = SQGModel(params)
                reference = NumpySQG(params, np.float32)
                steps = max(2, int(round(36 * (64 / n) ** 2)))
                for m in members:
                    ens = noise_ensemble(params, m, torch.float32)
                    t_batch = best_time(lambda: model.advance(ens, steps), repeats)  # noqa: B023
                    t_loop = best_time(lambda: [model.advance(x, steps) for x in ens],  # noqa: B023
                                       repeats) if m > 1 else t_batch
                    if n in numpy_sizes:
                        arrays = [x.numpy() for x in ens]
                        t_np = best_time(lambda: [reference.advance(a, steps)  # noqa: B023
                                                  for a in arrays], 1)  # noqa: B023
                    else:
                        t_np = (math.nan, math.nan)
                    cells, rate = [], {}
                    for key, (wall, cpu) in (("batched", t_batch), ("loop", t_loop),
                                             ("numpy", t_np)):
                        rate[key] = m * steps / wall
                        rate[key + "_cpu"] = m * steps / cpu
                        cells.append(f"{rate[key]:>7.0f} [{rate[key + '_cpu']:>5.0f}]")
                    print(f"{n:>4} {m:>7} {params.dt:>6.0f} " + " ".join(cells))
                    rows.append({"kind": "throughput", "threads": n_threads, "N": n,
                                 "members": m, "steps": steps, **rate})
    finally:
        torch.set_num_threads(original_threads)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help="torch intra-op thread counts to compare (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="timing repetitions")
    parser.add_argument("--quick", action="store_true", help="N = 64 only")
    args = parser.parse_args(argv)
    sizes = (64,) if args.quick else (64, 128, 256)
    bench_sqg(sizes=sizes, threads=tuple(args.threads) if args.threads else None,
              repeats=args.repeats)


if __name__ == "__main__":
    main()
