"""The README's result sections, each rendered from the summaries one pipeline stage wrote.

Every renderer below is registered with :func:`turbda_kit.report.readme.renderer` under
the name of its README block (``<!-- results:NAME -->``) and reads the summaries that the
``collect`` stage of ``turbda pipeline paper`` writes (``results/<stage>.json``, copied into
the checkout by ``turbda report publish RUN``):

* ``da_sqg``: the SQG DA presets, free / LETKF / EnSF (stages ``da_linear``,
  ``da_shocks``, ``da_arctan``);
* ``da_sparse``: dense and sparse networks, every filter, forecast skill and baselines
  (``da_sparse_linear``, ``da_sparse_mixed``, ``da_sparse_cv``, ``da_skill_shocks``,
  ``da_skill_arctan``, and the local EnSF's ``da_local_dense``, ``da_local_sparse``:
  ``tools/da_table.py``);
* ``coupled``: the coupled ViT + EnSF runs and the SQG baselines (``coupled``);
* ``coupled_sparse``: ViT + two-stage EnSF against SQG on a sparse network, with forecast
  skill and the ViT's 12-h forecasts beside SQG's from the same analyses
  (``coupled_sparse``);
* ``l96_accuracy``: Lorenz-96 EnSF from the paper's cold start (``l96_accuracy``);
* ``vit_bundle``: the shipped surrogate's held-out RMSE (``ship_vit``);
* ``benchmarks``: speed against each baseline, with each side's threads (``bench_*``);
* ``scaling``: EnSF weak and strong efficiency beside CPU utilisation (``scaling_weak``,
  ``scaling_strong``).

A block whose summaries are missing says so (:data:`NOT_YET`) instead of showing a number,
and every block ends with the commands its numbers come from
(:func:`turbda_kit.report.readme.source_line`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .readme import fmt, markdown_table, renderer, source_line
from .summaries import Summary

__all__ = ["NOT_YET", "SECTIONS"]

NOT_YET = ("*Not yet generated*: run `turbda pipeline paper`, then `turbda report publish "
           "<its run directory>`.")
"""What a block says when the summaries it needs are not in ``results/``."""

SECTIONS = ("da_sqg", "da_sparse", "coupled", "coupled_sparse", "l96_accuracy", "vit_bundle", "benchmarks", "scaling")
"""The block names this module renders."""

Results = Mapping[str, Summary]

_FILTER_COLUMNS = (("free", "SQG free"), ("letkf", "SQG+LETKF"), ("ensf", "SQG+EnSF"))
_DA_STAGES = ("da_linear", "da_shocks", "da_arctan")
_DA_TABLE_STAGES = ("da_sparse_linear", "da_sparse_mixed", "da_sparse_cv", "da_skill_shocks",
                     "da_skill_arctan", "da_local_dense", "da_local_sparse")


def _missing(what: str, stages: Sequence[str]) -> str:
    listed = ", ".join(f"`results/{s}.json`" for s in stages)
    return f"{what}: {NOT_YET} (needs {listed})"


def _parameters(summary: Summary) -> dict[str, Any]:
    return dict(summary.provenance.get("stage_parameters") or {})


def _rmse_cell(entry: Any, digits: int = 3) -> str:
    """A run's mean analysis RMSE, or where it diverged."""
    if not isinstance(entry, dict):
        return "—"
    if "mean_rmse_analysis" in entry:
        return fmt(entry["mean_rmse_analysis"], digits)
    if "diverged_at_cycle" in entry:
        cycle = entry["diverged_at_cycle"]
        return "diverged" + (f" at cycle {cycle}" if cycle is not None else "")
    return "—"


def _quick_note(*summaries: Summary) -> str:
    quick = any(s.provenance.get("quick") for s in summaries)
    return " **(--quick size: a check of the pipeline, not a result)**" if quick else ""


