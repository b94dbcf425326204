"""Figure inputs (turbda_kit.experiments.results) and plot builders (turbda_kit.viz.plots).

The result files are made by the real writers where that is cheap: cycling Datasets by
:func:`run_cycling` on a toy model, scaling Datasets by :func:`run_scaling` (one rank);
training metrics in the trainer's file layout (the real trainer is a slow test).
The helpers ``make_*`` are also used by ``test_figures.py``.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from turbda_kit import metrics
from turbda_kit.errors import InputError
from turbda_kit.experiments.cycling import CyclingConfig, run_cycling
from turbda_kit.experiments.results import (
    as_json,
    default_run_dirs,
    find_runs,
    find_scaling,
    find_training_runs,
    grid_km,
    load_runs,
    rank_histogram_summary,
    resolve_input_path,
    search_dirs,
    select_cycles,
    spread_skill_summary,
    throughput_table,
)
from turbda_kit.experiments.truth import ArrayTruth
from turbda_kit.filters import as_filter
from turbda_kit.io import write_dataset, write_json
from turbda_kit.obs.operators import Identity
from turbda_kit.viz import plots

GRID = (2, 8, 8)
TWELVE_HOURS = 43200.0


# ---------------------------------------------------------------------------------------
# Result makers (shared with test_figures.py)


class ToyModel:
    """A damped, drifting field: enough dynamics for forecast errors to grow in K."""

    state_shape = GRID
    dt = TWELVE_HOURS
    time_unit_seconds = 1.0

    def step(self, state: torch.Tensor) -> torch.Tensor:
        return self.advance(state, 1)

    def advance(self, state: torch.Tensor, n_steps: int) -> torch.Tensor:
        for _ in range(n_steps):
            state = 0.97 * torch.roll(state, shifts=1, dims=-1) + 0.3
        return state


def _nudging(weight: float):
    def analysis(forecast, obs, operator, obs_error_std, generator):
        noise = torch.empty_like(forecast).normal_(generator=generator)
        target = obs.reshape(forecast.shape[1:])
        return (1 - weight) * forecast + weight * target + 0.3 * noise

    return as_filter(analysis, "nudging")


def make_run(name: str, weight: float | None, n_cycles: int = 5, save_means: bool = True,
             seed: int = 0, attrs: dict | None = None):
    """A cycling-engine Dataset on the toy model (``weight=None``: no filter)."""
    gen = torch.Generator().manual_seed(123)
    x = torch.linspace(0, 2 * math.pi, GRID[-1] + 1)[:-1]
    base = 10 * torch.sin(x)[None, :] * torch.cos(x)[:, None]
    trajectory = torch.stack([torch.stack([base, 0.5 * base]).roll(k, dims=-1)
                              + 0.2 * torch.randn(GRID, generator=gen)
                              for k in range(n_cycles + 1)])
    truth = ArrayTruth(trajectory)
    initial = truth.state(0) + 2.0 * torch.randn((6, *GRID), generator=gen)
    config = CyclingConfig(n_cycles=n_cycles, steps_per_cycle=1, obs_error_std=1.0,
                           spinup_cycles=1, seed=seed, save_means=save_means)
    return run_cycling(ToyModel(), None if weight is None else _nudging(weight),
                       Identity(GRID), truth, initial, config, name=name,
                       attrs=attrs or {}, show_progress=False)


def make_cycling_dirs(root: Path) -> dict[str, Path]:
    """A pipeline-like tree: a 06-style run dir (coupled_*) and a 05-style one (cycling_*)."""
    coupled = root / "06_coupled_vit_ensf"
    cycling = root / "05_da_cycling"
    files = {
        "vit_ensf": write_dataset(make_run("vit_ensf", 0.7), coupled / "coupled_vit_ensf.nc"),
        "sqg_letkf": write_dataset(make_run("sqg_letkf", 0.4), coupled / "coupled_sqg_letkf.nc"),
        "vit_only": write_dataset(make_run("vit_only", None), coupled / "coupled_vit_only.nc"),
        "letkf": write_dataset(make_run("letkf", 0.5, attrs={
            "model": "sqg", "model_settings": str({"N": 8, "L": 2.0e7, "H": 1.0e4})}),
            cycling / "cycling_letkf.nc"),
    }
    return files


def make_scaling_dirs(root: Path) -> list[Path]:
    """Two 'jobs' of a strong-scaling study (1 and 2 ranks) and one weak one.

    The one-rank job is a real :func:`run_scaling`; the two-rank job is the same Dataset
    relabelled with 0.6x the times (this machine cannot time two ranks in a unit test).
    """
    from turbda_kit.experiments.scaling import ScalingStudy, run_scaling, summarize

    one = run_scaling(ScalingStudy(mode="strong", sizes=(256, 512), ranks=(1,), n_members=4,
                                   euler_steps=3, n_cycles=2, warmup_cycles=1, spinup_steps=5,
                                   steps_per_cycle=2), show_progress=False, log=False)
    two = one.assign_coords(ranks=[2])
    for component in ("forecast", "halo", "analysis", "reduce", "total"):
        two[f"time_{component}_s"] = 0.6 * two[f"time_{component}_s"]
    two = summarize(two)
    weak = summarize(xr_concat_ranks([one, two]).assign_attrs(mode="weak"))
    return [write_dataset(one, root / "job1" / "scaling_strong.nc"),
            write_dataset(two, root / "job2" / "scaling_strong.nc"),
            write_dataset(weak, root / "job2" / "scaling_weak.nc")]


def xr_concat_ranks(datasets):
    import xarray as xr

    return xr.concat(datasets, dim="ranks", combine_attrs="override")


def make_training_dir(path: Path, strategy: str, world_size: int, rates: list[float],
                      style: str = "trainer", zero_stage: int = 1, tokens: int = 16) -> Path:
    """Files of a training run in the trainer's layout.

    ``style="trainer"``: ``metrics.csv`` + ``checkpoints/latest.json`` →
    ``trainer_state.json``; ``style="stage"``: a 03_train_vit run directory
    (``training/metrics.csv`` and ``scores.json``, no checkpoint).
    """
    train_dir = path if style == "trainer" else path / "training"
    train_dir.mkdir(parents=True, exist_ok=True)
    columns = ["wall_time", "step", "epoch", "kind", "train_loss", "lr", "grad_norm",
               "samples_per_s", "tokens_per_s", "tflops_per_device", "peak_mem_gb"]
    with open(train_dir / "metrics.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns + ["val_loss"])
        writer.writeheader()
        for step, rate in enumerate(rates, start=1):
            writer.writerow({"wall_time": 1.7e9 + step, "step": step, "epoch": 0, "kind": "train",
                             "train_loss": 1.0 / step, "lr": 1e-3, "grad_norm": 0.5,
                             "samples_per_s": rate, "tokens_per_s": rate * tokens,
                             "tflops_per_device": rate * 1e-4 / world_size,
                             "peak_mem_gb": 0.3 + 0.01 * step})
        writer.writerow({"wall_time": 1.8e9, "step": len(rates), "epoch": 0, "kind": "val",
                         "val_loss": 0.4})
    config = {"strategy": strategy, "zero_stage": zero_stage, "sharding": "FULL_SHARD",
              "precision": "fp32", "batch_size": 4}
    if style == "trainer":
        step_dir = train_dir / "checkpoints" / f"step_{len(rates):08d}"
        write_json(step_dir / "trainer_state.json", {
            "step": len(rates), "world_size": world_size, "train_config": config,
            "model_config": {"name": "tiny"}})
        write_json(train_dir / "checkpoints" / "latest.json", {"name": step_dir.name,
                                                              "step": len(rates)})
    else:
        write_json(path / "scores.json", {"train_config": config, "world_size": world_size,
                                          "config": {"name": "tiny"}})
    return train_dir


@pytest.fixture(scope="module")
def cycling_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return root, make_cycling_dirs(root)


# ---------------------------------------------------------------------------------------
# Finding and loading runs


def test_find_runs_searches_directories_and_their_subdirectories(cycling_tree):
    root, files = cycling_tree
    found = find_runs([root])
    assert found == {name: files[name] for name in sorted(files)}
    assert find_runs([root / "06_coupled_vit_ensf"], runs=["sqg_letkf", "vit_ensf"]) == {
        "sqg_letkf": files["sqg_letkf"], "vit_ensf": files["vit_ensf"]}
    # The full stem names a run too.
    assert find_runs([root], runs=["cycling_letkf"]) == {"cycling_letkf": files["letkf"]}


def test_explicit_files_take_labels_and_precede_found_ones(cycling_tree):
    root, files = cycling_tree
    found = find_runs([root], files=[f"mine={files['letkf']}", str(files["vit_only"])],
                      runs=["mine", "vit_ensf"])
    assert found == {"mine": files["letkf"], "vit_ensf": files["vit_ensf"]}
    only_files = find_runs([], files=[str(files["letkf"])])
    assert only_files == {"letkf": files["letkf"]}


def test_missing_run_names_what_and_where(cycling_tree):
    root, _ = cycling_tree
    with pytest.raises(InputError) as err:
        find_runs([root], runs=["vit_ensf", "vit_ensf_shocks"])
    message = str(err.value)
    assert "'vit_ensf_shocks'" in message
    assert "coupled_vit_ensf_shocks.nc" in message and "cycling_vit_ensf_shocks.nc" in message
    assert str(root) in message
    assert "vit_only" in message  # what was found instead


def test_missing_run_that_diverged_says_so(tmp_path):
    write_dataset(make_run("free", None, n_cycles=2), tmp_path / "cycling_free.nc")
    write_json(tmp_path / "summary.json", {"free": {"mean_rmse_analysis": 1.0},
                                           "letkf": {"diverged_at_cycle": 7, "message": "..."}})
    with pytest.raises(InputError, match=r"'letkf': it diverged at cycle 7 \(.*summary.json\)"):
        find_runs([tmp_path], runs=["free", "letkf"])


def test_missing_directory_and_empty_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        find_runs([tmp_path / "nope"])
    with pytest.raises(InputError, match=r"no run results .* in " + str(tmp_path)):
        find_runs([tmp_path])
    with pytest.raises(InputError, match="not a run directory"):
        search_dirs([write_json(tmp_path / "x.json", {})])


def test_a_run_in_two_places_is_ambiguous_when_asked_for(tmp_path):
    for sub in ("a", "b"):
        write_dataset(make_run("letkf", 0.5, n_cycles=2), tmp_path / sub / "cycling_letkf.nc")
    with pytest.raises(InputError, match="several places"):
        find_runs([tmp_path], runs=["letkf"])
    assert set(find_runs([tmp_path])) == {"letkf (a)", "letkf (b)"}


def test_relative_paths_resolve_from_the_launch_dir_under_turbda_run(tmp_path, monkeypatch):
    for d in ("launch/results", "launch/both", "kernel/both", "kernel/own"):
        (tmp_path / d).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "kernel")
    monkeypatch.setenv("PWD", str(tmp_path / "launch"))
    # An interactive kernel: its working directory first, then $PWD.
    assert resolve_input_path("both") == (tmp_path / "kernel" / "both").resolve()
    assert resolve_input_path("results") == (tmp_path / "launch" / "results").resolve()
    # A `turbda run` kernel runs in its run directory (run.json): $PWD first.
    write_json(tmp_path / "kernel" / "run.json", {})
    assert resolve_input_path("both") == (tmp_path / "launch" / "both").resolve()
    assert resolve_input_path("own") == (tmp_path / "kernel" / "own").resolve()
    with pytest.raises(InputError, match="looked at .*launch/missing or .*kernel/missing"):
        resolve_input_path("missing", "run_dirs entry")
    assert default_run_dirs([], tmp_path / "pipe" / "fig") == [(tmp_path / "pipe").resolve()]


def test_load_runs_requires_variables_and_explains_missing_means(tmp_path, cycling_tree):
    _, files = cycling_tree
    loaded = load_runs({"letkf": files["letkf"]}, require=("truth", "rmse_analysis"))
    assert loaded["letkf"]["truth"].dims == ("cycle", "z", "y", "x")
    path = write_dataset(make_run("letkf", 0.5, n_cycles=2, save_means=False),
                         tmp_path / "cycling_letkf.nc")
    with pytest.raises(InputError, match="no truth, forecast_mean, analysis_mean .*save_means"):
        load_runs({"letkf": path}, require=("truth", "forecast_mean", "analysis_mean"))


def test_select_cycles_and_grid(cycling_tree):
    _, files = cycling_tree
    ds = load_runs({"letkf": files["letkf"]})["letkf"]
    assert select_cycles(ds, [-1, 1, 3]) == [5, 1, 3]
    with pytest.raises(InputError, match="cycle 9 is not in the run: it has cycles 1..5"):
        select_cycles(ds, [9])
    x_km, y_km = grid_km(ds)
    np.testing.assert_allclose(x_km, np.arange(8) * 2500.0)
    assert ds["x"].attrs["units"] == "m" and ds["z"].values.tolist() == [0.0, 1.0e4]
    # Without the domain size the engine writes index coordinates: not distances.
    unknown = load_runs({"vit_ensf": files["vit_ensf"]})["vit_ensf"]
    assert unknown["x"].attrs["units"] == "1" and grid_km(unknown) == (None, None)


# ---------------------------------------------------------------------------------------
# Spread-skill and rank-histogram summaries


def _dataset_from_scores(rmse, spread, members, counts=None):
    import xarray as xr

    ds = xr.Dataset({"rmse_analysis": ("cycle", rmse), "spread_analysis": ("cycle", spread)},
                    coords={"cycle": np.arange(1, len(rmse) + 1)})
    ds.attrs.update(n_members=members, config_spinup_cycles=1)
    if counts is not None:
        ds["rank_histogram"] = ("rank", counts)
    return ds


def test_spread_skill_summary_closed_form():
    # Cycle 1 is spin-up (huge, must be skipped); afterwards spread = rmse sqrt(m/(m+1)).
    m = 4
    rmse = np.array([100.0, 1.0, 2.0, 3.0])
    spread = rmse * math.sqrt(m / (m + 1))
    spread[0] = 0.0
    summary = spread_skill_summary(_dataset_from_scores(rmse, spread, m))
    assert summary["n_cycles"] == 3
    assert summary["rmse"] == pytest.approx(math.sqrt(14 / 3))
    assert summary["ratio"] == pytest.approx(math.sqrt(m / (m + 1)))
    assert summary["ratio_corrected"] == pytest.approx(1.0)
    assert spread_skill_summary(_dataset_from_scores(rmse, spread, m),
                                skip_spinup=False)["n_cycles"] == 4


def test_reliable_ensemble_scores_one_and_a_flat_histogram():
    """Members and truth drawn from one distribution: corrected ratio ≈ 1, χ²/dof ≈ 1."""
    gen = torch.Generator().manual_seed(0)
    m, n_cycles, n_state = 5, 30, 4000
    rmse, spread, counts = [], [], torch.zeros(m + 1, dtype=torch.int64)
    for _ in range(n_cycles):
        centre = torch.randn(n_state, generator=gen, dtype=torch.float64)
        ensemble = centre + torch.randn((m, n_state), generator=gen, dtype=torch.float64)
        truth = centre + torch.randn(n_state, generator=gen, dtype=torch.float64)
        rmse.append(float(metrics.rmse(ensemble, truth)))
        spread.append(float(metrics.spread(ensemble)))
        counts += metrics.rank_histogram(ensemble, truth)
    summary = spread_skill_summary(_dataset_from_scores(np.array(rmse), np.array(spread), m),
                                   skip_spinup=False)
    # Standard error of the ratio over 30 x 4000 samples is ~0.3 %.
    assert summary["ratio_corrected"] == pytest.approx(1.0, abs=0.02)
    ranks = rank_histogram_summary(counts.numpy())
    # Ranks of independent elements: chi2 / dof ~ 1 (chi2 with 5 dof: 99.9 % below 4.1).
    assert 0.01 < ranks["chi2_per_dof"] < 4.1
    assert ranks["outlier_ratio"] == pytest.approx(1.0, abs=0.05)


def test_rank_histogram_summary_extremes():
    flat = rank_histogram_summary(np.full(6, 10))
    assert flat["chi2_per_dof"] == 0.0 and flat["outlier_ratio"] == 1.0
    outside = rank_histogram_summary(np.array([50, 0, 0, 0, 0, 50]))
    assert outside["outlier_ratio"] == pytest.approx(3.0)  # all counts, expected 2/6
    with pytest.raises(InputError):
        rank_histogram_summary(np.array([1]))


def test_as_json_makes_strict_json():
    value = as_json({"a": np.float64("nan"), "b": np.arange(2), "c": [math.inf, 1.5],
                     "d": Path("/x")})
    assert json.loads(json.dumps(value, allow_nan=False)) == {"a": None, "b": [0, 1],
                                                              "c": [None, 1.5], "d": "/x"}


# ---------------------------------------------------------------------------------------
# Scaling and training inputs


@pytest.fixture(scope="module")
def scaling_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    return root, make_scaling_dirs(root)


def test_find_scaling_merges_jobs_of_a_mode(scaling_tree):
    root, (one, two, weak) = scaling_tree
    studies = find_scaling([root])
    assert list(studies) == ["strong", "weak"]
    strong = studies["strong"]
    assert strong["ranks"].values.tolist() == [1, 2]
    assert strong.attrs["figure_sources"] == f"{one}; {two}"
    # Strong efficiency of 0.6x the time on 2 ranks: 1 / (2 * 0.6).
    np.testing.assert_allclose(strong["efficiency"].sel(ranks=2).values, 1 / 1.2, rtol=1e-9)
    assert find_scaling([], files=[str(weak)], modes=["weak"])["weak"].attrs["mode"] == "weak"


def test_find_scaling_missing_mode_names_the_file_and_directories(scaling_tree, tmp_path):
    root, _ = scaling_tree
    with pytest.raises(InputError) as err:
        find_scaling([root / "job1"], modes=["weak"])
    assert "scaling_weak.nc" in str(err.value) and str(root / "job1") in str(err.value)
    with pytest.raises(InputError, match="no scaling results"):
        find_scaling([tmp_path])
    with pytest.raises(InputError, match="modes=.*unknown"):
        find_scaling([root], modes=["diagonal"])


def test_training_runs_from_trainer_and_stage_directories(tmp_path):
    make_training_dir(tmp_path / "runs" / "single", "none", 1, [1.0, 10.0, 12.0, 11.0])
    make_training_dir(tmp_path / "runs" / "ddp2", "ddp", 2, [2.0, 20.0, 22.0], style="stage")
    make_training_dir(tmp_path / "ds2", "deepspeed", 2, [3.0, 18.0], zero_stage=2)
    runs = find_training_runs([tmp_path / "runs", tmp_path / "ds2"])
    assert [(r.strategy_label, r.devices) for r in runs] == [
        ("ddp", 2), ("single process", 1), ("deepspeed ZeRO-2", 2)]
    assert runs[0].path == tmp_path / "runs" / "ddp2" / "training"
    assert all(len(r.rows) == n for r, n in zip(runs, (3, 4, 2)))  # the val row is dropped
    table = throughput_table(runs, skip_first=1)
    # Median after the warm-up interval.
    np.testing.assert_allclose(table["samples_per_s"].values, [21.0, 11.0, 18.0])
    np.testing.assert_allclose(table["samples_per_s_per_device"].values, [10.5, 11.0, 9.0])
    np.testing.assert_allclose(table["tokens_per_s"].values, 16 * table["samples_per_s"].values)
    np.testing.assert_allclose(table["peak_mem_gb"].values, [0.33, 0.34, 0.32])
    # A run with no more rows than skip_first keeps its last one.
    assert throughput_table(runs, skip_first=5)["samples_per_s"].values.tolist() == [
        22.0, 11.0, 18.0]


def test_training_inputs_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no training metrics in .*empty: looked for metrics"):
        find_training_runs([tmp_path / "empty"])
    bare = tmp_path / "bare"
    make_training_dir(bare, "ddp", 2, [1.0, 2.0])
    (bare / "checkpoints" / "latest.json").unlink()
    with pytest.raises(InputError, match="cannot tell the strategy and world size"):
        find_training_runs([bare])
    with pytest.raises(InputError, match="run_dirs is empty"):
        find_training_runs([])


@pytest.mark.slow
def test_real_trainer_output_is_read(tmp_path):
    """The trainer's own files (2 steps of the tiny ViT) give one single-process point."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "surrogate" / "scripts"))
    from synthetic_data import ShiftDataset

    from turbda_kit.surrogate.config import load_vit_config
    from turbda_kit.surrogate.training import TrainConfig, train

    train(load_vit_config("tiny", img_size=16), TrainConfig(batch_size=4, max_steps=3,
                                                            log_every=1, shuffle=False),
          ShiftDataset(n_samples=8, img_size=16), tmp_path / "training", show_progress=False)
    (run,) = find_training_runs([tmp_path])
    assert (run.strategy, run.devices, run.details["model"]) == ("none", 1, "tiny")
    table = throughput_table([run])
    assert table["samples_per_s"].values[0] > 0 and table["tflops_per_device"].values[0] > 0


