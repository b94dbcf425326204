"""The SQG Jacobian's two transposed copies: torch's ``copy_`` against the C copy.

Usage::

    python benchmarks/bench_sqg_copies.py                 # N = 64, 128, 256; both dtypes
    python benchmarks/bench_sqg_copies.py --sizes 128 --repeats 9

For each N the layouts of one Jacobian chunk of the model on a CPU (the member-levels
per chunk ``_jacobian_chunk`` picks, the first block of grid rows): ``y-to-x`` copies
the y transform's output into the x transform's zero-padded input, ``adv-to-y`` the
advection's kept x wavenumbers into the forward y transform's input. Each side is
timed on one thread in the same run (best of ``--repeats`` rounds of ``--calls``
calls): torch, the C copy through :class:`turbda_kit.native.TransposeCopy` as the model
calls it (checks done once), and the same C copy through
:func:`turbda_kit.native.transpose_copy_` (checks on every call); the ratio is torch /
TransposeCopy. All write the same bits (checked).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from turbda_kit import native
from turbda_kit.models.sqg import (
    SQGModel,
    _jacobian_chunk,
    _row_block,
    bao2024_at_resolution,
)


def best_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Smallest mean time of one call over ``repeats`` rounds, in microseconds."""
    for _ in range(max(1, calls // 10)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def bench(sizes: tuple[int, ...], calls: int, repeats: int) -> list[dict]:
    """Rows of (N, dtype, copy, levels, torch us, C us, ratio)."""
    torch.set_num_threads(1)
    rows = []
    for n in sizes:
        for dtype in (torch.float32, torch.float64):
            ops = SQGModel(bao2024_at_resolution(n)).operators(torch.device("cpu"), dtype)
            chunk = _jacobian_chunk(ops)
            r = min(ops.m, _row_block(ops, chunk))
            g = torch.Generator().manual_seed(0)
            cases = {
                "y-to-x": (torch.zeros((chunk, 4, r, ops.mh), dtype=ops.cdtype)[..., :ops.k_in],
                           torch.randn((chunk, 4, ops.k_in, ops.m), generator=g,
                                       dtype=ops.cdtype)[..., :r]),
                "adv-to-y": (torch.zeros((chunk, ops.k_kept, ops.m), dtype=ops.cdtype)[..., :r],
                             torch.randn((chunk, r, ops.mh), generator=g,
                                         dtype=ops.cdtype)[..., :ops.k_kept]),
            }
            for name, (dst, src) in cases.items():
                t_torch = best_us(lambda d=dst, s=src: d.copy_(s.transpose(-1, -2)), calls,
                                  repeats)
                dst.zero_()
                t_checked = best_us(lambda d=dst, s=src: native.transpose_copy_(d, s), calls,
                                    repeats)
                assert torch.equal(dst, src.transpose(-1, -2)), "the C copy differs"
                copy = native.TransposeCopy(dst, src)
                dst.zero_()
                t_c = best_us(lambda c=copy, s=src: c(s), calls, repeats)
                assert torch.equal(dst, src.transpose(-1, -2)), "the C copy differs"
                rows.append({"N": n, "dtype": str(ops.cdtype).removeprefix("torch."),
                             "copy": name, "member_levels": chunk, "rows": r,
                             "torch_us": t_torch, "c_us": t_c, "c_checked_us": t_checked,
                             "ratio": t_torch / t_c})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not native.available():
        raise SystemExit("no C compiler: the C copy is not built (set CC)")
    print(f"# torch {torch.__version__}, one thread; per call = one Jacobian chunk of "
          f"member-levels; C = TransposeCopy, C checked = transpose_copy_; ratio = torch / C")
    print(f"{'N':>4} {'dtype':>10} {'copy':>9} {'levels':>6} {'rows':>5} {'torch us':>9} "
          f"{'C us':>7} {'C checked us':>12} {'ratio':>6}")
    for row in bench(tuple(args.sizes), args.calls, args.repeats):
        print(f"{row['N']:4d} {row['dtype']:>10} {row['copy']:>9} {row['member_levels']:6d} "
              f"{row['rows']:5d} {row['torch_us']:9.1f} {row['c_us']:7.1f} "
              f"{row['c_checked_us']:12.1f} {row['ratio']:6.2f}")


if __name__ == "__main__":
    main()
