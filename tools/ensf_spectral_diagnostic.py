"""Forecast error against ensemble spread by wavenumber shell, in a cycled SQG experiment.

Usage::

    python tools/ensf_spectral_diagnostic.py --out docs/data/ensf_spectral_diagnostic.json

Runs the dense linear preset (``bao2024_sqg_linear``, SQG 64², 20 members, warm start)
with a filter (default the spectral EnSF) and, at every analysis after spin-up, compares
per wavenumber shell of the orthonormal Hartley coordinates (per level):

* the forecast mean's error variance, estimated from the innovations without the truth:
  ``mean((H y - mean H x)^2) - sigma_o^2`` (the observation errors are white, ``sigma_o^2``
  per coordinate);
* the forecast ensemble's variance.

Both are averaged over the scored cycles. This is what decides whether a homogeneous
(spectral) prior can filter the observation noise: only where the forecast error variance
per coordinate is well below ``sigma_o^2`` does a Wiener filter leave the observations out.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    """Run the diagnostic; returns the JSON it wrote."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="ensf_spectral")
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--spinup", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="EnSF field of the filter (default likelihood_weight=20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from turbda_kit.experiments import build_experiment, get_preset
    from turbda_kit.filters import ensf_spectral as spectral
    from turbda_kit.io import write_json

    torch.set_num_threads(1)
    changes = {"likelihood_weight": 20.0}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key] = float(value)
    preset = get_preset("bao2024_sqg_linear").replace(n_cycles=args.cycles,
                                                      spinup_cycles=args.spinup)
    if args.filter in ("ensf", "ensf_spectral"):
        preset = (preset.with_filter_settings("ensf_spectral", {"ensf": changes})
                  if args.filter == "ensf_spectral" else
                  preset.with_filter_settings("ensf", changes))
    experiment = build_experiment(preset, args.filter, seed=args.seed, spinup_days=100.0)
    inner = experiment.analysis
    records: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recorder:
        """The filter, recording the innovations and spread of every forecast it sees."""

        name = inner.name

        def __call__(self, forecast, obs, operator, sigma, generator):
            coefficients = spectral.hartley2(forecast.double())
            mean = coefficients.mean(0)
            innovation = (spectral.hartley2(obs.reshape(forecast.shape[1:]).double())
                          - mean) ** 2
            records.append((innovation - float(sigma) ** 2, coefficients.var(0)))
            return inner(forecast, obs, operator, sigma, generator)

    experiment.analysis = Recorder()
    ds = experiment.run(show_progress=False)
    n = records[0][0].shape[-1]
    shells, count = spectral._shells(n, n, torch.device("cpu"))
    flat = shells.reshape(-1)
    sizes = torch.bincount(flat, minlength=count).double()
    scored = records[args.spinup:]
    out = {"command": "python tools/ensf_spectral_diagnostic.py " + " ".join(
               shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
           "preset": preset.name, "filter": args.filter, "filter_changes": changes,
           "n_cycles": args.cycles, "scored_cycles": len(scored),
           "start": "warm: the truth at cycle 0 plus N(0, 2^2) K",
           "mean_rmse_analysis": float(ds.attrs["mean_rmse_analysis"]),
           "mean_spread_analysis": float(ds.attrs["mean_spread_analysis"]),
           "obs_error_variance": float(preset.obs_error_std) ** 2,
           "units": "K^2 per Hartley coordinate", "levels": []}
    for level in range(2):
        error = torch.stack([e[level].reshape(-1) for e, _ in scored]).mean(0)
        spread = torch.stack([v[level].reshape(-1) for _, v in scored]).mean(0)
        by_shell_error = torch.bincount(flat, weights=error, minlength=count) / sizes
        by_shell_spread = torch.bincount(flat, weights=spread, minlength=count) / sizes
        out["levels"].append({
            "level": level,
            "shell": list(range(count)),
            "forecast_error_variance": [round(float(v), 4) for v in by_shell_error],
            "forecast_spread_variance": [round(float(v), 4) for v in by_shell_spread]})
    write_json(args.out, out)
    print(f"wrote {args.out}: analysis RMSE {out['mean_rmse_analysis']:.3f} K")
    return out


if __name__ == "__main__":
    main()