# ---------------------------------------------------------------------------------------
# Plot builders


def _options(obj, backend: str, group: str = "plot") -> dict:
    import holoviews as hv

    return hv.Store.lookup_options(backend, obj, group).kwargs


def test_run_style_labels():
    assert plots.run_style("vit_ensf")[0] == "ViT + EnSF"
    assert plots.run_style("letkf", {"model": "lorenz96"})[0] == "L96 + LETKF"
    assert plots.run_style("free", {"model": "sqg"})[0] == "SQG, no DA"
    assert plots.run_style("letkf (a)", {"model": "sqg"})[0] == "SQG + LETKF (a)"
    label, colour, dashed = plots.run_style("mystery", index=1)
    assert (label, colour, dashed) == ("mystery", plots.PALETTE[1], False)


def test_rmse_figure_has_one_curve_per_run_and_both_backends(cycling_tree):
    _, files = cycling_tree
    datasets = load_runs(files)
    # Five 12-h cycles are too short for a climatology: the spread level is given.
    assert plots.climatological_spread(datasets["vit_only"]) is None
    truth = datasets["vit_only"]["truth"].values.astype(np.float64)
    clim = float(np.sqrt(np.mean(truth.var(axis=0, ddof=1))))
    assert plots.climatological_spread(datasets["vit_only"], min_days=2) == pytest.approx(clim)
    figure = plots.rmse_figure(datasets, logy=True, climatological=clim)
    curves = list(figure)
    # One curve per run (5 cycles: no running mean), then the two reference levels.
    assert len(curves) == len(files) + 2
    mean = float(np.mean(datasets["vit_ensf"]["rmse_analysis"].values[1:]))
    assert curves[list(datasets).index("vit_ensf")].label == f"ViT + EnSF: {mean:.2f} K"
    np.testing.assert_allclose(curves[0].dimension_values(0), [12, 24, 36, 48, 60])
    assert curves[0].dimensions()[1].name == "analysis RMSE (K)"
    obs_line, clim_line = curves[-2:]
    assert obs_line.label == "observation error: 1.00 K"
    np.testing.assert_allclose(obs_line.dimension_values(1), 1.0)
    assert clim_line.label == f"climatological spread: {clim:.2f} K"
    assert len(list(plots.rmse_figure(datasets))) == len(files) + 1  # no climatology line
    for backend in ("matplotlib", "bokeh"):
        assert _options(figure, backend)["title"] == "analysis RMSE against time"
        assert _options(figure, backend)["logy"] is True
    assert _options(curves[list(datasets).index("sqg_letkf")], "bokeh", "style")[
        "line_dash"] == "dashdot"
    styles = {(_options(c, "matplotlib", "style")["linestyle"],
               _options(c, "matplotlib", "style")["marker"]) for c in curves[:len(files)]}
    assert len(styles) == len(files)  # no two runs share line style and marker