def _initial_spread(params: Mapping[str, Any]) -> str:
    """The preset's initial ensemble spread (how the warm start was drawn)."""
    from ..experiments.presets import PRESETS

    preset = PRESETS.get(str(params.get("preset", "")))
    return "?" if preset is None else f"{preset.initial_spread:g}"


@renderer("da_sqg")
def render_da_sqg(results: Results) -> str:
    """SQG DA presets: mean analysis RMSE of SQG free, SQG+LETKF and SQG+EnSF (K).

    Parameters
    ----------
    results : mapping of str to Summary
        The loaded summaries, by stage name (:func:`~turbda_kit.report.summaries.load_results`).

    Returns
    -------
    str
        The block's markdown.
    """
    present = [results[s] for s in _DA_STAGES if s in results]
    if not present:
        return _missing("SQG DA presets", _DA_STAGES)
    rows = []
    for stage in _DA_STAGES:
        if stage not in results:
            rows.append([f"(stage `{stage}`)", NOT_YET, "", "", ""])
            continue
        summary = results[stage]
        params = _parameters(summary)
        published = ", ".join(f"{label.split('+')[-1].replace('SQG free', 'free')} "
                              f"{fmt(summary.data[key].get('reported_rmse'), 2)}"
                              for key, label in _FILTER_COLUMNS
                              if isinstance(summary.data.get(key), dict)
                              and summary.data[key].get("reported_rmse") is not None)
        rows.append([f"`{params.get('preset', stage)}`",
                     *(_rmse_cell(summary.data.get(key)) for key, _ in _FILTER_COLUMNS),
                     published or "—"])
    first = _parameters(present[0])
    n_cycles, spinup = first.get("n_cycles"), first.get("spinup_cycles", 0)
    head = (f"SQG DA presets on the `nature_truth` run (an independent nature run), "
            f"{first.get('n_members')} members, {n_cycles} 12-h cycles from a warm start "
            f"(members: the truth at cycle 0 plus N(0, {_initial_spread(first)}²) K "
            f"noise); mean analysis RMSE over cycles {int(spinup) + 1}–{n_cycles} (cycles "
            f"1–{spinup} are spin-up), K{_quick_note(*present)}:")
    table = markdown_table(["preset", *(label for _, label in _FILTER_COLUMNS),
                            "published"], rows)
    return f"{head}\n\n{table}\n\n{source_line(*present)}"


