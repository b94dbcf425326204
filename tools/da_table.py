"""Run (or read) the presets' cycling experiments and write a small JSON table of scores.

Usage::

    # the stated reduced size (SQG 64², 20 members, 80 cycles of which 20 spin-up)
    python tools/da_table.py --out results/da_table.json --runs-dir runs/da_table
    # CI size (SQG 16², 6 members, 8 cycles): seconds
    python tools/da_table.py --quick --out da_table_quick.json
    # tabulate runs made before (cycling_<filter>.nc under <dir>/<preset>/)
    python tools/da_table.py --read runs/da_table --out results/da_table.json

One row per preset and filter: the analysis RMSE and spread (means over the cycles after
spin-up), the forecast RMSE by lead time (forecasts launched from the analysis mean every
``--every`` cycles after spin-up), and the baselines of the same experiment — persistence
by lead, the truth's climatology over the scored cycles, the observations themselves
where every point is observed linearly, and the free run. The JSON states the run length,
the grid, the ensemble, how the ensemble started (warm: members around the truth at cycle
0) and the command that made it.

Every filter of a preset runs on one truth (computed once, on the fly, from a spun-up
state) and the same observations (named random streams). With ``--N`` other than 64 the
networks' observation counts scale with the number of grid points.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_PRESETS = ("bao2024_sqg_linear", "bao2024_sqg_sparse_mixed", "sqgturb_lgetkf_cv")
DEFAULT_FILTERS = ("free", "letkf", "ensf", "ensf_twostage")
FULL = {"N": 64, "members": 20, "cycles": 80, "spinup": 20, "leads": "12,24,48,72",
        "every": 5, "spinup_days": 100.0}
QUICK = {"N": 16, "members": 6, "cycles": 8, "spinup": 2, "leads": "12,24", "every": 2,
         "spinup_days": 2.0}
TABLE_VERSION = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS),
                        help="preset names (spaces or commas between them)")
    parser.add_argument("--filters", nargs="+", default=list(DEFAULT_FILTERS),
                        help="filters, 'free' for the free run (spaces or commas); "
                        "ensf_spectral and wiener_spectral only for dense identity observations")
    parser.add_argument("--quick", action="store_true", help="CI size (defaults: "
                        + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ")")
    parser.add_argument("--N", type=int, help=f"SQG grid (default {FULL['N']})")
    parser.add_argument("--members", type=int, help=f"ensemble size (default {FULL['members']})")
    parser.add_argument("--cycles", type=int, help=f"cycles run (default {FULL['cycles']})")
    parser.add_argument("--spinup", type=int, help="leading cycles left out of the scores "
                        f"(default {FULL['spinup']})")
    parser.add_argument("--leads", help="forecast leads in hours, comma separated (default "
                        f"{FULL['leads']})")
    parser.add_argument("--every", type=int, help="cycles between forecast launches "
                        f"(default {FULL['every']})")
    parser.add_argument("--spinup-days", type=float, help="truth spin-up before cycle 0, "
                        f"days (default {FULL['spinup_days']})")
    parser.add_argument("--set", action="append", default=[], metavar="FILTER.FIELD=VALUE",
                        help="change a filter setting of every preset (null for None), e.g. "
                        "ensf_twostage.ridge=0.1 or ensf_twostage.ensf.spread_relaxation=0.7 "
                        "(repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs-dir", type=Path, help="keep each preset's cycling files in "
                        "<runs-dir>/<preset>/ (default: a temporary directory)")
    parser.add_argument("--read", type=Path, help="read <read>/<preset>/cycling_<filter>.nc "
                        "instead of running")
    parser.add_argument("--out", type=Path, required=True, help="the JSON table")
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else FULL
    chosen = {"N": args.N, "members": args.members, "cycles": args.cycles,
              "spinup": args.spinup, "leads": args.leads, "every": args.every,
              "spinup_days": args.spinup_days}
    settings = {key: (base[key] if value is None else value) for key, value in chosen.items()}
    settings["leads"] = [float(v) for v in str(settings["leads"]).split(",") if v.strip()]
    settings["filter_changes"] = _changes(args.set)
    return settings


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"null": None, "true": True, "false": False}.get(text.lower(), text)


def _changes(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["ensf_twostage.ensf.x=1", "letkf.y=2"]`` -> ``{"ensf_twostage": {"ensf": {"x": 1}},
    "letkf": {"y": 2}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, _, value = item.partition("=")
        parts = name.split(".")
        if not value or len(parts) not in (2, 3):
            raise SystemExit(f"--set expects FILTER.FIELD=VALUE (or FILTER.ensf.FIELD=VALUE), "
                             f"got {item!r}")
        target = out.setdefault(parts[0], {})
        if len(parts) == 3:
            target = target.setdefault(parts[1], {})
        target[parts[-1]] = _value(value)
    return out


def _preset(name: str, settings: dict[str, Any]):
    from turbda_kit.experiments import get_preset

    preset = get_preset(name).replace(n_cycles=settings["cycles"],
                                      spinup_cycles=settings["spinup"],
                                      n_members=settings["members"])
    for filter_name, changes in settings["filter_changes"].items():
        preset = preset.with_filter_settings(filter_name, changes)
    network = preset.network
    if network is not None and network.n_obs is not None and settings["N"] != 64:
        scaled = max(1, round(network.n_obs * (settings["N"] / 64) ** 2))
        preset = preset.replace(network=network.replace(n_obs=scaled))
    return preset


def _truth(preset, settings: dict[str, Any], seed: int):
    """The truth of every cycle (0 … n_cycles), computed once for all filters."""
    import torch

    from turbda_kit.experiments import build_experiment

    experiment = build_experiment(preset, "free", seed=seed, model_overrides={"N": settings["N"]},
                                  spinup_days=settings["spinup_days"])
    return torch.stack([experiment.truth.state(k) for k in range(preset.n_cycles + 1)]).numpy()


def _run(preset, filters: list[str], settings: dict[str, Any], seed: int, out_dir: Path
         ) -> dict[str, Any]:
    from turbda_kit.experiments import SkillConfig, build_experiment, run_comparison

    truth = _truth(preset, settings, seed)
    skill = SkillConfig.from_hours(settings["leads"], preset.cycle_seconds / 3600.0,
                                   every=settings["every"])
    comparison = run_comparison(
        filters, lambda name: build_experiment(preset, name, truth_trajectory=truth, seed=seed,
                                               model_overrides={"N": settings["N"]},
                                               skill=skill),
        out_dir, prefix="cycling", show_progress=False)
    return {"results": comparison.results, "diverged": comparison.diverged,
            "wall_seconds": comparison.wall_seconds}


def _read(directory: Path, filters: list[str]) -> dict[str, Any]:
    from turbda_kit.io import open_dataset

    results, diverged = {}, {}
    for name in filters:
        path = directory / f"cycling_{name}.nc"
        if path.exists():
            results[name] = open_dataset(path)
        else:
            diverged[name] = {"diverged_at_cycle": None, "message": f"{path} not found"}
    return {"results": results, "diverged": diverged, "wall_seconds": {}}


def _rows(preset_name: str, outcome: dict[str, Any], filters: list[str]) -> list[dict]:
    from turbda_kit.experiments.skill import skill_summary

    def clean(value) -> float | None:
        value = float(value)
        return None if math.isnan(value) else round(value, 4)

    results = outcome["results"]
    free = results.get("free")
    free_rmse = None if free is None else clean(free.attrs["mean_rmse_analysis"])
    free_leads = None if free is None else {
        k: None if v is None else round(v, 4)
        for k, v in skill_summary(free).get("forecast_rmse_by_lead_hours", {}).items()}
    rows = []
    for name in filters:
        row: dict[str, Any] = {"preset": preset_name, "filter": name}
        if name not in results:
            row.update(diverged=True, **outcome["diverged"].get(name, {}))
            rows.append(row)
            continue
        ds = results[name]
        skill = skill_summary(ds)
        row.update(
            diverged=False,
            analysis_rmse=clean(ds.attrs["mean_rmse_analysis"]),
            analysis_spread=clean(ds.attrs["mean_spread_analysis"]),
            forecast_rmse_by_lead_hours={k: None if v is None else round(v, 4) for k, v in
                                         skill.get("forecast_rmse_by_lead_hours", {}).items()},
            forecasts_per_lead=skill.get("forecasts_per_lead"),
            baselines={
                "free_run_analysis_rmse": free_rmse,
                "free_run_forecast_rmse_by_lead_hours": free_leads,
                "persistence_rmse_by_lead_hours": {
                    k: None if v is None else round(v, 4)
                    for k, v in skill.get("persistence_rmse_by_lead_hours", {}).items()},
                "climatology_rmse": None if skill.get("climatology_rmse") is None
                else round(skill["climatology_rmse"], 4),
                "obs_only_rmse": None if skill.get("obs_only_rmse") is None
                else round(skill["obs_only_rmse"], 4),
            },
            units=ds["rmse_analysis"].attrs.get("units", ""),
            wall_seconds=None if name not in outcome["wall_seconds"]
            else round(outcome["wall_seconds"][name], 1))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the tool; returns the table it wrote."""
    args = _parser().parse_args(argv)
    args.presets = [p for item in args.presets for p in item.split(",") if p]
    args.filters = [f for item in args.filters for f in item.split(",") if f]
    import tempfile

    import torch

    from turbda_kit import provenance
    from turbda_kit.io import write_json

    torch.set_num_threads(args.threads)
    settings = _settings(args)
    command = "python tools/da_table.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    table: dict[str, Any] = {
        "table_version": TABLE_VERSION,
        "command": command,
        "mode": "read" if args.read else "run",
        "size": "quick" if args.quick else "stated",
        "run": {
            "model": f"SQG {settings['N']}x{settings['N']}x2, 12-h cycles",
            "n_members": settings["members"], "n_cycles": settings["cycles"],
            "spinup_cycles": settings["spinup"],
            "scored_cycles": settings["cycles"] - settings["spinup"],
            "start": "warm: members are the truth plus N(0, initial_spread^2) at cycle 0 "
                     "(the preset's initial_spread); scores leave out the spin-up cycles",
            "truth": f"one SQG run per preset, spun up {settings['spinup_days']:g} days from "
                     "a random state, shared by every filter",
            "forecast_leads_hours": settings["leads"],
            "forecast_launch_every_cycles": settings["every"],
            "forecast_from": "analysis ensemble mean",
            "seed": args.seed,
            "networks": ("observation counts scaled by (N/64)^2" if settings["N"] != 64
                         else "as in the presets"),
            "filter_changes": settings["filter_changes"],
        },
        "rows": [],
        "provenance": {k: v for k, v in provenance.collect().items()
                       if k in ("turbda_kit_version", "git", "python", "torch", "created_utc")},
    }
    if args.read:
        table["run"]["note"] = "read from existing runs; their attrs hold the settings used"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.presets:
            preset = _preset(name, settings)
            if args.read:
                outcome = _read(args.read / name, args.filters)
            else:
                root = args.runs_dir if args.runs_dir is not None else Path(scratch)
                outcome = _run(preset, args.filters, settings, args.seed, root / name)
            rows = _rows(name, outcome, args.filters)
            for row in rows:
                row["source"] = preset.source
                row["network"] = "every point" if preset.network is None else repr(
                    preset.network)
                row["network_description"] = ("every point" if preset.network is None
                                              else preset.network.describe())
            table["rows"].extend(rows)
            table["wall_seconds"] = round(time.perf_counter() - started, 1)
            write_json(args.out, table)        # after every preset: a killed run keeps rows
    print(f"wrote {args.out}: {len(table['rows'])} rows in {table['wall_seconds']} s")
    return table


if __name__ == "__main__":
    main()