def test_spread_skill_and_rank_histograms(cycling_tree):
    _, files = cycling_tree
    datasets = load_runs(files)
    scatter = plots.spread_skill(datasets)
    diagonal, *points = list(scatter)
    assert len(points) == len(files)
    np.testing.assert_allclose(points[0].dimension_values(0),
                               next(iter(datasets.values()))["rmse_analysis"].values[1:])
    np.testing.assert_allclose(diagonal.dimension_values(0), diagonal.dimension_values(1))
    histograms = plots.rank_histograms(datasets)
    assert len(histograms) == len(files)
    bars, flat = list(list(histograms)[0])
    assert bars.dimension_values(1).sum() == pytest.approx(1.0)
    assert flat.data == pytest.approx(1 / 7)  # 6 members: 7 ranks
    assert len(list(plots.spread_rmse_vs_time(datasets))) == 2 * len(files)
    ratio = list(plots.spread_ratio_vs_time(datasets))
    assert [c.label for c in ratio][-1] == f"reliable, 6 members: {math.sqrt(6 / 7):.2f}"
    first = datasets[list(datasets)[0]]
    np.testing.assert_allclose(ratio[0].dimension_values(1), first["spread_analysis"].values
                               / first["rmse_analysis"].values)


def test_scaling_figure_ideal_lines(scaling_tree):
    root, _ = scaling_tree
    strong = find_scaling([root])["strong"]
    layout = plots.scaling_figure(strong)
    time_plot, efficiency_plot = list(layout)
    curve, points, ideal = list(time_plot)[:3]
    assert points.label == "256 points in total"
    t = strong["time_per_cycle_s"].sel(size=256).values
    if curve.vdims[0].name == "time per cycle (ms)":   # short cycles are drawn in ms
        t = 1e3 * t
    else:
        assert curve.vdims[0].name == "time per cycle (s)"
    np.testing.assert_allclose(curve.dimension_values(1), t)
    np.testing.assert_allclose(ideal.dimension_values(1), [t[0], t[0] / 2])  # T(1) / p
    assert list(efficiency_plot)[-1].data == 1.0
    assert _options(time_plot, "bokeh")["logx"] is True