@renderer("coupled")
def render_coupled(results: Results) -> str:
    """Coupled ViT + EnSF runs and the SQG baselines: mean analysis RMSE and spread, and
    forecast RMSE by lead with persistence when the stage scored forecasts (K).

    Parameters
    ----------
    results : mapping of str to Summary
        The loaded summaries, by stage name (:func:`~turbda_kit.report.summaries.load_results`).

    Returns
    -------
    str
        The block's markdown.
    """
    if "coupled" not in results:
        return _missing("Coupled ViT + EnSF runs", ["coupled"])
    summary = results["coupled"]
    params = _parameters(summary)
    runs = {k: v for k, v in summary.data.items() if isinstance(v, dict)}
    # forecast skill columns when the stage scored forecasts (skill_leads_hours)
    leads = sorted({h for e in runs.values() for h in (e.get("forecast_rmse_by_lead_hours")
                                                       or {})}, key=float)
    rows = []
    for name, entry in runs.items():
        by_lead = entry.get("forecast_rmse_by_lead_hours") or {}
        rows.append([f"`{name}`", _rmse_cell(entry),
                     fmt(entry.get("mean_spread_analysis"), 3),
                     *(fmt(by_lead.get(h), 2) for h in leads),
                     fmt(entry.get("mean_surrogate_drift"), 2),
                     fmt(entry.get("reported_rmse"), 2)])
    # Baselines per truth: runs with shocks score against a truth with jumps, so
    # persistence and climatology differ between the groups of runs.
    groups: dict[str, list[str]] = {}
    for name, entry in runs.items():
        if leads and entry.get("persistence_rmse_by_lead_hours"):
            key = json.dumps([entry["persistence_rmse_by_lead_hours"],
                              entry.get("climatology_rmse")], sort_keys=True)
            groups.setdefault(key, []).append(name)
    for key, names in groups.items():
        persistence, climatology = json.loads(key)
        label = ("persistence" if len(groups) == 1 else
                 "persistence, truth of " + ", ".join(f"`{n}`" for n in names))
        rows.append([f"{label} (climatology {fmt(climatology, 2)} K)", "—", "—",
                     *(fmt(persistence.get(h), 2) for h in leads), "—", "—"])
    skilled = next((e for e in runs.values() if e.get("persistence_rmse_by_lead_hours")), {})
    physical = results.get("coupled_sqg_ensf_physical")
    used = [summary]
    if physical is not None:
        used.append(physical)
        entry = physical.data.get("sqg_ensf")
        if isinstance(entry, dict):
            rows.append(["`sqg_ensf` with the ViT runs' EnSF settings", _rmse_cell(entry),
                         fmt(entry.get("mean_spread_analysis"), 3),
                         *("—" for _ in leads), "—", "—"])
    spinup = int(params.get("spinup_cycles", 0) or 0)
    over = (f"all {params.get('n_cycles')} cycles" if spinup == 0 else
            f"cycles {spinup + 1}–{params.get('n_cycles')}")
    skill = ("" if not leads else
             f"; forecasts from the analysis mean every {params.get('skill_every')} cycles, "
             f"against observations only ({fmt(skilled.get('obs_only_rmse'), 2)} K), "
             f"persistence and climatology")
    head = (f"Coupled ViT + EnSF on the `nature_truth` run, the shipped surrogate (stage "
            f"`ship_vit`), {params.get('n_members')} members, {params.get('n_cycles')} 12-h "
            f"cycles, SQG baselines {'with' if params.get('shocks', True) else 'without'} "
            f"shocks; means over "
            f"{over}{skill}, K{_quick_note(summary)}:")
    table = markdown_table(["run", "analysis RMSE", "analysis spread",
                            *(f"{float(h):g}-h forecast" for h in leads),
                            "ViT − SQG 12-h drift", "SC24 Fig. 4"], rows)
    return f"{head}\n\n{table}\n\n{source_line(*used)}"


@renderer("coupled_sparse")
def render_coupled_sparse(results: Results) -> str:
    """ViT + EnSF on a sparse network: analysis RMSE, forecast RMSE by lead, and the ViT's
    and SQG's 12-h forecasts of the same analyses (K).

    Parameters
    ----------
    results : mapping of str to Summary
        The loaded summaries, by stage name (:func:`~turbda_kit.report.summaries.load_results`).

    Returns
    -------
    str
        The block's markdown.
    """
    if "coupled_sparse" not in results:
        return _missing("Coupled ViT + EnSF on a sparse network", ["coupled_sparse"])
    summary = results["coupled_sparse"]
    params = _parameters(summary)
    runs = {k: v for k, v in summary.data.items() if isinstance(v, dict)}
    leads = sorted({h for e in runs.values() for h in (e.get("forecast_rmse_by_lead_hours")
                                                       or {})}, key=float)
    rows = []
    for name, entry in runs.items():
        by_lead = entry.get("forecast_rmse_by_lead_hours") or {}
        same = ("—" if "mean_rmse_forecast_surrogate" not in entry else
                f"{fmt(entry.get('mean_rmse_forecast_surrogate'), 2)} / "
                f"{fmt(entry.get('mean_rmse_forecast_physics'), 2)}")
        rows.append([f"`{name}`", _rmse_cell(entry), fmt(entry.get("mean_spread_analysis"), 3),
                     *(fmt(by_lead.get(h), 2) for h in leads), same])
    first = next(iter(runs.values()), {})
    persistence = first.get("persistence_rmse_by_lead_hours") or {}
    if persistence:
        rows.append(["persistence", "—", "—", *(fmt(persistence.get(h), 2) for h in leads),
                     "—"])
    spinup = int(params.get("spinup_cycles", 0) or 0)
    vit_changes = params.get("vit_ensf_settings") or {}
    vit_note = ("" if not vit_changes else "; the ViT's EnSF changed by " + ", ".join(
        f"`{k}={v}`" for k, v in sorted(vit_changes.items())))
    head = (f"ViT + EnSF on a sparse network (`{params.get('network_preset')}`: its "
            f"observations, errors and SQG filter settings{vit_note}) on the `nature_truth` "
            f"run, the shipped surrogate, {params.get('n_members')} members, "
            f"{params.get('n_cycles')} "
            f"12-h cycles from a warm start, means over cycles {spinup + 1}–"
            f"{params.get('n_cycles')}; forecasts from the analysis mean every "
            f"{params.get('skill_every')} cycles; climatology "
            f"{fmt(first.get('climatology_rmse'), 2)} K; K{_quick_note(summary)}:")
    table = markdown_table(["run", "analysis RMSE", "spread",
                            *(f"{float(h):g}-h forecast" for h in leads),
                            "12-h forecast of the same analyses: ViT / SQG"], rows)
    return f"{head}\n\n{table}\n\n{source_line(summary)}"


