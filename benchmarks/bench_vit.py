"""ViT training throughput: the kit's ViT against the seed-style model, in the same run.

Sides, each trained on the same data with the same optimiser settings (one AdamW parameter
group: lr 1e-4, betas (0.9, 0.95), weight decay 1e-5, torch's default implementation) and
the same initial function (the seed model's weights mapped onto the kit's ViT):

* ``seed``: :class:`turbda_kit.baselines.SeedViT`, the paper code's model as its code
  computes it, with its training step (``mse`` metric dict, loss, backward, AdamW);
* ``kit``: the kit's :class:`~turbda_kit.surrogate.vit.ViT` with default kernels (what the
  trainer runs today; bit-identical to the stored training reference);
* ``kit_onednn``: the kit's ViT with ``set_matmul_backend(model, "onednn")``
  (:mod:`turbda_kit.surrogate.matmul`), the kit's CPU training setting;
* optional: ``kit_onednn_fused_adamw`` (``--fused-adamw``: the same with
  ``AdamW(fused=True)``, the only side whose optimiser implementation differs) and
  ``kit_onednn_compiled`` (``--compile``: each block ``torch.compile``-d; the compile time
  is reported separately).

For each thread count (``--threads 1,2``: one-thread and two-thread figures are separate
runs in one process), after ``--warmup`` steps per side, ``--rounds`` rounds each time
``--steps`` training steps of every side, in an order that rotates from round to round, and
keep each side's best round (the least disturbed by other processes). Both wall time
(``time.perf_counter``) and the process's CPU time (``time.process_time``, all threads)
are recorded; on a shared machine the CPU-time ratio is the steadier one, on a quiet machine
the wall figures are the ones to quote (with two threads only wall time shows the
parallel speed-up: CPU time counts the work of both threads). A probe in the same run measures the machine's
float32 matmul peak at each thread count (a 2048^3 product through torch's BLAS and
through oneDNN, best of 3), and the model FLOP utilisation (MFU) of each side is the
analytic training FLOPs (:func:`turbda_kit.surrogate.flops.training_flops`, 3x forward per
sample, the kit's count for both sides) per second over that peak: ``MFU`` from wall
times, ``MFU cpu`` per CPU-second of the step over the probe's per-CPU-second peak.

Usage::

    python benchmarks/bench_vit.py                              # issue #19's config, 1 and 2 threads
    python benchmarks/bench_vit.py --threads 1 --rounds 3 --steps 2   # quick
    python benchmarks/bench_vit.py --json vit_bench.json        # also write the summary
    python benchmarks/bench_vit.py --preset sqg_64_cpu --batch 8 --fused-adamw --compile

``--device cuda`` trains every side on a GPU: data, models and optimisers live there,
each timed round and the probe end with a synchronisation, the oneDNN sides (a CPU
backend) are left out (``--fused-adamw`` and ``--compile`` add ``kit_fused_adamw`` and
``kit_compiled``), the probe is a cuBLAS float32 product, and only the first of
``--threads`` is run (host threads). There the wall figures (samples/s, ``MFU``) are the
ones to read: CPU time is the host's. ``benchmarks/device_checks.sh`` runs this with the
other GPU checks.

The default config is issue #19's equal small config: 64x64 grid, patch 4, width 256,
depth 4, 8 heads, mlp ratio 4, decoder depth 2, two variables, batch 8, float32, no dropout
(``--dropout 0.1`` sets the seed presets' dropout and drop-path rates on both sides).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbda_kit.baselines import seed_mse, seed_vit_from_config
from turbda_kit.device import resolve_device, synchronize
from turbda_kit.errors import InputError
from turbda_kit.io import write_json
from turbda_kit.provenance import collect
from turbda_kit.surrogate.config import ViTConfig, load_vit_config
from turbda_kit.surrogate.flops import count_parameters, forward_flops, training_flops
from turbda_kit.surrogate.matmul import onednn_linear, set_matmul_backend
from turbda_kit.surrogate.seed_checkpoint import seed_to_kit_state_dict
from turbda_kit.surrogate.vit import ViT

SUMMARY_FORMAT = "turbda_kit.bench_vit/1"
"""``format`` field of the ``--json`` summary."""

ISSUE_19_CONFIG = dict(img_size=64, patch_size=4, embed_dim=256, depth=4, num_heads=8,
                       mlp_ratio=4.0, decoder_depth=2, variables=("sqg_0", "sqg_10000"))
"""The equal small config of issue #19 (plus the seed's positional embedding and lead time,
so that the kit's ViT computes the seed model's function)."""

OPTIMISER = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-5)
"""Optimiser settings shared by every side."""

PROBE_SIZE = 2048
"""Side of the square float32 matmul of the peak probe (17.2 GFLOP)."""


@dataclass
class Side:
    """One model + optimiser + loss, and its per-round timings (seconds per step)."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[], Tensor]
    note: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    first_step_s: float = 0.0

    def step(self) -> None:
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def bench_config(args: argparse.Namespace) -> ViTConfig:
    """The benchmarked architecture, seed-compatible (learned pos. embedding, seed lead)."""
    rates = dict(drop_rate=args.dropout, drop_path_rate=args.dropout)
    seed_options = dict(pos_embed="learned", lead_time_convention="seed", residual=False)
    if args.preset:
        return load_vit_config(args.preset, **rates, **seed_options)
    return ViTConfig(name="issue_19", **ISSUE_19_CONFIG, **rates, **seed_options)