def test_throughput_curves_per_strategy(tmp_path):
    make_training_dir(tmp_path / "a", "none", 1, [5.0, 10.0])
    make_training_dir(tmp_path / "b", "ddp", 2, [5.0, 18.0])
    make_training_dir(tmp_path / "c", "ddp", 4, [5.0, 30.0])
    table = throughput_table(find_training_runs([tmp_path]))
    overlay = plots.throughput(table)
    elements = list(overlay)
    assert [e.label for e in elements if e.label] == ["single process", "ddp",
                                                      "linear scaling"]
    # The single-process series is one point: a marker, no line.
    assert type(elements[0]).__name__ == "Scatter"
    ddp = elements[2]
    np.testing.assert_allclose(ddp.dimension_values(0), [2, 4])
    np.testing.assert_allclose(ddp.dimension_values(1), [18.0, 30.0])
    assert _options(overlay, "matplotlib")["ylim"][0] == 0
    np.testing.assert_allclose(elements[-1].dimension_values(1), [10.0, 20.0, 40.0])
    no_ideal = plots.throughput(table, "tflops_per_device")
    assert "linear scaling" not in [e.label for e in no_ideal]


def test_field_panels_share_colour_ranges():
    a = np.arange(16.0).reshape(4, 4)
    rows = {"r1": {"truth": a, "analysis error": a - 3.0},
            "r2": {"truth": 2 * a, "analysis error": 0.5 * a}}
    layout = plots.field_panels(rows, error_quantile=1.0)
    images = list(layout)
    assert len(images) == 4
    for image in images[::2]:
        assert _options(image, "bokeh", "plot")["clim"] == (0.0, 30.0)
        assert _options(image, "matplotlib", "plot")["clim"] == (0.0, 30.0)
        assert _options(image, "bokeh", "style")["cmap"] == "viridis"
    # Each error panel has its own range, symmetric about zero, on a diverging map.
    assert _options(images[1], "bokeh", "plot")["clim"] == (-12.0, 12.0)
    assert _options(images[3], "bokeh", "plot")["clim"] == (-7.5, 7.5)
    for image in images[1::2]:
        assert image.vdims[0].name == "analysis error (K)"
        assert _options(image, "matplotlib", "style")["cmap"] == "RdBu_r"
    assert images[0].label == "" and _options(images[0], "bokeh")["title"] == "r1: truth"
    # Anomalies (both signs) share one symmetric range on a diverging map.
    anomalies = list(plots.field_panels({"r": {"truth": a - 5.0, "analysis": a - 6.0}}))
    assert _options(anomalies[0], "bokeh", "plot")["clim"] == (-10.0, 10.0)
    assert _options(anomalies[1], "matplotlib", "style")["cmap"] == "RdBu_r"