@renderer("l96_accuracy")
def render_l96_accuracy(results: Results) -> str:
    """Lorenz-96 EnSF accuracy in the EnSF paper's setting from its cold start.

    Parameters
    ----------
    results : mapping of str to Summary
        The loaded summaries, by stage name (:func:`~turbda_kit.report.summaries.load_results`).

    Returns
    -------
    str
        The block's markdown.
    """
    if "l96_accuracy" not in results:
        return _missing("Lorenz-96 EnSF accuracy", ["l96_accuracy"])
    summary = results["l96_accuracy"]
    d = summary.data
    paper = d.get("paper") or {}
    table = markdown_table(
        ["variables", "members", "Euler steps", "start", "cycles", "final analysis RMSE",
         "mean of the last 10", "paper"],
        [[f"{int(d['n']):,}", d.get("members"), d.get("euler_steps"), d.get("start", "—"),
          d.get("cycles"), fmt(d.get("final_rmse_analysis"), 3),
          fmt(d.get("mean_rmse_analysis_last_10"), 3),
          f"≈ {fmt(paper.get('rmse_analysis'), 2)} ({int(paper.get('n', 0)):,} variables, "
          f"{paper.get('cycles')} cycles)" if paper else "—"]])
    head = (f"Lorenz-96 EnSF (F = {d.get('forcing')}, arctan observations of every component "
            f"every {d.get('steps_per_cycle')} RK4 steps, σ = {d.get('obs_error_std')}, "
            f"{d.get('dtype')}, {d.get('threads')} thread){_quick_note(summary)}:")
    return f"{head}\n\n{table}\n\n{source_line(summary)}"


@renderer("vit_bundle")
def render_vit_bundle(results: Results) -> str:
    """The shipped ViT bundle's RMSE on its held-out states, against persistence (K).

    Parameters
    ----------
    results : mapping of str to Summary
        The loaded summaries, by stage name (:func:`~turbda_kit.report.summaries.load_results`).

    Returns
    -------
    str
        The block's markdown.
    """
    if "ship_vit" not in results:
        return _missing("Shipped ViT surrogate", ["ship_vit"])
    summary = results["ship_vit"]
    d = summary.data
    heldout = d.get("heldout") or {}
    scores = heldout.get("rmse_K") or {}
    leads = [k for k in scores if not k.startswith("persistence_")]
    leads.sort(key=float)
    weights = d.get("weights", "float32")
    rows = [[f"ViT `{d.get('name')}`, {weights} weights (shipped)",
             *(fmt(scores[k], 2) for k in leads)]]
    float32 = heldout.get("rmse_K_float32")
    if float32:
        rows.append(["the same ViT, float32 weights", *(fmt(float32.get(k), 2) for k in leads)])
    rows.append(["persistence", *(fmt(scores.get(f"persistence_{k}"), 2) for k in leads)])
    table = markdown_table(["lead", *(f"{float(k):g} h" for k in leads)], rows)
    head = (f"The shipped surrogate `{d.get('name')}` ({d.get('parameters'):,} parameters, "
            f"`turbda_kit/pretrained/{d.get('name')}`), RMSE on its {heldout.get('states')} "
            f"held-out test states (both levels, K){_quick_note(summary)}:")
    return f"{head}\n\n{table}\n\n{source_line(summary)}"


