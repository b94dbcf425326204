"""SQG speed against sqgturb's algorithm, and the compat mode's agreement (measured, never asserted).

Speed (default): a 12-h forecast of a float32 ensemble at N = 64, 128, 256 (presets
``bao2024_sqg64``, ``vit_scaling_sqg128``, ``vit_scaling_sqg256``), timed in the same run
for three sides:

* ``kit``        -- :class:`turbda_kit.models.sqg.SQGModel`, default (corrected) physics,
  the whole ensemble batched;
* ``kit-compat`` -- the same with ``sqgturb_compat=True`` (sqgturb's algorithm);
* ``sqgturb``    -- :class:`turbda_kit.baselines.sqgturb.SqgturbModel`, sqgturb's algorithm
  one member at a time in NumPy (numpy.fft: always one thread), the baseline.

Each kit side is timed with every ``--threads`` count (torch intra-op threads); the
baseline once. Printed per row: side, threads, wall and CPU seconds (``time.process_time``:
all threads of the process) for the forecast, CPU ms per member-step, and the speed-up
``baseline / side`` in wall and in CPU time (target: >= 2 on one thread). On a shared
machine wall time includes waiting for a core; one-thread CPU time is the like-for-like
figure. Timings are the best of ``--repeats`` rounds after a warm-up; each round runs
every side once, so bursts of load from other jobs hit all sides alike. Beside the
best-of speed-up, each row gives the median, smallest and largest of the per-round CPU
speed-ups (``speedup_cpu_per_round``): their spread is the noise of the machine during the
run. On a loaded machine prefer short forecasts and more rounds (``--hours 1 --repeats 5``).

Agreement (``--agreement``): from a turbulent state (20 days of spin-up), the relative max
difference after 1 and 100 steps between the baseline and the kit in compat mode (float64,
float32), the baseline's own float32-vs-float64 gap, the kit's default physics, and the
default physics with ``H, f, U`` x 2.25 (``r`` / 2.25), at sqgturb's N = 64 setting
(dt = 900 s, 12-h hyperdiffusion), for spin-ups with each dynamics.

Usage::

    python benchmarks/bench_models.py                          # N = 64, 128, 256; 1 and 2 threads
    python benchmarks/bench_models.py --sizes 64 --threads 1    # quick
    python benchmarks/bench_models.py --hours 3 --repeats 1     # shorter forecasts
    python benchmarks/bench_models.py --agreement
    python benchmarks/bench_models.py --json bench_models.json  # also write the summary

``--sizes`` and ``--threads`` take space- or comma-separated lists (``--sizes 64,128``).

``--json PATH`` writes every printed row, the threads of each side, the load average and
the command as one JSON summary (atomically); the printed table is unchanged.

``--device cuda`` runs the kit sides on a GPU (the ensemble is moved there once, every
timed forecast ends with a synchronisation); the baseline stays NumPy on the CPU, and the
figure to read is the wall speed-up (CPU time is then the host's, waiting included). The
kit sides run once each there: ``--threads`` only sets the host's torch threads. Every row
names its ``device``. ``benchmarks/device_checks.sh`` runs this with the other GPU checks.
"""

from __future__ import annotations

import os

# Idle OpenMP threads must sleep, not spin: on a shared or oversubscribed machine spinning
# makes 2-thread torch runs of these small problems 10-20x slower (measured). Must be set
# before torch loads OpenMP; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from turbda_kit.baselines.sqgturb import SqgturbModel  # noqa: E402
from turbda_kit.device import resolve_device, synchronize  # noqa: E402
from turbda_kit.errors import InputError  # noqa: E402
from turbda_kit.models.sqg import (  # noqa: E402
    SQGTURB_DEALIAS_FACTOR,
    SQGModel,
    SQGParams,
    bao2024_at_resolution,
    random_initial_state,
)

DAY = 86400.0


def round_times(sides: list[tuple[int, Callable[[], Any]]], repeats: int
                ) -> list[list[tuple[float, float]]]:
    """Wall and CPU (process, all threads) seconds of each side's call, round by round.

    ``sides``: ``(torch threads, fn)``. One warm-up call each (operator caches, FFT
    plans, page faults), then ``repeats`` rounds in which every side runs once, so a
    burst of load from other jobs hits all sides alike. Returns, per side, one
    ``(wall, cpu)`` per round.
    """
    original = torch.get_num_threads()
    rounds: list[list[tuple[float, float]]] = [[] for _ in sides]
    try:
        for n_threads, fn in sides:
            torch.set_num_threads(n_threads)
            fn()
        for _ in range(repeats):
            for k, (n_threads, fn) in enumerate(sides):
                torch.set_num_threads(n_threads)
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                rounds[k].append((time.perf_counter() - start,
                                  time.process_time() - start_cpu))
    finally:
        torch.set_num_threads(original)
    return rounds