def test_fields_helper_maps_units_and_layout():
    a = np.arange(16.0).reshape(4, 4)
    layout = plots.fields({"input": a, "target - input": a - 8.0, "x": a, "y": 2 * a},
                          units="1")
    images = list(layout)
    assert images[0].vdims[0].name == "dimensionless"
    assert _options(images[0], "matplotlib", "style")["cmap"] == "viridis"
    assert _options(images[1], "matplotlib", "style")["cmap"] == "RdBu_r"  # a difference
    assert _options(images[1], "bokeh", "plot")["clim"] == (-8.0, 8.0)
    # The fields that are not differences share one range: they compare.
    for image in (images[0], images[2], images[3]):
        assert _options(image, "bokeh", "plot")["clim"] == (0.0, 30.0)
    assert _options(layout, "matplotlib")["sublabel_format"] == ""
    assert layout._max_cols == 2  # 4 panels: 2 x 2, no empty slot
    assert plots.level_title("sqg_10000") == "θ at the lid (z = 10 km)"
    assert plots.level_title("sqg_0") == "θ at the surface (z = 0 km)"
    assert plots.level_title("u_500") == "u at the lid (z = 0.5 km)"
    assert plots.axis_label("time_per_cycle_s") == "time per cycle (s)"
    assert plots.axis_label("rmse_analysis", "K") == "analysis RMSE (K)"