def make_data(cfg: ViTConfig, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """One fixed batch: normal fields and targets, lead one data step (hours)."""
    gen = torch.Generator().manual_seed(0)
    shape = (batch, cfg.n_vars, cfg.img_size, cfg.img_size)
    fields = torch.randn(shape, generator=gen)
    targets = fields + 0.1 * torch.randn(shape, generator=gen)
    return fields, targets, torch.full((batch,), cfg.lead_time_scale_hours)


def make_sides(cfg: ViTConfig, data: tuple[Tensor, Tensor, Tensor], fused_adamw: bool,
               compile_blocks: bool, device: torch.device | None = None) -> list[Side]:
    """Build every side on ``device`` (default: the data's); all start from the seed
    model's (mapped) weights. The oneDNN sides exist on the CPU only."""
    fields, targets, hours = data
    device = fields.device if device is None else device
    on_cpu = device.type == "cpu"
    seed_leads = hours / cfg.lead_time_scale_hours / 100      # the seed loader's steps / 100
    # built on the CPU (seeded there), then moved: the same initial function everywhere
    seed = seed_vit_from_config(cfg, generator=torch.Generator().manual_seed(0))
    weights = seed_to_kit_state_dict(seed.state_dict(), cfg)
    seed = seed.to(device)

    def seed_loss() -> Tensor:
        return seed_mse(seed(fields, seed_leads), targets, cfg.variables)["loss"]

    sides = [Side("seed", seed, torch.optim.AdamW(seed.parameters(), **OPTIMISER), seed_loss,
                  "SeedViT (jqyin/sqg_vit SQG_ViT, timm-style blocks)")]

    def kit_side(name: str, note: str, backend: str, fused: bool = False,
                 compiled: bool = False) -> Side:
        model = ViT(cfg)
        model.load_state_dict(weights)
        model = model.to(device)
        set_matmul_backend(model, backend)
        if compiled:
            for block in model.blocks:
                block.compile()
        extra = {"fused": True} if fused else {}
        optimizer = torch.optim.AdamW(model.parameters(), **OPTIMISER, **extra)

        def loss() -> Tensor:
            return F.mse_loss(model(fields, hours), targets)

        return Side(name, model, optimizer, loss, note)

    for name, note, backend, fused, compiled in kit_side_plan(on_cpu, fused_adamw,
                                                              compile_blocks):
        sides.append(kit_side(name, note, backend, fused, compiled))
    return sides


def kit_side_plan(on_cpu: bool, fused_adamw: bool, compile_blocks: bool
                  ) -> list[tuple[str, str, str, bool, bool]]:
    """The kit's sides: ``(name, note, matmul backend, fused AdamW, compiled blocks)``.

    ``kit`` always; on the CPU ``kit_onednn`` (the kit's CPU training setting) and its
    optional variants, elsewhere the optional variants of ``kit`` (oneDNN is CPU-only).
    """
    plan = [("kit", "ViT, default kernels (BLAS matmuls)", "default", False, False)]
    if on_cpu:
        prefix, label, backend = "kit_onednn", "ViT, oneDNN matmuls", "onednn"
        plan.append((prefix, label, backend, False, False))
    else:
        prefix, label, backend = "kit", "ViT", "default"
    if fused_adamw:
        plan.append((f"{prefix}_fused_adamw", f"{label}, AdamW(fused=True)", backend, True,
                     False))
    if compile_blocks:
        plan.append((f"{prefix}_compiled", f"{label}, blocks compiled", backend, False, True))
    return plan


def matmul_probe(threads: int, repeats: int = 3, device: torch.device | None = None
                 ) -> dict[str, float]:
    """Best-of float32 GFLOP/s of a ``PROBE_SIZE``^3 product: torch's BLAS and oneDNN on
    the CPU, cuBLAS (``blas``) on a GPU."""
    device = torch.device("cpu") if device is None else device
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=gen).to(device)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=gen).to(device)
    flop = 2 * PROBE_SIZE**3
    out: dict[str, float] = {}
    products = [("blas", lambda: torch.mm(a, b.t()))]
    if device.type == "cpu":
        products.append(("onednn", lambda: onednn_linear(a, b)))
    for name, product in products:
        product()
        synchronize(device)
        wall = cpu = float("inf")
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            product()
            synchronize(device)
            wall = min(wall, time.perf_counter() - w0)
            cpu = min(cpu, time.process_time() - c0)
        out[f"{name}_gflops"] = flop / wall / 1e9
        # Per thread-second: what the same product reaches per busy core.
        out[f"{name}_gflops_per_cpu_s"] = flop / cpu / 1e9
    out["peak_gflops"] = max(out[f"{name}_gflops"] for name, _ in products)
    out["peak_gflops_per_cpu_s"] = max(out[f"{name}_gflops_per_cpu_s"] for name, _ in products)
    return out


