"""ViT surrogate training throughput: samples/s and achieved model TFLOPS on this machine.

For each preset a few AdamW training steps of the plain model are timed (after one
warm-up step) and turned into achieved TFLOPS with the analytic FLOPs of
:mod:`turbda_kit.surrogate.flops` (3x forward per sample). Baselines measured in the
same run:

* a dense fp32 matmul at the model's width, the best this CPU does on the operation that
  dominates the ViT (the ratio is a model-FLOPs utilisation, MFU);
* for ``tiny``, the full trainer (:func:`turbda_kit.surrogate.trainer.train`, strategy
  ``none``) on the same batch, to show the loop's overhead (data, logging).

Usage::

    python benchmarks/bench_vit.py                      # tiny and sqg_64, fp32
    python benchmarks/bench_vit.py --configs tiny --steps 20 --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from turbda_kit.device import resolve_device, synchronize
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.flops import (
    achieved_tflops,
    count_parameters,
    forward_flops,
    training_flops,
)
from turbda_kit.surrogate.trainer import TrainConfig, train
from turbda_kit.surrogate.vit import ViT

DEFAULT_BATCH = {"tiny": 16, "sqg_64": 2, "sqg_64_coupled": 1}


def matmul_tflops(width: int, device: torch.device, repeats: int = 5) -> float:
    """Best-of achieved TFLOPS of a (4*width, width) x (width, width) fp32 matmul."""
    a = torch.randn(4 * width, width, device=device)
    b = torch.randn(width, width, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * 4 * width**3 / best / 1e12


def time_training_steps(name: str, batch: int, steps: int, device: torch.device,
                        precision: str) -> dict:
    """Time ``steps`` training steps of the plain model on random data."""
    cfg = load_vit_config(name, drop_rate=0.0, drop_path_rate=0.0)
    model = ViT(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                  weight_decay=1e-5)
    gen = torch.Generator().manual_seed(0)
    shape = (batch, cfg.n_vars, cfg.img_size, cfg.img_size)
    inputs = torch.randn(shape, generator=gen).to(device)
    targets = torch.randn(shape, generator=gen).to(device)
    leads = torch.full((batch,), 12.0, device=device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
            pred = model(inputs, leads)
        F.mse_loss(pred.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, optimiser state
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    rate = steps * batch / elapsed
    return {"config": name, "params": count_parameters(cfg),
            "fwd_gflop_per_sample": forward_flops(cfg) / 1e9, "batch": batch, "steps": steps,
            "seconds_per_step": elapsed / steps, "samples_per_s": rate,
            "tokens_per_s": rate * cfg.n_tokens, "tflops": achieved_tflops(cfg, rate, 1),
            "width": cfg.embed_dim}


def trainer_throughput(batch: int, steps: int) -> float:
    """samples/s reported by the trainer for ``tiny`` (same batch, fp32, one process)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "surrogate"
                           / "scripts"))
    from synthetic_data import ShiftDataset

    with tempfile.TemporaryDirectory() as out:
        result = train(load_vit_config("tiny"),
                       TrainConfig(batch_size=batch, max_steps=steps + 1, log_every=1,
                                   shuffle=False),
                       ShiftDataset(n_samples=batch), out, show_progress=False)
    rates = [r["samples_per_s"] for r in result.history if r["kind"] == "train"][1:]
    return len(rates) / sum(1.0 / r for r in rates)   # harmonic mean = total samples / time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,sqg_64")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="default: per preset")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"precision {args.precision}")
    print(f"{'config':<16}{'params':>10}{'GFLOP/fwd':>11}{'batch':>6}{'s/step':>9}"
          f"{'samples/s':>11}{'tokens/s':>11}{'TFLOPS':>9}{'MFU':>7}")
    for name in args.configs.split(","):
        batch = args.batch or DEFAULT_BATCH.get(name, 1)
        row = time_training_steps(name, batch, args.steps, device, args.precision)
        peak = matmul_tflops(row["width"], device)
        print(f"{name:<16}{row['params'] / 1e6:>9.2f}M{row['fwd_gflop_per_sample']:>11.3f}"
              f"{batch:>6}{row['seconds_per_step']:>9.3f}{row['samples_per_s']:>11.2f}"
              f"{row['tokens_per_s']:>11.0f}{row['tflops']:>9.4f}{row['tflops'] / peak:>7.1%}")
        print(f"  baseline: fp32 matmul at width {row['width']}: {peak:.4f} TFLOPS; "
              f"model FLOPs/step {training_flops(load_vit_config(name)) * batch / 1e12:.4f} TFLOP")
        if name == "tiny" and args.precision == "fp32" and device.type == "cpu":
            rate = trainer_throughput(batch, max(args.steps, 5))
            print(f"  baseline: full trainer loop (strategy none): {rate:.2f} samples/s "
                  f"({rate / row['samples_per_s']:.0%} of the bare step loop)")


if __name__ == "__main__":
    main()