def best_of(rounds: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Smallest wall and smallest CPU seconds of each side over :func:`round_times`'s rounds."""
    return [(min(w for w, _ in side), min(c for _, c in side)) for side in rounds]


def round_ratios(baseline: list[tuple[float, float]], side: list[tuple[float, float]]
                 ) -> dict[str, float]:
    """Median, smallest and largest of the per-round CPU speed-ups ``baseline / side``.

    Both sides ran in the same rounds, so each round's ratio pairs two timings taken under
    the same load: their spread is the noise of the best-of ratio.
    """
    ratios = sorted(b[1] / s[1] for b, s in zip(baseline, side))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def noise_ensemble(params: SQGParams, members: int) -> torch.Tensor:
    """Seeded float32 noise states (~3 K): the cost of a step does not depend on the
    flow, so no spin-up is needed for timing."""
    gen = torch.Generator().manual_seed(0)
    return random_initial_state(params, gen, batch_shape=(members,), noise_std=1000.0,
                                dtype=torch.float32)


# --------------------------------------------------------------------------------------
# speed
# --------------------------------------------------------------------------------------


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def bench_speed(sizes: tuple[int, ...] = (64, 128, 256), members: int = 20,
                threads: tuple[int, ...] = (1, 2), hours: float = 12.0,
                repeats: int = 3, device: torch.device | None = None) -> list[dict[str, Any]]:
    """Print and return the speed table (see the module docstring).

    ``device``: where the kit sides run (default the CPU); the baseline always runs on the
    CPU. Off the CPU each kit side runs once (with the first of ``threads`` host threads).
    """
    device = torch.device("cpu") if device is None else device
    if device.type != "cpu":
        threads = threads[:1]
    print(f"# SQG forecast speed: torch {torch.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {_load()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"# kit sides on {_device_name(device)}, the baseline on the CPU")
    print(f"# {members} members, {hours:g} h forecast, float32; speed-up = baseline time / "
          "side time, best of the rounds (target >= 2); per round: the CPU speed-up of each "
          "round, both sides timed in it")
    print(f"{'N':>4} {'steps':>5} {'side':>10} {'threads':>7} {'wall s':>8} {'CPU s':>8} "
          f"{'CPU ms/member-step':>18} {'speed-up wall':>13} {'speed-up CPU':>12} "
          f"{'per round: median [min, max]':>28}")
    rows: list[dict[str, Any]] = []
    for n in sizes:
        params = bao2024_at_resolution(n)
        steps = max(1, int(round(hours * 3600.0 / params.dt)))
        ensemble = noise_ensemble(params, members)
        baseline = SqgturbModel(params, np.float32)
        arrays = ensemble.numpy()
        labels = [("sqgturb", 1)]
        sides: list[tuple[int, Callable[[], Any]]] = [
            (1, lambda: baseline.advance_members(arrays, steps))]  # noqa: B023
        on_device = ensemble.to(device)

        def forecast(model: SQGModel) -> None:
            model.advance(on_device, steps)  # noqa: B023
            synchronize(device)  # queued GPU work counts in the side's time

        for side, compat in (("kit", False), ("kit-compat", True)):
            model = SQGModel(params.replace(sqgturb_compat=compat))
            for n_threads in threads:
                labels.append((side, n_threads))
                sides.append((n_threads, lambda m=model, f=forecast: f(m)))
        per_round = round_times(sides, repeats)
        times = best_of(per_round)
        base_wall, base_cpu = times[0]
        for (side, n_threads), (wall, cpu), rounds in zip(labels, times, per_round):
            spread = round_ratios(per_round[0], rounds)
            row = {"N": n, "steps": steps, "members": members, "side": side,
                   "device": "cpu" if side == "sqgturb" else str(device),
                   "threads": n_threads, "wall_s": wall, "cpu_s": cpu,
                   "cpu_ms_per_member_step": 1e3 * cpu / (members * steps),
                   "speedup_wall": base_wall / wall, "speedup_cpu": base_cpu / cpu,
                   "speedup_cpu_per_round": spread}
            rows.append(row)
            print(f"{n:>4} {steps:>5} {side:>10} {n_threads:>7} {wall:>8.3f} {cpu:>8.3f} "
                  f"{row['cpu_ms_per_member_step']:>18.3f} {row['speedup_wall']:>13.2f} "
                  f"{row['speedup_cpu']:>12.2f} {spread['median']:>14.2f} "
                  f"[{spread['min']:.2f}, {spread['max']:.2f}]", flush=True)
    print(f"# load average at the end {_load()}")
    return rows


# --------------------------------------------------------------------------------------
# agreement with sqgturb's algorithm
# --------------------------------------------------------------------------------------


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def bench_agreement(n: int = 64, steps: int = 100, spinup_days: float = 20.0
                    ) -> list[dict[str, Any]]:
    """Print and return how far each model is from the baseline (module docstring)."""
    torch.set_num_threads(1)
    c = SQGTURB_DEALIAS_FACTOR
    params = bao2024_at_resolution(n).replace(dt=900.0 * 64 / n, diff_efold=0.5 * DAY * 64 / n)
    compat = params.replace(sqgturb_compat=True)
    scaled = params.replace(H=c * params.H, f=c * params.f, U=c * params.U, r=params.r / c)
    print(f"# agreement with sqgturb's algorithm (SqgturbModel): N={n}, dt={params.dt:g} s, "
          f"diff_efold={params.diff_efold:g} s; relative max difference after 1 / {steps} "
          "steps")
    rows: list[dict[str, Any]] = []
    for spin_name, spin_params in (("sqgturb", compat), ("kit", params)):
        state = random_initial_state(params, torch.Generator().manual_seed(1))
        state = SQGModel(spin_params).advance(state, int(round(spinup_days * DAY / params.dt)))
        print(f"## spun up {spinup_days:g} days with the {spin_name} dynamics")
        reference = {}
        for dtype in (np.float64, np.float32):
            baseline = SqgturbModel(compat, dtype)
            one = baseline.advance(state.numpy().astype(dtype), 1)
            reference[np.dtype(dtype).name] = (one, baseline.advance(one, steps - 1))
        own = _rel(reference["float32"][1], reference["float64"][1])
        print(f"  {'baseline float32 vs float64':48s}    -     / {own:.1e}")
        for label, p, dtype in (("kit compat, float64", compat, torch.float64),
                                ("kit compat, float32", compat, torch.float32),
                                ("kit default physics, float64", params, torch.float64),
                                ("kit default, H f U x 2.25 (r / 2.25), float64", scaled,
                                 torch.float64)):
            model = SQGModel(p, cfl_check_every=0)
            one = model.advance(state.to(dtype), 1)
            last = model.advance(one, steps - 1)
            ref_one, ref_last = reference["float32" if dtype == torch.float32 else "float64"]
            gaps = (_rel(one.numpy(), ref_one), _rel(last.numpy(), ref_last))
            print(f"  {label:48s} {gaps[0]:.1e} / {gaps[1]:.1e}")
            rows.append({"spinup": spin_name, "model": label, "after_1": gaps[0],
                         f"after_{steps}": gaps[1]})
    return rows


def _int_list(words: list[str]) -> tuple[int, ...]:
    """``["64,128", "256"]`` -> ``(64, 128, 256)``."""
    return tuple(int(w) for word in words for w in word.split(",") if w)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    import shlex
    import sys

    from turbda_kit.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["64", "128", "256"],
                        help="grid sizes (64, 128, 256; any multiple of 4)")
    parser.add_argument("--members", type=int, default=20, help="ensemble size")
    parser.add_argument("--threads", nargs="+", default=["1", "2"],
                        help="torch intra-op thread counts for the kit sides")
    parser.add_argument("--hours", type=float, default=12.0, help="forecast length, hours")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timing rounds (every side once per round; minimum kept)")
    parser.add_argument("--agreement", action="store_true",
                        help="print the compat mode's agreement with the baseline instead")
    parser.add_argument("--device", default="cpu",
                        help="where the kit sides run: cpu (default), cuda, cuda:N or auto "
                             "(the baseline stays on the CPU)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except InputError as err:
        parser.error(str(err))
    words = sys.argv[1:] if argv is None else list(argv)
    summary: dict[str, Any] = {
        "benchmark": "sqg_agreement" if args.agreement else "sqg_forecast_speed",
        "command": shlex.join(["python", "benchmarks/bench_models.py", *words]),
        "torch": torch.__version__, "numpy": np.__version__, "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_start": _load()}
    if args.agreement:
        summary["rows"] = bench_agreement()
    else:
        summary.update(members=args.members, hours=args.hours, repeats=args.repeats,
                       dtype="float32", baseline="sqgturb (NumPy, one member at a time, 1 thread)",
                       device=_device_name(device))
        summary["rows"] = bench_speed(sizes=_int_list(args.sizes), members=args.members,
                                      threads=_int_list(args.threads), hours=args.hours,
                                      repeats=args.repeats, device=device)
    summary["load_average_end"] = _load()
    if args.json:
        print("summary written to", write_json(args.json, summary))


if __name__ == "__main__":
    main()
