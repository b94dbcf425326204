"""The kernel options for CPU ViT training, one by one, at one config's shapes.

What ``benchmarks/bench_vit.py`` times as whole training steps, this takes apart, to show
where a step's time goes and what each option changes (all float32, best of ``--repeats``,
CPU time of the process, so the figures are steadier on a shared machine):

* ``matmul``: each linear layer's three products (forward, input gradient, weight
  gradient) at the config's shapes, through torch's BLAS (``F.linear`` and its autograd)
  and through oneDNN (:func:`turbda_kit.surrogate.matmul.onednn_linear`);
* ``attention``: one block's self-attention forward + backward through
  ``scaled_dot_product_attention`` with torch's default CPU backend (flash), the MATH
  backend, and the explicit ``softmax(q k^T / sqrt(d)) v`` (timm's ``fused_attn=False``);
* ``adamw``: one AdamW step over the model's parameters: for-loop (torch's CPU default),
  ``foreach=True`` and ``fused=True``, and whether each updates the weights bit for bit
  like the for-loop;
* ``step``: the share of a kit training step (oneDNN matmuls) spent in each operator
  family, from :mod:`torch.profiler` (self time of each operator, wall clock: noisier
  than the rest under load).

Usage::

    python benchmarks/bench_vit_kernels.py                  # issue #19's config, 1 thread
    python benchmarks/bench_vit_kernels.py --threads 2 --json kernels.json
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from turbda_kit.io import write_json
from turbda_kit.provenance import collect
from turbda_kit.surrogate.config import ViTConfig
from turbda_kit.surrogate.matmul import onednn_linear, set_matmul_backend
from turbda_kit.surrogate.vit import ViT

ISSUE_19_CONFIG = dict(img_size=64, patch_size=4, embed_dim=256, depth=4, num_heads=8,
                       pos_embed="learned", lead_time_convention="seed")


def best_cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best-of CPU time of ``fn()`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def linear_shapes(cfg: ViTConfig, batch: int) -> dict[str, tuple[int, int, int]]:
    """``(rows, in, out)`` of the ViT's big linear layers (per block and once)."""
    rows, d = batch * cfg.n_tokens, cfg.embed_dim
    return {"qkv": (rows, d, 3 * d), "proj": (rows, d, d), "fc1": (rows, d, cfg.mlp_hidden_dim),
            "fc2": (rows, cfg.mlp_hidden_dim, d),
            "var_agg.kv": (rows * cfg.n_vars, d, 2 * d),
            "head.out": (rows, d, cfg.n_vars * cfg.patch_size**2)}


