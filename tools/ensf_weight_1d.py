"""Which likelihood weight makes the EnSF a Kalman filter? Scalar problems, many at once.

Usage::

    python tools/ensf_weight_1d.py --out docs/data/ensf_weight_1d.json

Each of ``--variables`` independent scalar problems has a 20-member prior ensemble drawn
from ``N(0, 1)``, a truth drawn from the same law and one identity observation with
error variance ``1 / lam``: ``lam`` is the observation's precision relative to the prior
(the ratio the EnSF sees per variable once normalised, and, in an ensemble-space or
spectral formulation, per direction). For every ``lam`` and likelihood weight ``w`` the
kit's :func:`turbda_kit.filters.ensf.ensf_analysis` (paired prior score, damping
``h(t) = 1 - t``, 100 steps linearly implicit in the likelihood: the settings of the
dense SQG presets, without their RTPS) analyses all problems at once, and the table
holds, averaged over the problems:

* ``rmse``: the analysis mean's error against the truth;
* ``kalman_rmse``: the same for the Kalman update with each problem's own ensemble mean
  and variance (what an ETKF/LETKF does with this prior and observation);
* ``spread``: the analysis ensemble's standard deviation, and ``kalman_spread``.

Per ``lam`` the weight with ``rmse`` closest to ``kalman_rmse`` and the one with
``spread`` closest to ``kalman_spread`` are printed. If they move with ``lam``, or
differ from each other, no single weight can be right in every direction of a problem
whose directions see different ``lam`` (an ensemble-space or spectral formulation of
dense observations).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def analyse(lam: float, weight: float, variables: int, members: int, steps: int,
            seed: int) -> dict[str, float]:
    """One row of the table: EnSF and Kalman analyses of ``variables`` scalar problems."""
    import torch

    from turbda_kit.filters.ensf import EnSFConfig, ensf_analysis
    from turbda_kit.obs.operators import Identity

    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64
    prior = torch.randn((members, variables), generator=g, dtype=dtype)
    truth = torch.randn(variables, generator=g, dtype=dtype)
    sigma_o = lam ** -0.5
    obs = truth + sigma_o * torch.randn(variables, generator=g, dtype=dtype)
    # the dense SQG presets' solver: 100 steps, linearly implicit in the (stiff) likelihood
    config = EnSFConfig(n_steps=steps, likelihood_weight=weight, likelihood_step="implicit")
    analysis = ensf_analysis(prior, obs, Identity((variables,)), sigma_o, seed + 1, config)
    mean, var = prior.mean(0), prior.var(0)
    gain = var / (var + sigma_o**2)
    kalman_mean = mean + gain * (obs - mean)
    return {"lam": lam, "weight": weight,
            "rmse": float((analysis.mean(0) - truth).pow(2).mean().sqrt()),
            "spread": float(analysis.var(0).mean().sqrt()),
            "kalman_rmse": float((kalman_mean - truth).pow(2).mean().sqrt()),
            "kalman_spread": float(((1 - gain) * var).mean().sqrt()),
            "prior_rmse": float((mean - truth).pow(2).mean().sqrt())}


def main(argv: list[str] | None = None) -> dict:
    """Run the table; returns the JSON it wrote."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lams", type=float, nargs="+",
                        default=[0.1, 1.0, 10.0, 100.0, 1000.0])
    parser.add_argument("--weights", type=float, nargs="+",
                        default=[0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    parser.add_argument("--variables", type=int, default=20000)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from turbda_kit.io import write_json

    torch.set_num_threads(1)
    rows = [analyse(lam, w, args.variables, args.members, args.steps, args.seed)
            for lam in args.lams for w in args.weights]
    best, best_spread = {}, {}
    print(f"{'lam':>7} {'weight':>7} {'rmse':>7} {'kalman':>7} {'spread':>7} {'k.spread':>8}")
    for row in rows:
        print(f"{row['lam']:7g} {row['weight']:7g} {row['rmse']:7.4f} {row['kalman_rmse']:7.4f}"
              f" {row['spread']:7.4f} {row['kalman_spread']:8.4f}")
        key = row["lam"]
        if key not in best or abs(row["rmse"] - row["kalman_rmse"]) < \
                abs(best[key]["rmse"] - best[key]["kalman_rmse"]):
            best[key] = row
        if key not in best_spread or abs(row["spread"] - row["kalman_spread"]) < \
                abs(best_spread[key]["spread"] - best_spread[key]["kalman_spread"]):
            best_spread[key] = row
    for lam, row in best.items():
        other = best_spread[lam]
        print(f"lam {lam:g}: weight {row['weight']:g} comes closest to the Kalman rmse "
              f"({row['rmse']:.4f} against {row['kalman_rmse']:.4f}; spread "
              f"{row['spread']:.4f} against {row['kalman_spread']:.4f}), weight "
              f"{other['weight']:g} to its spread ({other['spread']:.4f}; rmse "
              f"{other['rmse']:.4f})")
    command = "python tools/ensf_weight_1d.py " + shlex.join(
        [a if not a.startswith("/") else Path(a).name for a in (argv or sys.argv[1:])])
    table = {"command": command, "variables": args.variables, "members": args.members,
             "steps": args.steps, "seed": args.seed, "rows": rows,
             "closest_weight_rmse": {str(lam): row["weight"] for lam, row in best.items()},
             "closest_weight_spread": {str(lam): row["weight"]
                                       for lam, row in best_spread.items()}}
    write_json(args.out, table)
    return table


if __name__ == "__main__":
    main()
