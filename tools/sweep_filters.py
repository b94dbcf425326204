"""Tune a filter on an SQG preset: run a grid of settings and save the table.

Usage (one torch thread; each 60-cycle SQG 64² run takes 30-60 s here)::

    python tools/sweep_filters.py --preset bao2024_sqg_linear --filter letkf \
        --grid localization_radius=6e5,8e5,1.1e6,1.5e6 --grid inflation_factor=0.3,0.6,0.9 \
        --truth nature_sqg64.nc --start-index 700 --cycles 60 --spinup 20 \
        --out sweeps/letkf_linear.nc

Every combination of the ``--grid`` values is run (``--base`` adds fixed changes, e.g.
``--base likelihood_step=implicit``), on the same truth, observations and seed. For the
two-stage EnSF (``--filter ensf_twostage``) a dotted name changes its first stage:
``--grid ensf.likelihood_weight=10,30``; for the local EnSF (``--filter ensf_local``) its
localisation and inflation: ``--grid letkf.inflation_factor=0.3,0.5``.

The ViT surrogate is tuned the same way: ``--surrogate`` gives the export the runs forecast
with (the preset must be a ViT one, e.g. ``sc24_vit_ensf``) and ``--network`` puts the
preset on another preset's observation network, as the coupled experiments'
``network_preset`` does (:func:`turbda_kit.experiments.coupled.on_network`)::

    python tools/sweep_filters.py --preset sc24_vit_ensf --filter ensf_twostage \
        --network sqgturb_lgetkf_cv --surrogate turbda_kit/pretrained/sqg_64_cpu/surrogate.pt \
        --base ensf.normalize=true --base ensf.likelihood_weight=10 \
        --grid ensf.prior_inflation=1,1.2,1.5 --truth nature_train/nature_sqg.nc \
        --start-index 900 --cycles 90 --spinup 30 --out sweeps/vit_inflation.nc

The result is :func:`turbda_kit.experiments.sweep.sweep`'s Dataset, written atomically after
every run (a rerun of the same command skips the settings already in ``--out``); the
table is printed sorted by mean analysis RMSE.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def _pairs(items: list[str], many: bool) -> dict:
    out = {}
    for item in items:
        name, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"expected name=value{',value' if many else ''}, got {item!r}")
        parsed = [_value(v) for v in values.split(",")]
        out[name] = parsed if many else parsed[0]
    return out


def _nest(changes: dict) -> dict:
    """``{"ensf.x": 1, "ridge": 0.1}`` -> ``{"ensf": {"x": 1}, "ridge": 0.1}``."""
    out: dict = {}
    for name, value in changes.items():
        outer, dot, inner = name.partition(".")
        if dot:
            out.setdefault(outer, {})[inner] = value
        else:
            out[name] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--filter", required=True,
                        help="a registered filter (turbda_kit.filters.available_filters())")
    parser.add_argument("--grid", action="append", default=[], help="name=v1,v2,...")
    parser.add_argument("--base", action="append", default=[], help="name=value")
    parser.add_argument("--truth", help="nature run (theta, 12-hourly) for the truth")
    parser.add_argument("--start-index", type=int, default=0)
    parser.add_argument("--cycles", type=int, default=60)
    parser.add_argument("--spinup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--network", help="observe this preset's network (coupled runs' "
                        "network_preset)")
    parser.add_argument("--surrogate", type=Path,
                        help="surrogate export (surrogate.pt) to forecast with (ViT presets)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", type=Path,
                        help="also write the table as a small JSON summary (for docs/data)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from turbda_kit.experiments import get_preset
    from turbda_kit.experiments.coupled import on_network
    from turbda_kit.experiments.sweep import sweep
    from turbda_kit.filters import available_filters
    from turbda_kit.io import open_dataset, write_dataset, write_json

    if args.filter not in available_filters():
        raise SystemExit(f"--filter {args.filter!r}: choose from "
                         f"{', '.join(available_filters())}")
    torch.set_num_threads(args.threads)
    grid = _pairs(args.grid, many=True)
    settings = [_nest(dict(zip(grid, combo)))
                for combo in itertools.product(*grid.values())] or [{}]
    preset = get_preset(args.preset)
    if args.network:
        preset = on_network(preset, get_preset(args.network))
    model = {}
    if args.surrogate:
        from turbda_kit.surrogate.forecast_model import SurrogateModel

        if preset.model != "vit":
            raise SystemExit(f"--surrogate needs a ViT preset (e.g. sc24_vit_ensf); "
                             f"{args.preset} runs {preset.model}")
        model = {"model": SurrogateModel.from_export(args.surrogate)}
    elif preset.model == "vit":
        raise SystemExit(f"{args.preset} forecasts with the ViT: give --surrogate")
    truth = None
    if args.truth:
        nature = open_dataset(args.truth)
        truth = nature["theta"].isel(time=slice(args.start_index, None)).values
        truth = truth.astype(np.float32)
    # Written after every run; rerunning the same command skips the settings already done.
    ds = sweep(preset, args.filter, settings, n_cycles=args.cycles,
               spinup_cycles=args.spinup, seed=args.seed, truth_trajectory=truth,
               base=_nest(_pairs(args.base, many=False)), out_path=args.out, **model)
    ds.attrs.update(truth=str(args.truth or "model run on the fly"),
                    start_index=args.start_index, grid=json.dumps(grid),
                    surrogate=str(args.surrogate or ""))
    write_dataset(ds, args.out)
    order = np.argsort(np.where(ds["diverged"].values, np.inf, ds["mean_rmse_analysis"].values))
    print(f"{args.preset} {args.filter}: cycles {args.spinup}-{args.cycles - 1}, "
          f"base {ds.attrs['base']}")
    print(f"{'analysis':>9} {'forecast':>9} {'spread_a':>9}  setting")
    for i in order:
        row = ds.isel(setting=int(i))
        if bool(row["diverged"]):
            print(f"{'diverged':>9} {'':>9} {'':>9}  {row['label'].item()} "
                  f"(cycle {int(row['diverged_cycle'])})")
        else:
            print(f"{float(row['mean_rmse_analysis']):9.3f} {float(row['mean_rmse_forecast']):9.3f}"
                  f" {float(row['mean_spread_analysis']):9.3f}  {row['label'].item()}")
    print(f"wrote {args.out}")
    if args.json:
        rows = [{"setting": json.loads(str(ds["label"].values[i])),
                 **{name: (None if math.isnan(float(ds[name].values[i]))
                           else round(float(ds[name].values[i]), 4))
                    for name in ds.data_vars if name.startswith("mean_")},
                 "diverged": bool(ds["diverged"].values[i]),
                 "diverged_cycle": int(ds["diverged_cycle"].values[i]),
                 "wall_s": round(float(ds["wall_s"].values[i]), 1)}
                for i in range(ds.sizes["setting"])]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in ds.attrs.items()}
        write_json(args.json, {"command": "python tools/sweep_filters.py " + " ".join(
            sys.argv[1:]), "attrs": attrs, "rows": rows})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