def _linear_fwd_bwd(linear: Callable, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                    grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        linear(x, w, b).backward(grad)
        x.grad = w.grad = b.grad = None
    return step


def matmul_table(cfg: ViTConfig, batch: int, repeats: int) -> dict:
    """GFLOP/s of forward + both backward products of each linear layer, BLAS vs oneDNN."""
    out = {}
    gen = torch.Generator().manual_seed(0)
    for name, (rows, n_in, n_out) in linear_shapes(cfg, batch).items():
        x = torch.randn(rows, n_in, generator=gen, requires_grad=True)
        w = torch.randn(n_out, n_in, generator=gen, requires_grad=True)
        b = torch.randn(n_out, generator=gen, requires_grad=True)
        grad = torch.randn(rows, n_out, generator=gen)
        flop = 3 * 2 * rows * n_in * n_out
        row = {"rows": rows, "in": n_in, "out": n_out}
        for label, linear in (("blas", F.linear), ("onednn", onednn_linear)):
            step = _linear_fwd_bwd(linear, x, w, b, grad)
            row[f"{label}_gflops"] = flop / best_cpu_seconds(step, repeats) / 1e9
        row["speedup"] = row["onednn_gflops"] / row["blas_gflops"]
        out[name] = row
    return out


def attention_table(cfg: ViTConfig, batch: int, repeats: int) -> dict:
    """Milliseconds of one block's attention forward + backward, per implementation."""
    gen = torch.Generator().manual_seed(1)
    shape = (batch, cfg.num_heads, cfg.n_tokens, cfg.head_dim)
    q, k, v = (torch.randn(shape, generator=gen, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, generator=gen)

    def explicit():
        return torch.softmax((q * cfg.head_dim**-0.5) @ k.transpose(-2, -1), dim=-1) @ v

    def math():
        with sdpa_kernel([SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, k, v)

    out = {}
    for name, attend in (("sdpa_default", lambda: F.scaled_dot_product_attention(q, k, v)),
                         ("sdpa_math", math), ("explicit_softmax", explicit)):
        def fwd_bwd(attend=attend):
            attend().backward(grad)
            q.grad = k.grad = v.grad = None
        out[name] = {"fwd_bwd_ms": 1e3 * best_cpu_seconds(fwd_bwd, repeats)}
    return out


def adamw_table(cfg: ViTConfig, repeats: int) -> dict:
    """Milliseconds per AdamW step over the ViT's parameters, per implementation."""
    results, weights = {}, {}
    for name, options in (("for_loop", {"foreach": False}), ("foreach", {"foreach": True}),
                          ("fused", {"fused": True})):
        model = ViT(cfg)
        gen = torch.Generator().manual_seed(2)
        for param in model.parameters():
            param.grad = torch.randn(param.shape, generator=gen) * 1e-3
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                      weight_decay=1e-5, **options)
        results[name] = {"step_ms": 1e3 * best_cpu_seconds(optimizer.step, repeats)}
        weights[name] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for name in results:
        results[name]["bitwise_as_for_loop"] = bool(torch.equal(weights[name],
                                                                weights["for_loop"]))
    return results


def step_profile(cfg: ViTConfig, batch: int) -> dict[str, float]:
    """Share of a kit training step (oneDNN matmuls) per operator family (self CPU time)."""
    model = set_matmul_backend(ViT(cfg), "onednn")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(3)
    fields = torch.randn(batch, cfg.n_vars, cfg.img_size, cfg.img_size, generator=gen)

    def step():
        model(fields, 12.0).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    # Elementwise includes the optimiser's own updates (add_, lerp_, addcdiv_, ...).
    families = {"matmul": ("linear_pointwise", "onednn_linear", "OneDNNLinear", "aten::mm",
                           "aten::addmm", "aten::bmm"),
                "attention": ("scaled_dot_product",), "gelu": ("gelu",),
                "layer_norm": ("layer_norm",), "copies": ("copy_", "aten::cat", "clone"),
                "elementwise": ("aten::add", "aten::mul", "aten::div", "aten::sqrt", "lerp_",
                                "addcdiv_", "addcmul_", "_fused_adamw"),
                "convolution": ("convolution",), "reductions": ("aten::sum",)}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        family = next((f for f, keys in families.items() if any(k in event.key for k in keys)),
                      "other")
        totals[family] += event.self_cpu_time_total
    whole = sum(totals.values())
    return {family: value / whole for family, value in sorted(totals.items(),
                                                              key=lambda kv: -kv[1])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ViTConfig(name="issue_19", **ISSUE_19_CONFIG)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; config {cfg.name}, batch "
          f"{args.batch}, fp32; best-of-{args.repeats} CPU time")

    matmul = matmul_table(cfg, args.batch, args.repeats)
    print(f"\nlinear layers, forward + both backward products, GFLOP/s per CPU-second\n"
          f"{'layer':<12}{'rows x in x out':>20}{'BLAS':>8}{'oneDNN':>8}{'x':>6}")
    for name, row in matmul.items():
        print(f"{name:<12}{row['rows']:>10} x{row['in']:>4} x{row['out']:>4}"
              f"{row['blas_gflops']:>8.1f}{row['onednn_gflops']:>8.1f}{row['speedup']:>6.2f}")

    attention = attention_table(cfg, args.batch, args.repeats)
    print("\none block's self-attention, forward + backward, ms")
    for name, row in attention.items():
        print(f"{name:<20}{row['fwd_bwd_ms']:>8.1f}")

    adamw = adamw_table(cfg, args.repeats)
    print("\nAdamW step over all parameters, ms (bitwise equal to the for-loop?)")
    for name, row in adamw.items():
        print(f"{name:<20}{row['step_ms']:>8.2f}  {row['bitwise_as_for_loop']}")

    shares = step_profile(cfg, args.batch)
    print("\nshare of a kit training step (oneDNN matmuls), self CPU time")
    for family, share in shares.items():
        print(f"{family:<20}{share:>8.1%}")

    summary = {"format": "turbda_kit.bench_vit_kernels/1",
               "command": "python benchmarks/bench_vit_kernels.py",
               "config": cfg.to_dict(), "batch": args.batch, "threads": args.threads,
               "load_average": list(os.getloadavg()), "matmul": matmul,
               "attention": attention, "adamw": adamw, "step_shares": shares,
               "provenance": collect()}
    if args.json:
        write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