def time_sides(sides: list[Side], steps: int, rounds: int, warmup: int,
               device: torch.device | None = None) -> None:
    """Warm up every side, then ``rounds`` rotating rounds of ``steps`` steps each
    (each timing ends with a synchronisation of ``device``, default the CPU)."""
    device = torch.device("cpu") if device is None else device
    for side in sides:
        start = time.perf_counter()
        side.step()
        synchronize(device)
        side.first_step_s = time.perf_counter() - start
        for _ in range(warmup - 1):
            side.step()
        synchronize(device)
    for r in range(rounds):
        for side in sides[r % len(sides):] + sides[: r % len(sides)]:
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                side.step()
            synchronize(device)
            side.wall.append((time.perf_counter() - w0) / steps)
            side.cpu.append((time.process_time() - c0) / steps)


def summarise(sides: list[Side], cfg: ViTConfig, batch: int, threads: int,
              probe: dict[str, float]) -> dict:
    """Figures of one thread count: per side and ratios against ``seed``."""
    flop_per_sample = training_flops(cfg)
    rows = {}
    for side in sides:
        wall, cpu = min(side.wall), min(side.cpu)
        rate = batch / wall
        rows[side.name] = {
            "note": side.note, "threads": threads,
            "seconds_per_step_wall": wall, "seconds_per_step_cpu": cpu,
            "median_seconds_per_step_wall": statistics.median(side.wall),
            "median_seconds_per_step_cpu": statistics.median(side.cpu),
            "samples_per_s": rate, "samples_per_cpu_s": batch / cpu,
            "tflops": flop_per_sample * rate / 1e12,
            "mfu": flop_per_sample * rate / (probe["peak_gflops"] * 1e9),
            "mfu_cpu_time": flop_per_sample * batch / cpu / (probe["peak_gflops_per_cpu_s"] * 1e9),
            "first_step_s": side.first_step_s,
        }
    seed = rows["seed"]
    ratios = {name: {"samples_per_s": row["samples_per_s"] / seed["samples_per_s"],
                     "samples_per_cpu_s": row["samples_per_cpu_s"] / seed["samples_per_cpu_s"]}
              for name, row in rows.items() if name != "seed"}
    return {"threads": threads, "matmul_probe": probe, "sides": rows, "vs_seed": ratios}