def test_rollout_rmse_figure_and_prediction_panels():
    from turbda_kit.viz.plots import prediction_panels, render, rollout_rmse_figure

    summary = {"lead_hours": [12.0, 24.0], "rmse_all_K": [1.0, 2.0],
               "persistence_rmse_all_K": [2.0, 3.0], "climatology_rmse_all_K": [4.0, 4.0]}
    overlay = rollout_rmse_figure(summary)
    assert [c.label for c in overlay] == ["ViT", "persistence", "climatology"]
    assert overlay.get(0).kdims[0].name == "lead (h)"
    render(overlay)
    truth = np.zeros((3, 4, 4))
    forecast = np.ones((3, 4, 4))
    rows = prediction_panels(truth, forecast, 12.0)
    assert list(rows) == ["+12 h, z = 0", "+36 h, z = 0"]
    np.testing.assert_array_equal(rows["+36 h, z = 0"]["ViT - truth (error)"], forecast[2])
    with pytest.raises(ValueError, match="must both be"):
        prediction_panels(truth, forecast[:2], 12.0)


@pytest.mark.parametrize("limits, expected", [
    ((2.8, 5.8), {"3", "4", "5"}),       # under a factor 2.5: every minor tick labelled
    ((0.3, 20.0), {"0.5", "1", "2", "5", "10", "20"}),  # under two decades: 1, 2, 5
    ((0.01, 50.0), {"0.01", "0.1", "1", "10"}),   # wider: the decades only
])
def test_log_axes_always_show_at_least_two_numbers(limits, expected):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from turbda_kit.viz.plots import readable_log_ticks

    fig, ax = plt.subplots()
    ax.set_yscale("log")
    ax.set_ylim(*limits)

    class Plot:
        handles = {"axis": ax}
        xticks = yticks = None

    readable_log_ticks(Plot(), None)
    fig.canvas.draw()
    low, high = limits
    labels = ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()
    shown = {t.get_text() for t in labels
             if t.get_text() and low <= t.get_position()[1] <= high}
    plt.close(fig)
    assert shown == expected
