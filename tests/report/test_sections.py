"""The README's result blocks: rendered from the paper pipeline's summaries, checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from turbda_kit.report import NOT_YET, RENDERERS, SECTIONS
from turbda_kit.report.cli import main
from turbda_kit.report.readme import check_readme, render_readme
from turbda_kit.report.summaries import load_results, write_summary
from turbda_kit.workflow.pipelines import PIPELINES

REPO = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"<!-- results:([A-Za-z0-9_.-]+) -->")


def _da(reported=None, diverged=False):
    entry = {"mean_rmse_analysis": 0.5, "mean_spread_analysis": 0.4, "reported_rmse": reported,
             "wall_seconds": 1.0}
    letkf = {"diverged_at_cycle": 39, "message": "CFL"} if diverged else dict(entry)
    return {"free": {**entry, "mean_rmse_analysis": 9.4}, "letkf": letkf,
            "ensf": {**entry, "mean_rmse_analysis": 1.25}}


def _scaling(mode):
    return {"kind": "turbda_kit.scaling_summary/1", "studies": {mode: {
        "settings": {"n_members": 20, "euler_steps": 100, "threads_per_rank": 1,
                     "cores_per_rank": 1, "prefetch_noise": False},
        "machine": {"cpu_count": 2, "load_average_before": 0.5},
        "points": [{"ranks": 1, "n_global": 1024, "time_per_cycle_s": 1.0, "efficiency": 1.0,
                    "efficiency_cpu": 1.0, "cpu_utilisation": 0.99},
                   {"ranks": 2, "n_global": 2048, "time_per_cycle_s": 1.1, "efficiency": 0.91,
                    "efficiency_cpu": 0.9, "cpu_utilisation": 0.97}]}}}


STAGE_DATA = {
    "da_linear": (_da(), {"preset": "bao2024_sqg_linear", "n_cycles": 300,
                          "spinup_cycles": 100, "n_members": 20}),
    "da_shocks": (_da(reported=5.4), {"preset": "yin2024_sqg_shocks", "n_cycles": 300,
                                      "spinup_cycles": 100, "n_members": 20}),
    "da_arctan": (_da(diverged=True), {"preset": "bao2024_sqg_arctan", "n_cycles": 300,
                                       "spinup_cycles": 100, "n_members": 20}),
    "da_sparse_cv": ({"table_version": 1, "run": {
        "model": "SQG 64x64x2, 12-h cycles", "n_members": 20, "n_cycles": 80,
        "scored_cycles": 60, "start": "warm", "forecast_leads_hours": [12.0, 24.0],
        "forecast_launch_every_cycles": 5},
        "rows": [{"preset": "sqgturb_lgetkf_cv", "filter": "ensf_twostage", "diverged": False,
                  "analysis_rmse": 0.678, "analysis_spread": 0.5,
                  "forecast_rmse_by_lead_hours": {"12": 0.91, "24": 1.33},
                  "network": "1024 random points", "baselines": {
                      "obs_only_rmse": None, "climatology_rmse": 11.0,
                      "persistence_rmse_by_lead_hours": {"12": 6.0, "24": 8.0},
                      "free_run_forecast_rmse_by_lead_hours": {"12": 9.0, "24": 9.1}}},
                 {"preset": "sqgturb_lgetkf_cv", "filter": "letkf", "diverged": True}]}, {}),
    "coupled": ({"vit_ensf": {"mean_rmse_analysis": 0.97, "mean_spread_analysis": 0.6,
                              "reported_rmse": 1.27, "wall_seconds": 1.0,
                              "mean_surrogate_drift": 3.1},
                 "sqg_free": {"mean_rmse_analysis": 9.28, "mean_spread_analysis": 9.0,
                              "reported_rmse": 9.6, "wall_seconds": 1.0}},
                {"n_cycles": 300, "spinup_cycles": 0, "n_members": 20, "shocks": True}),
    "coupled_sqg_ensf_physical": ({"sqg_ensf": {"mean_rmse_analysis": 0.95,
                                                "mean_spread_analysis": 0.7,
                                                "reported_rmse": 1.05, "wall_seconds": 1.0}},
                                  {"n_cycles": 300, "spinup_cycles": 0, "n_members": 20}),
    "coupled_sparse": ({"vit_ensf_twostage": {
        "mean_rmse_analysis": 2.1, "mean_spread_analysis": 0.6, "reported_rmse": None,
        "wall_seconds": 1.0, "mean_surrogate_drift": 3.1, "mean_rmse_forecast_surrogate": 3.4,
        "mean_rmse_forecast_physics": 2.2, "forecast_rmse_by_lead_hours": {"12": 3.5, "24": 4.9},
        "persistence_rmse_by_lead_hours": {"12": 5.4, "24": 7.7}, "climatology_rmse": 11.2},
        "sqg_letkf": {"mean_rmse_analysis": 1.02, "mean_spread_analysis": 0.9,
                      "reported_rmse": None, "wall_seconds": 1.0,
                      "forecast_rmse_by_lead_hours": {"12": 1.2, "24": 1.6}}},
        {"network_preset": "sqgturb_lgetkf_cv", "n_cycles": 300, "spinup_cycles": 100,
         "n_members": 20, "skill_every": 10}),
    "l96_accuracy": ({"n": 1000000, "members": 20, "euler_steps": 500, "cycles": 150,
                      "steps_per_cycle": 10, "forcing": 8.0, "obs_error_std": 0.05,
                      "dtype": "float32", "threads": 1, "start": "cold: N(0, I)",
                      "final_rmse_analysis": 0.203, "mean_rmse_analysis_last_10": 0.21,
                      "paper": {"rmse_analysis": 0.2, "n": 1000000, "cycles": 150}}, {}),
    "ship_vit": ({"name": "sqg_64_cpu", "parameters": 1300000, "weights": "int8", "heldout": {
        "states": 12, "rmse_K": {"12": 3.8, "24": 4.4, "persistence_12": 6.3,
                                 "persistence_24": 8.3},
        "rmse_K_float32": {"12": 3.79, "24": 4.45}}}, {}),
    "bench_models": ({"rows": [{"N": 64, "steps": 3, "members": 20, "side": "kit",
                                "threads": 1, "wall_s": 0.5, "cpu_s": 0.5,
                                "speedup_wall": 2.2, "speedup_cpu": 2.2},
                               {"N": 64, "steps": 3, "members": 20, "side": "sqgturb",
                                "threads": 1, "wall_s": 1.1, "cpu_s": 1.1,
                                "speedup_wall": 1.0, "speedup_cpu": 1.0}]}, {}),
    "bench_letkf": ({"sqg": {"setting": {"n": 64, "members": 20}, "numpy_per_point_s_cpu": 5.0,
                             "runs": [{"threads": 1, "dtype": "float32", "gram": "auto",
                                       "analysis_s_cpu": 0.15, "floor_s_cpu": 0.08,
                                       "ratio_to_floor_cpu": 1.9}]},
                     "lorenz96_vs_dapper": {"skipped": "no DAPPER environment"}}, {}),
    "bench_vit": ({"batch": 8, "runs": [{"threads": 1, "sides": {
        "seed": {"samples_per_cpu_s": 20.0, "samples_per_s": 20.0},
        "kit_onednn": {"samples_per_cpu_s": 30.0, "samples_per_s": 30.0}}}]}, {}),
    "bench_preprocess": ({"nature_run_mb": 1000.0, "grid": 256, "copy_s": 0.22,
                          "runs": [{"mode": "direct", "ranks": 1, "wall_s": 0.49,
                                    "mb_s": 2054.0, "vs_ideal": 0.45}]}, {}),
    "bench_ensf": ({"n": 1000000, "members": 20, "steps": 100, "threads": 1,
                    "seed_threads": 1, "kit_threads": 1, "seed_s": 160.0, "kit_s": 4.0,
                    "speedup": 40.0, "seed_cpu_s": 110.0, "kit_cpu_s": 3.2,
                    "speedup_cpu": 34.4, "copy_GBps": 14.7, "kit_GBps": 6.6,
                    "fraction_of_copy": 0.45}, {}),
    "bench_ensf_2threads": ({"n": 1000000, "members": 20, "steps": 100, "threads": 2,
                             "seed_threads": 2, "kit_threads": 2, "seed_s": 150.0,
                             "kit_s": 5.0, "speedup": 30.0, "seed_cpu_s": 116.0,
                             "kit_cpu_s": 3.4, "speedup_cpu": 34.1, "copy_GBps": 20.1,
                             "kit_GBps": 4.6, "fraction_of_copy": 0.23}, {}),
    "scaling_weak": (_scaling("weak"), {}),
    "scaling_strong": (_scaling("strong"), {}),
}


def _da_table(preset: str, rmse: float):
    data = {"table_version": 1, "run": STAGE_DATA["da_sparse_cv"][0]["run"],
            "rows": [{"preset": preset, "filter": "letkf", "diverged": False,
                      "analysis_rmse": rmse, "analysis_spread": 0.3, "network": "every point",
                      "forecast_rmse_by_lead_hours": {"12": 0.5, "24": 0.8}, "baselines": {
                          "obs_only_rmse": 1.0, "climatology_rmse": 11.0}}]}
    return data, {}


STAGE_DATA["da_sparse_linear"] = _da_table("bao2024_sqg_linear", 0.234)
STAGE_DATA["da_sparse_mixed"] = _da_table("bao2024_sqg_sparse_mixed", 7.8)
STAGE_DATA["da_skill_shocks"] = _da_table("yin2024_sqg_shocks", 1.5)
STAGE_DATA["da_skill_arctan"] = _da_table("bao2024_sqg_arctan", 1.4)
STAGE_DATA["da_local_dense"] = _da_table("bao2024_sqg_linear", 0.25)
STAGE_DATA["da_local_dense"][0]["rows"][0]["filter"] = "ensf_local"
STAGE_DATA["da_local_sparse"] = _da_table("bao2024_sqg_sparse_mixed", 3.1)
STAGE_DATA["da_local_sparse"][0]["rows"][0]["filter"] = "ensf_local"


def _results(folder: Path, stages=STAGE_DATA) -> Path:
    for stage in stages:
        data, params = STAGE_DATA[stage]
        write_summary(folder / f"{stage}.json", data,
                      command=f"turbda pipeline paper (stage {stage})",
                      provenance={"stage": stage, "quick": False, "stage_parameters": params})
    return folder


def _readme(path: Path) -> Path:
    path.write_text("".join(f"# {name}\n<!-- results:{name} -->\n<!-- /results:{name} -->\n"
                            for name in SECTIONS))
    return path


def test_committed_readme_matches_its_summaries():
    """`turbda report check` passes on the committed README and results/."""
    readme = REPO / "README.md"
    assert check_readme(readme, REPO / "results") == []
    assert main(["check", "--readme", str(readme), "--results", str(REPO / "results")]) == 0
    blocks = _BLOCK.findall(readme.read_text())
    assert set(SECTIONS) <= set(blocks) and set(blocks) <= set(RENDERERS)


def test_blocks_without_summaries_say_so_instead_of_a_number():
    for name in SECTIONS:
        text = RENDERERS[name]({})
        assert NOT_YET in text and "turbda pipeline paper" in text, name


def test_blocks_render_the_summaries_and_check_catches_a_changed_number(tmp_path):
    results = _results(tmp_path / "results")
    readme = _readme(tmp_path / "README.md")
    assert main(["render", "--readme", str(readme), "--results", str(results)]) == 0
    text = readme.read_text()
    assert NOT_YET not in text
    # every block names the command and the summary its numbers come from
    for stage in STAGE_DATA:
        assert f"`turbda pipeline paper (stage {stage})` → `results/{stage}.json`" in text
    for expected in ("| `bao2024_sqg_arctan` | 9.400 | diverged at cycle 39 | 1.250 | — |",
                     "LETKF 5.40", "over cycles 101–300", "| `vit_ensf` | 0.970 |",
                     "all 300 cycles", "| `sqg_ensf` with the ViT runs' EnSF settings | 0.950 |", "cold: N(0, I)", "0.203", "| ViT `sqg_64_cpu`, int8 weights (shipped) | 3.80 | 4.40 |",
                     "| the same ViT, float32 weights | 3.79 | 4.45 |",
                     "| persistence | 6.30 | 8.30 |", "kit, 1 thread(s)",
                     "sqgturb's algorithm in NumPy, 1 thread", "2.20× CPU",
                     "skipped: no DAPPER environment", "1.50× CPU", "40.0× wall, 34.4× CPU",
                     "0.45 of copy bandwidth", "kit, 2 thread(s)", "30.0× wall, 34.1× CPU", "noise prefetch off",
                     "| 2 | 2,048 | 1.100 | 0.91 | 0.90 | 0.97 |",
                     "| `sqgturb_lgetkf_cv` | 1024 random points | two-stage EnSF | 0.678 | 0.500 "
                     "| 0.91 | 1.33 |", "| LETKF | diverged |", "| 6.00 / 9.00 | 8.00 / 9.10 |",
                     "| `bao2024_sqg_linear` | every point | LETKF | 0.234 |",
                     "| `vit_ensf_twostage` | 2.100 | 0.600 | 3.50 | 4.90 | 3.40 / 2.20 |",
                     "| persistence | — | — | 5.40 | 7.70 | — |", "`sqgturb_lgetkf_cv`: its"):
        assert expected in text, expected
    assert check_readme(readme, results) == []
    assert main(["check", "--readme", str(readme)]) == 0   # results/ beside the README
    readme.write_text(text.replace("| 1.250 |", "| 1.240 |"))
    assert main(["check", "--readme", str(readme), "--results", str(results)]) == 1
    problems = check_readme(readme, results)
    assert len(problems) == 1 and "-| `bao2024_sqg_arctan` | 9.400" in problems[0]


def test_partial_results_name_what_is_missing(tmp_path):
    results = load_results(_results(tmp_path, ["da_linear", "bench_models", "scaling_weak"]))
    text = render_readme(_readme(tmp_path / "README.md").read_text(), results)
    assert "| (stage `da_shocks`) | " + NOT_YET in text
    assert "Still to run: `bench_letkf`, `bench_vit`, `bench_preprocess`, `bench_ensf`" in text
    assert "strong scaling: " + NOT_YET in text
    results = load_results(_results(tmp_path / "r2", ["da_sparse_cv"]))
    text = RENDERERS["da_sparse"](results)
    assert ("Not yet generated: `results/da_sparse_linear.json`, `results/da_sparse_mixed.json`, "
            "`results/da_skill_shocks.json`, `results/da_skill_arctan.json`") in text


def test_later_stages_rows_join_their_preset_and_other_truths_are_flagged(tmp_path):
    stages = ["da_sparse_linear", "da_sparse_mixed", "da_local_dense"]
    text = RENDERERS["da_sparse"](load_results(_results(tmp_path, stages)))
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert [line.split("|")[3].strip() for line in lines[:3]] == ["LETKF", "local EnSF",
                                                                  "LETKF"], lines
    assert "different truths" not in text
    data, params = STAGE_DATA["da_local_dense"]
    other = {**data, "rows": [{**data["rows"][0], "baselines": {"climatology_rmse": 10.0}}]}
    write_summary(tmp_path / "r2" / "da_local_dense.json", other, command="turbda pipeline paper",
                  provenance={"stage_parameters": params})
    _results(tmp_path / "r2", ["da_sparse_linear"])
    text = RENDERERS["da_sparse"](load_results(tmp_path / "r2"))
    assert "stages scored different truths for `bao2024_sqg_linear`" in text


def test_quick_results_are_marked_as_checks(tmp_path):
    data, params = STAGE_DATA["coupled"]
    write_summary(tmp_path / "coupled.json", data, command="turbda pipeline paper --quick",
                  provenance={"quick": True, "stage_parameters": params})
    assert "not a result" in RENDERERS["coupled"](load_results(tmp_path))


def test_coupled_block_shows_forecast_skill_when_scored(tmp_path):
    data, params = STAGE_DATA["coupled"]
    skill = {"forecast_rmse_by_lead_hours": {"12": 1.5, "24": 2.5},
             "persistence_rmse_by_lead_hours": {"12": 6.0, "24": 8.0},
             "climatology_rmse": 9.1, "obs_only_rmse": 1.0}
    scored = {name: {**entry, **skill} for name, entry in data.items()}
    write_summary(tmp_path / "coupled.json", scored, command="turbda pipeline paper",
                  provenance={"quick": False,
                              "stage_parameters": {**params, "skill_every": 10}})
    text = RENDERERS["coupled"](load_results(tmp_path))
    assert "| run | analysis RMSE | analysis spread | 12-h forecast | 24-h forecast |" in text
    assert "| `vit_ensf` | 0.970 | 0.600 | 1.50 | 2.50 | 3.10 | 1.27 |" in text
    assert "| persistence (climatology 9.10 K) | — | — | 6.00 | 8.00 | — | — |" in text
    assert "every 10 cycles, against observations only (1.00 K), persistence" in text
    # runs on a truth with jumps have their own baselines: one row per truth
    scored["sqg_free"] = {**scored["sqg_free"], "climatology_rmse": 9.3,
                          "persistence_rmse_by_lead_hours": {"12": 7.0, "24": 9.0}}
    write_summary(tmp_path / "coupled.json", scored, command="turbda pipeline paper",
                  provenance={"quick": False,
                              "stage_parameters": {**params, "skill_every": 10}})
    text = RENDERERS["coupled"](load_results(tmp_path))
    assert ("| persistence, truth of `vit_ensf` (climatology 9.10 K) | — | — | 6.00 | 8.00 |"
            in text)
    assert ("| persistence, truth of `sqg_free` (climatology 9.30 K) | — | — | 7.00 | 9.00 |"
            in text)
    # without scored forecasts: no forecast columns
    write_summary(tmp_path / "coupled.json", data, command="turbda pipeline paper",
                  provenance={"quick": False, "stage_parameters": params})
    assert "forecast" not in RENDERERS["coupled"](load_results(tmp_path)).split("\n\n")[1]


def test_sparse_coupled_block_names_the_vits_ensf_changes(tmp_path):
    data, params = STAGE_DATA["coupled_sparse"]
    write_summary(tmp_path / "coupled_sparse.json", data, command="turbda pipeline paper",
                  provenance={"quick": False, "stage_parameters": params})
    assert "changed by" not in RENDERERS["coupled_sparse"](load_results(tmp_path))
    changed = {**params, "vit_ensf_settings": {"normalize": True, "likelihood_weight": 10.0}}
    write_summary(tmp_path / "coupled_sparse.json", data, command="turbda pipeline paper",
                  provenance={"quick": False, "stage_parameters": changed})
    text = RENDERERS["coupled_sparse"](load_results(tmp_path))
    assert ("SQG filter settings; the ViT's EnSF changed by `likelihood_weight=10.0`, "
            "`normalize=True`)") in text


def test_paper_pipeline_collects_every_result_stage():
    """The collect stage gathers every stage a README block reads, each stage it names
    exists and comes earlier, and the figures read the stages they follow."""
    pipeline = PIPELINES["paper"]
    names = [s.name for s in pipeline.stages]
    assert names[:7] == ["nature_train", "nature_truth", "preprocess", "vit_k1", "vit_k4",
                         "vit_k8", "ship_vit"]
    assert names[-1] == "collect"
    collect = pipeline.stages[-1]
    pairs = dict(w.split("=", 1) for w in collect.command if "=" in w)
    assert set(pairs) == set(STAGE_DATA) and set(pairs) <= set(names)
    for stage in pipeline.stages:
        assert stage.quick or stage.name.startswith("fig_"), f"{stage.name} has no quick size"
        assert stage.estimate(quick=True) <= stage.estimate()


@pytest.mark.parametrize("stage", ["scaling_weak", "scaling_strong"])
def test_scaling_stages_write_what_the_figure_reads(stage):
    """bench_ensf_scaling.py names its Datasets scaling_<mode>.nc, fig_ensf_scaling's names."""
    source = (REPO / "benchmarks" / "bench_ensf_scaling.py").read_text()
    assert 'out / f"scaling_{what}.nc"' in source
    figure = next(s for s in PIPELINES["paper"].stages if s.name == "fig_ensf_scaling")
    assert f"{{stage:{stage}}}" in figure.parameters["run_dirs"]