def _speed_rows(results: Results) -> tuple[list[list[str]], list[Summary]]:
    rows: list[list[str]] = []
    used: list[Summary] = []

    def add(what, ours, baseline, t_ours, t_base, speedup):
        rows.append([what, ours, baseline, t_ours, t_base, speedup])

    if "bench_models" in results:
        s = results["bench_models"]
        used.append(s)
        for row in s.data.get("rows", []):
            if row.get("side") != "kit":
                continue
            add(f"SQG {row['N']}² forecast, {row['members']} members, {row['steps']} steps",
                f"kit, {row['threads']} thread(s)", "sqgturb's algorithm in NumPy, 1 thread",
                f"{fmt(row['cpu_s'], 3)} s CPU",
                f"{fmt(row['cpu_s'] * row['speedup_cpu'], 3)} s CPU",
                f"{fmt(row['speedup_cpu'], 2)}× CPU, {fmt(row['speedup_wall'], 2)}× wall")
    if "bench_letkf" in results:
        s = results["bench_letkf"]
        used.append(s)
        sqg = s.data.get("sqg") or {}
        setting = sqg.get("setting") or {}
        numpy_cpu = sqg.get("numpy_per_point_s_cpu")
        for run in sqg.get("runs", []):
            what = (f"LETKF analysis, SQG {setting.get('n')}²×2, {setting.get('members')} "
                    f"members, {run.get('dtype')}, gram {run.get('gram')}")
            add(what, f"kit, {run['threads']} thread(s)", "its FLOP floor (GEMM rate, same run)",
                f"{fmt(run['analysis_s_cpu'], 4)} s CPU",
                f"{fmt(run['floor_s_cpu'], 4)} s CPU",
                f"{fmt(1 / run['ratio_to_floor_cpu'], 2)}× (1 = at the floor)")
            if numpy_cpu:
                add(what, f"kit, {run['threads']} thread(s)",
                    "per-point NumPy loop, 1 thread (extrapolated)",
                    f"{fmt(run['analysis_s_cpu'], 3)} s CPU", f"{fmt(numpy_cpu, 2)} s CPU",
                    f"{fmt(numpy_cpu / run['analysis_s_cpu'], 1)}× CPU")
        l96 = s.data.get("lorenz96_vs_dapper")
        if isinstance(l96, dict) and "skipped" in l96:
            add("LETKF cycle, Lorenz-96 `sakov2008`", "kit, 1 thread", "DAPPER, 1 thread",
                "—", "—", f"skipped: {l96['skipped']}")
        elif isinstance(l96, dict):
            kit, dapper = l96.get("kit_da", {}), l96.get("dapper_da", {})
            add("LETKF cycle (forecast + analysis), Lorenz-96 `sakov2008`", "kit, 1 thread",
                f"DAPPER {l96.get('dapper_version')}, 1 thread",
                f"{fmt(kit.get('cpu_per_cycle', 0) * 1e3, 2)} ms CPU",
                f"{fmt(dapper.get('cpu_per_cycle', 0) * 1e3, 2)} ms CPU",
                f"{fmt(l96.get('ratio_da_cpu'), 1)}× CPU, {fmt(l96.get('ratio_da_wall'), 1)}× wall")
    if "bench_vit" in results:
        s = results["bench_vit"]
        used.append(s)
        for run in s.data.get("runs", []):
            sides = run.get("sides") or {}
            seed = sides.get("seed")
            for name in ("kit_onednn", "kit"):
                if name in sides and seed:
                    kit = sides[name]
                    add(f"ViT training step, batch {s.data.get('batch')}, fp32",
                        f"`{name}`, {run['threads']} thread(s)",
                        f"paper code's model (`seed`), {run['threads']} thread(s)",
                        f"{fmt(kit['samples_per_cpu_s'], 1)} samples/CPU-s",
                        f"{fmt(seed['samples_per_cpu_s'], 1)} samples/CPU-s",
                        f"{fmt(kit['samples_per_cpu_s'] / seed['samples_per_cpu_s'], 2)}× CPU, "
                        f"{fmt(kit['samples_per_s'] / seed['samples_per_s'], 2)}× wall")
                    break
    if "bench_preprocess" in results:
        s = results["bench_preprocess"]
        used.append(s)
        d = s.data
        for run in d.get("runs", []):
            add(f"preprocessing, {fmt(d['nature_run_mb'], 0)} MB {d['grid']}² nature run "
                f"({run['mode']})", f"kit, {run['ranks']} rank(s) × 1 thread",
                "a copy of the same bytes (`shutil.copyfile`)",
                f"{fmt(run['wall_s'], 2)} s ({fmt(run['mb_s'], 0)} MB/s)",
                f"{fmt(d['copy_s'], 2)} s", f"{fmt(run['vs_ideal'], 2)}× (1 = copy speed)")
    for stage in ("bench_ensf", "bench_ensf_2threads"):   # one core, then two
        if stage not in results:
            continue
        s = results[stage]
        used.append(s)
        d = s.data
        what = (f"EnSF analysis, {int(d['n']):,} variables × {d['members']} members × "
                f"{d['steps']} Euler steps, arctan")
        add(what, f"kit, {d['kit_threads']} thread(s)",
            f"the seed's update (`benchmarks/seed_ensf.py`), {d['seed_threads']} thread(s)",
            f"{fmt(d['kit_s'], 2)} s wall, {fmt(d['kit_cpu_s'], 2)} s CPU",
            f"{fmt(d['seed_s'], 2)} s wall, {fmt(d['seed_cpu_s'], 2)} s CPU",
            f"{fmt(d['speedup'], 1)}× wall, {fmt(d['speedup_cpu'], 1)}× CPU")
        add(what, f"kit, {d['kit_threads']} thread(s)",
            f"copy bandwidth `y.copy_(x)` (same run, {fmt(d['copy_GBps'], 1)} GB/s)",
            f"{fmt(d['kit_GBps'], 1)} GB/s streamed", f"{fmt(d['copy_GBps'], 1)} GB/s",
            f"{fmt(d['fraction_of_copy'], 2)} of copy bandwidth")
    return rows, used


