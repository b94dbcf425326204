"""Is one filter's mean score really below another's? A paired, block-bootstrap comparison.

Usage (two cycling outputs on the same truth, e.g. of a ``turbda pipeline paper --out
RUN`` directory)::

    python tools/paired_difference.py \
        RUN/da_local_dense/runs/bao2024_sqg_linear/cycling_ensf_local.nc \
        RUN/da_sparse_linear/runs/bao2024_sqg_linear/cycling_letkf.nc --first-cycle 100

    # several pairs into one JSON summary: A=B labels, paths relative to --root
    python tools/paired_difference.py --root RUN --first-cycle 100 --json pairs.json \
        --pair linear=da_local_dense/runs/bao2024_sqg_linear/cycling_ensf_local.nc:\
da_sparse_linear/runs/bao2024_sqg_linear/cycling_letkf.nc

Prints the two means, the mean difference ``a - b`` with its 95 % moving-block bootstrap
interval (:func:`turbda_kit.experiments.paired.paired_difference`; blocks of
``--block`` cycles) and the share of cycles where ``a`` is lower. Refuses two runs whose
truth-only scores (climatology, persistence, observations only) differ.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", nargs="?", type=Path, help="cycling output of run a")
    parser.add_argument("b", nargs="?", type=Path, help="cycling output of run b")
    parser.add_argument("--pair", action="append", default=[], metavar="LABEL=A:B",
                        help="a labelled pair (paths relative to --root); repeatable")
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--score", default="rmse_analysis")
    parser.add_argument("--first-cycle", type=int, default=0,
                        help="first cycle compared (the spin-up cycles before it are left out)")
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--n-boot", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows as a JSON summary")
    args = parser.parse_args(argv)

    from turbda_kit.errors import InputError
    from turbda_kit.experiments.paired import compare_runs
    from turbda_kit.io import write_json

    pairs = []
    if args.a is not None or args.b is not None:
        if args.a is None or args.b is None:
            parser.error("give both a and b, or --pair")
        pairs.append(("a-b", str(args.a), str(args.b), args.a, args.b))
    for item in args.pair:
        label, _, paths = item.partition("=")
        path_a, _, path_b = paths.partition(":")
        if not (label and path_a and path_b):
            parser.error(f"--pair expects LABEL=A:B, got {item!r}")
        # recorded as given (relative to --root), read from under --root
        pairs.append((label, path_a, path_b, args.root / path_a, args.root / path_b))
    if not pairs:
        parser.error("nothing to compare: give a and b, or --pair")
    rows = []
    for label, given_a, given_b, path_a, path_b in pairs:
        try:
            result = compare_runs(path_a, path_b, score=args.score,
                                  first_cycle=args.first_cycle, block=args.block,
                                  n_boot=args.n_boot, seed=args.seed)
        except InputError as err:
            print(f"{label}: {err}", file=sys.stderr)
            return 1
        print(f"{label}: {args.score} a {result.mean_a:.4f}, b {result.mean_b:.4f}; a - b "
              f"{result.mean_difference:+.4f} [{result.low:+.4f}, {result.high:+.4f}] "
              f"({result.level:.0%} block bootstrap, blocks of {result.block} cycles, "
              f"{result.n_cycles} cycles); a lower on {result.fraction_a_lower:.0%} of them")
        rows.append({"label": label, "a": given_a, "b": given_b,
                     "score": args.score, "first_cycle": args.first_cycle,
                     **result.as_dict()})
    if args.json is not None:
        # the run directory is this machine's: recorded as RUN
        given = list(argv if argv is not None else sys.argv[1:])
        for i, item in enumerate(given):
            if item == "--root" and i + 1 < len(given):
                given[i + 1] = "RUN"
            elif item.startswith("--root="):
                given[i] = "--root=RUN"
        command = "python tools/paired_difference.py " + " ".join(map(shlex.quote, given))
        write_json(args.json, {"command": command,
                               "what": "paired per-cycle comparison of two runs on one truth; "
                                       "RUN is a `turbda pipeline paper --out RUN` directory",
                               "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