def print_run(run: dict) -> None:
    probe = run["matmul_probe"]
    onednn = probe.get("onednn_gflops")  # CPU only
    onednn_cpu = probe.get("onednn_gflops_per_cpu_s")
    print(f"\n== {run['threads']} thread(s): matmul probe ({PROBE_SIZE}^3 fp32): "
          f"BLAS {probe['blas_gflops']:.1f}, oneDNN "
          f"{'-' if onednn is None else f'{onednn:.1f}'} GFLOP/s (per CPU-second "
          f"{probe['blas_gflops_per_cpu_s']:.1f}, "
          f"{'-' if onednn_cpu is None else f'{onednn_cpu:.1f}'}) -> peak "
          f"{probe['peak_gflops']:.1f}")
    print(f"{'side':<24}{'threads':>8}{'s/step':>9}{'cpu s/step':>11}{'samples/s':>11}"
          f"{'per cpu-s':>10}{'MFU':>7}{'MFU cpu':>8}{'x seed':>8}{'x seed cpu':>11}")
    for name, row in run["sides"].items():
        ratio = run["vs_seed"].get(name, {"samples_per_s": 1.0, "samples_per_cpu_s": 1.0})
        print(f"{name:<24}{row['threads']:>8}{row['seconds_per_step_wall']:>9.3f}"
              f"{row['seconds_per_step_cpu']:>11.3f}{row['samples_per_s']:>11.2f}"
              f"{row['samples_per_cpu_s']:>10.2f}{row['mfu']:>7.1%}{row['mfu_cpu_time']:>8.1%}"
              f"{ratio['samples_per_s']:>8.2f}{ratio['samples_per_cpu_s']:>11.2f}")
    for name, row in run["sides"].items():
        if name.endswith("compiled"):
            compile_s = row["first_step_s"] - row["seconds_per_step_wall"]
            print(f"  {name}: first step {row['first_step_s']:.1f} s (compile ~{compile_s:.0f} s)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None,
                        help="a ViT preset instead of issue #19's config (seed options forced)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="drop_rate and drop_path_rate of both models")
    parser.add_argument("--fused-adamw", action="store_true",
                        help="add kit_onednn_fused_adamw (AdamW(fused=True))")
    parser.add_argument("--compile", action="store_true",
                        help="add kit_onednn_compiled (torch.compile of each block; minutes)")
    parser.add_argument("--device", default="cpu",
                        help="where every side trains: cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--json", default=None, help="write the summary to this JSON file")
    args = parser.parse_args(argv)
    if min(args.batch, args.steps, args.rounds, args.warmup) < 1:
        parser.error("--batch, --steps, --rounds and --warmup must be >= 1")
    try:
        device = resolve_device(args.device)
    except InputError as err:
        parser.error(str(err))
    thread_counts = [int(t) for t in args.threads.split(",")]
    if device.type != "cpu":
        thread_counts = thread_counts[:1]  # host threads: one run is enough

    cfg = bench_config(args)
    data = tuple(t.to(device) for t in make_data(cfg, args.batch))
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} (figures under load when "
          "it is near or above the CPU count)")
    print(f"config {cfg.name}: {cfg.img_size}^2, patch {cfg.patch_size}, width {cfg.embed_dim}, "
          f"depth {cfg.depth}, heads {cfg.num_heads}, batch {args.batch}, fp32, dropout "
          f"{args.dropout}; {count_parameters(cfg):,} parameters, "
          f"{training_flops(cfg) / 1e9:.2f} GFLOP per training sample")
    runs = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        probe = matmul_probe(threads, device=device)
        sides = make_sides(cfg, data, args.fused_adamw, args.compile, device)
        time_sides(sides, args.steps, args.rounds, args.warmup, device)
        runs.append(summarise(sides, cfg, args.batch, threads, probe))
        print_run(runs[-1])
    load_after = os.getloadavg()
    summary = {
        "format": SUMMARY_FORMAT,
        "benchmark": "vit_training_vs_seed",
        "command": "python benchmarks/bench_vit.py " + " ".join(argv if argv is not None
                                                                else sys.argv[1:]),
        "config": cfg.to_dict(), "batch": args.batch, "precision": "fp32",
        "parameters": count_parameters(cfg),
        "forward_flops_per_sample": forward_flops(cfg),
        "training_flops_per_sample": training_flops(cfg),
        "optimiser": {"name": "AdamW", **OPTIMISER, "betas": list(OPTIMISER["betas"])},
        "steps_per_round": args.steps, "rounds": args.rounds, "warmup": args.warmup,
        "timing": "best round per side; wall = time.perf_counter, cpu = time.process_time",
        "load_average": {"before": list(load_before), "after": list(load_after),
                         "cpu_count": os.cpu_count()},
        "cpu": {"capability": torch.backends.cpu.get_cpu_capability(),
                "processor": _cpu_model()},
        "device": str(device) if device.type == "cpu" else
        f"{device} ({torch.cuda.get_device_name(device)})",
        "runs": runs,
        "provenance": collect(),
    }
    if args.json:
        write_json(args.json, summary)
        print(f"\nsummary written to {args.json}")
    return summary


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