_BENCH_STAGES = ("bench_models", "bench_letkf", "bench_vit", "bench_preprocess", "bench_ensf",
                 "bench_ensf_2threads")


@renderer("benchmarks")
def render_benchmarks(results: Results) -> str:
    """Speed of each benchmark against its baseline, with the threads of each side.

    Parameters
    ----------
    results : mapping of str to Summary
        The loaded summaries, by stage name (:func:`~turbda_kit.report.summaries.load_results`).

    Returns
    -------
    str
        The block's markdown.
    """
    rows, used = _speed_rows(results)
    if not used:
        return _missing("Benchmarks", _BENCH_STAGES)
    missing = [s for s in _BENCH_STAGES if s not in results]
    head = ("Speed against each baseline, measured in the same run (CPU time is the "
            f"like-for-like figure on a shared machine){_quick_note(*used)}:")
    table = markdown_table(["what", "ours", "baseline", "ours: time", "baseline: time",
                            "speed-up"], rows)
    extra = (f"\n\nStill to run: {', '.join(f'`{s}`' for s in missing)} ({NOT_YET})"
             if missing else "")
    return f"{head}\n\n{table}{extra}\n\n{source_line(*used)}"


def _study_rows(study: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for point in study.get("points", []):
        rows.append([point.get("ranks"), f"{int(point.get('n_global', 0)):,}",
                     fmt(point.get("time_per_cycle_s"), 3), fmt(point.get("efficiency"), 2),
                     fmt(point.get("efficiency_cpu"), 2), fmt(point.get("cpu_utilisation"), 2)])
    return rows


@renderer("scaling")
def render_scaling(results: Results) -> str:
    """EnSF (Lorenz-96) weak and strong scaling: efficiency beside CPU utilisation.

    Parameters
    ----------
    results : mapping of str to Summary
        The loaded summaries, by stage name (:func:`~turbda_kit.report.summaries.load_results`).

    Returns
    -------
    str
        The block's markdown.
    """
    stages = ("scaling_weak", "scaling_strong")
    present = [results[s] for s in stages if s in results]
    if not present:
        return _missing("EnSF scaling", stages)
    parts = []
    for stage in stages:
        if stage not in results:
            parts.append(f"{stage.split('_')[1]} scaling: {NOT_YET}")
            continue
        for mode, study in (results[stage].data.get("studies") or {}).items():
            settings = study.get("settings") or {}
            machine = study.get("machine") or {}
            prefetch = settings.get("prefetch_noise")
            prefetch_text = ("off" if prefetch is False else
                             "on, counted as a core" if prefetch else "unknown")
            parts.append(
                f"**{mode}** scaling ({settings.get('n_members')} members, "
                f"{settings.get('euler_steps')} Euler steps, {settings.get('threads_per_rank')} "
                f"torch thread(s) per rank, noise prefetch {prefetch_text}, "
                f"{settings.get('cores_per_rank')} core(s) per rank; "
                f"{machine.get('cpu_count')} CPUs, load average "
                f"{fmt(machine.get('load_average_before'), 1)} before the launch):\n\n"
                + markdown_table(["ranks", "ring size", "time per cycle (s)", "efficiency",
                                  "efficiency (CPU time)", "CPU utilisation"],
                                 _study_rows(study)))
    head = ("EnSF on Lorenz-96 across MPI ranks; efficiency is T(1)/T(p) (weak) or "
            "T(1)/(p T(p)) (strong); CPU utilisation is CPU time / (wall × ranks × cores per "
            f"rank){_quick_note(*present)}.")
    return head + "\n\n" + "\n\n".join(parts) + f"\n\n{source_line(*present)}"


_FILTER_LABELS = {"free": "SQG free", "letkf": "LETKF", "ensf": "EnSF",
                  "ensf_twostage": "two-stage EnSF", "ensf_spectral": "spectral EnSF",
                  "ensf_local": "local EnSF"}


def _network_text(row: Mapping[str, Any]) -> str:
    """A table row's network in words: its own description, else its preset's."""
    if row.get("network_description"):
        return str(row["network_description"])
    from ..experiments.presets import PRESETS

    preset = PRESETS.get(str(row.get("preset", "")))
    if preset is not None and str(row.get("network")) == repr(preset.network):
        return "every point" if preset.network is None else preset.network.describe()
    return str(row.get("network", "—"))


_TRUTH_BASELINES = ("climatology_rmse", "obs_only_rmse", "persistence_rmse_by_lead_hours")


def _truth_differs(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two rows' truth-only baselines (where both have them) differ."""
    return any(a[key] != b[key] for key in _TRUTH_BASELINES if key in a and key in b)


@renderer("da_sparse")
def render_da_sparse(results: Results) -> str:
    """Dense and sparse networks: analysis RMSE, forecast RMSE by lead and the baselines (K).

    Parameters
    ----------
    results : mapping of str to Summary
        The loaded summaries, by stage name (:func:`~turbda_kit.report.summaries.load_results`).

    Returns
    -------
    str
        The block's markdown: one row per preset and filter (a preset's rows together,
        in stage order), then one row of baselines per preset (observations only where
        every point is observed, climatology, persistence, free run). Stages that ran the
        same preset must have scored the same truth: where their baselines differ the block
        says so.
    """
    present = [results[s] for s in _DA_TABLE_STAGES if s in results]
    if not present:
        return _missing("Sparse networks and forecast skill", _DA_TABLE_STAGES)
    summary = present[0]
    run = summary.data.get("run") or {}
    leads = [f"{float(h):g}" for h in run.get("forecast_leads_hours", [])]
    rows, baselines, order, mismatched = [], {}, {}, []
    for row in (r for p in present for r in p.data.get("rows", [])):
        preset, name = row.get("preset"), row.get("filter")
        order.setdefault(preset, len(order))
        by_lead = row.get("forecast_rmse_by_lead_hours") or {}
        analysis = fmt(row.get("analysis_rmse"), 3)
        if row.get("diverged"):
            cycle = row.get("diverged_at_cycle")
            analysis = "diverged" + (f" at cycle {cycle}" if cycle is not None else "")
        rows.append((order[preset], len(rows), [
            f"`{preset}`", _network_text(row), _FILTER_LABELS.get(name, name), analysis,
            fmt(row.get("analysis_spread"), 3),
            *(fmt(by_lead.get(h, by_lead.get(f"{h}.0")), 2) for h in leads)]))
        first = baselines.setdefault(preset, row.get("baselines") or {})
        if _truth_differs(first, row.get("baselines") or {}) and preset not in mismatched:
            mismatched.append(preset)
    # a preset's rows together (rows of later stages join their preset's), stage order kept
    rows = [cells for *_, cells in sorted(rows, key=lambda r: r[:2])]
    base_rows = []
    for preset, b in baselines.items():
        persistence = b.get("persistence_rmse_by_lead_hours") or {}
        free = b.get("free_run_forecast_rmse_by_lead_hours") or {}
        base_rows.append([f"`{preset}`", fmt(b.get("obs_only_rmse"), 3),
                          fmt(b.get("climatology_rmse"), 3),
                          *(f"{fmt(persistence.get(h), 2)} / {fmt(free.get(h), 2)}"
                            for h in leads)])
    head = (f"Dense and sparse observation networks on {run.get('model', 'SQG')}, "
            f"{run.get('n_members')} members, {run.get('n_cycles')} cycles; analysis RMSE and "
            f"spread are means over the last {run.get('scored_cycles')} (start: "
            f"{run.get('start', '—')}); forecasts of {', '.join(leads)} h from the analysis "
            f"mean every {run.get('forecast_launch_every_cycles')} cycles; K"
            f"{_quick_note(*present)}:")
    table = markdown_table(["preset", "network", "filter", "analysis RMSE", "spread",
                            *(f"{h}-h forecast" for h in leads)], rows)
    base = markdown_table(["preset", "observations only", "climatology",
                           *(f"{h} h: persistence / free run" for h in leads)], base_rows)
    missing = [s for s in _DA_TABLE_STAGES if s not in results]
    note = (f"\n\nNot yet generated: {', '.join(f'`results/{s}.json`' for s in missing)}."
            if missing else "")
    if mismatched:
        note += ("\n\n**Warning: stages scored different truths for "
                 f"{', '.join(f'`{p}`' for p in mismatched)}** (their climatology, persistence "
                 "or observations-only scores differ): those rows are not comparable.")
    return (f"{head}\n\n{table}\n\nBaselines (K; observations only is shown where every "
            f"point is observed):\n\n{base}{note}\n\n{source_line(*present)}")
