"""The training notebook (03_train_vit) and its launch scripts, on synthetic shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "03_train_vit.ipynb"
# Small enough for the default suite: a 16x16 grid, the tiny preset's architecture.
TINY_RUN = {"max_steps": 12, "eval_every": 6, "rollout_steps": 3, "num_threads": 1}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Synthetic nature run (4 outputs a day, 16x16) -> shards: 5 train, 1 val, 2 test days."""
    from turbda_kit.data.preprocess import preprocess
    from turbda_kit.io import write_dataset
    from turbda_kit.testing import synthetic_nature_run

    base = tmp_path_factory.mktemp("vit_notebook")
    write_dataset(synthetic_nature_run(n_days=8, steps_per_day=4, grid=16, seed=0),
                  base / "nature.nc")
    preprocess(base / "nature.nc", base / "shards", 0, 5, 6, 8, steps_per_file=8, num_shards=1)
    return base / "shards"


def test_the_notebook_trains_exports_and_scores_the_surrogate(shards, tmp_path):
    from turbda_kit.data.shards import open_shards
    from turbda_kit.surrogate.export import load_surrogate, read_surrogate
    from turbda_kit.surrogate.rollout import rollout_rmse, split_trajectory
    from turbda_kit.workflow import run_notebook

    out = tmp_path / "03_train_vit"
    result = run_notebook(NOTEBOOK, {"data_root": str(shards), **TINY_RUN}, out, log_output=False)
    assert result.ok, result.record.get("error")
    for name in ("surrogate.pt", "scores.json", "loss_curves.png", "loss_curves.html",
                 "rollout_rmse.png", "prediction_vs_truth.png", "training/metrics.csv"):
        assert (out / name).is_file(), name

    model, meta = load_surrogate(out / "surrogate.pt")
    catalog = open_shards(shards)
    assert model.config.img_size == 16 and model.config.variables == catalog.variables
    assert meta["lead_time_hours"] == 6.0 and meta["hours_per_step"] == 6.0
    norm = read_surrogate(out / "surrogate.pt").normaliser
    np.testing.assert_array_equal(norm.mean, catalog.normaliser.mean)
    np.testing.assert_array_equal(norm.std, catalog.normaliser.std)

    scores = json.loads((out / "scores.json").read_text())
    assert scores["steps"] == 12 and scores["lead_hours"] == [6.0, 12.0, 18.0]
    # The notebook's numbers are the exported model's: recompute them from the file.
    test_traj, hours = split_trajectory(catalog, "test")
    again = rollout_rmse(model, test_traj, 3, 6.0, norm, hours_per_step=hours)
    np.testing.assert_allclose(scores["rmse_K"], again.rmse, rtol=1e-5)
    np.testing.assert_allclose(scores["persistence_rmse_K"], again.persistence_rmse, rtol=1e-12)
    val_steps = {int(r["step"]) for r in _rows(out / "training" / "metrics.csv")
                 if r["kind"] == "val"}
    assert {6, 12} <= val_steps          # eval_every, plus each epoch's end
    assert torch.isfinite(torch.tensor(scores["rmse_K"])).all()


def _rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path) as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow
def test_streamed_shards_and_a_resumed_train_dir(shards, tmp_path):
    from turbda_kit.workflow import run_notebook

    train_dir = tmp_path / "training"
    params = {"data_root": str(shards), "loader": "shards", "train_dir": str(train_dir),
              **TINY_RUN, "max_steps": 6}
    first = run_notebook(NOTEBOOK, params, tmp_path / "first", log_output=False)
    assert first.ok, first.record.get("error")
    rows = _rows(train_dir / "metrics.csv")
    # A second run on the same train_dir finds the finished checkpoint: no new steps.
    second = run_notebook(NOTEBOOK, params, tmp_path / "second", log_output=False)
    assert second.ok, second.record.get("error")
    assert _rows(train_dir / "metrics.csv") == rows
    assert json.loads((tmp_path / "second" / "scores.json").read_text())["steps"] == 6


@pytest.mark.slow
def test_a_missing_data_root_fails_with_a_clear_message(tmp_path):
    from turbda_kit.workflow import run_notebook

    result = run_notebook(NOTEBOOK, {"data_root": str(tmp_path / "nowhere")}, tmp_path / "run",
                          log_output=False)
    assert not result.ok and "run 02_preprocess first" in result.record["error"]


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("script, dist", [("slurm", "ddp"), ("frontier", "fsdp")])
def test_the_launch_script_trains_on_two_ranks_locally(shards, tmp_path, script, dist):
    from ..conftest import mpiexec_path

    out = tmp_path / "03_train_vit"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "SRUN": f"{mpiexec_path()} -n 2", "OUT": str(out), "CONFIG": "tiny",
           "DIST": dist, "DATA": str(shards), "OMP_NUM_THREADS": "1",
           "TURBDA_VENV": str(bindir.parent), "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(REPO / "launch" / script / "train_vit.sbatch"),
                           "-p", "max_steps", "6", "-p", "eval_every", "3",
                           "-p", "rollout_steps", "2", "-q"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["parameters"]["strategy"] == dist
    assert (out / "logs" / "rank1.ipynb").is_file() and (out / "surrogate.pt").is_file()
    assert json.loads((out / "scores.json").read_text())["world_size"] == 2


def test_the_launch_scripts_refuse_unknown_sizes_and_strategies(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "activate").write_text("")  # an empty venv: activation succeeds
    for script in ("slurm", "frontier"):
        path = REPO / "launch" / script / "train_vit.sbatch"
        for env_change, message in (({"SIZE": "96"}, "SIZE=96"), ({"DIST": "zero"}, "DIST=zero")):
            env = {**os.environ, "SRUN": "false", "TURBDA_VENV": str(tmp_path), **env_change}
            proc = subprocess.run(["bash", str(path)], capture_output=True, text=True,
                                  timeout=60, env=env, cwd=tmp_path)
            assert proc.returncode == 2 and message in proc.stderr


def test_the_notebook_fine_tunes_an_export_on_rollouts(shards, tmp_path):
    from turbda_kit.surrogate.export import load_surrogate
    from turbda_kit.workflow import run_notebook

    first = tmp_path / "first"
    assert run_notebook(NOTEBOOK, {"data_root": str(shards), **TINY_RUN, "max_steps": 4},
                        first, log_output=False).ok
    tuned = tmp_path / "tuned"
    result = run_notebook(NOTEBOOK, {"data_root": str(shards), **TINY_RUN, "max_steps": 4,
                                     "train_rollout_steps": 2,
                                     "init_weights": str(first / "surrogate.pt")},
                          tuned, log_output=False)
    assert result.ok, result.record.get("error")
    start, _ = load_surrogate(first / "surrogate.pt")
    end, _ = load_surrogate(tuned / "surrogate.pt")
    assert end.config == start.config
    changed = [name for name, value in end.state_dict().items()
               if not torch.equal(value, start.state_dict()[name])]
    assert changed  # trained further (that it starts from the export is a trainer test)
    bad = run_notebook(NOTEBOOK, {"data_root": str(shards), **TINY_RUN, "loader": "shards",
                                  "train_rollout_steps": 2}, tmp_path / "bad", log_output=False)
    assert not bad.ok and "needs loader='trajectory'" in str(bad.record.get("error"))


def test_loss_curves_read_result_rows_and_csv_rows():
    from turbda_kit.errors import InputError
    from turbda_kit.viz.plots import loss_curves

    rows = [{"step": 1, "kind": "train", "train_loss": 1.0},
            {"step": 2, "kind": "train", "train_loss": 0.5},
            {"step": 2, "kind": "val", "val_loss": 0.7, "train_loss": None}]
    curves = loss_curves(rows)
    assert [e.label for e in curves if e.label] == ["train", "validation"]
    as_text = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
    assert len(loss_curves(as_text[:2])) == 1        # metrics.csv gives text; no val rows
    with pytest.raises(InputError, match="kind 'train'"):
        loss_curves([{"step": 1, "kind": "other"}])


def test_the_notebook_trains_on_a_seed_layout_root_given_the_step_length(tmp_path):
    """A published (ClimaX/seed) root has no manifest: hours_per_step says the step length."""
    from turbda_kit.testing import synthetic_shard_root
    from turbda_kit.workflow import run_notebook

    root = synthetic_shard_root(tmp_path / "seed_root", layout="climax", grid=16,
                                split_days=(0, 4, 5, 7), steps_per_day=2, num_shards=1)
    params = {"data_root": str(root), "config": "tiny", **TINY_RUN, "max_steps": 4, "batch_size": 4,
              "eval_every": 2, "rollout_steps": 2}
    without = run_notebook(NOTEBOOK, params, tmp_path / "without", log_output=False)
    assert without.status == "failed" and "hours_per_step" in without.record["error"]
    given = run_notebook(NOTEBOOK, {**params, "hours_per_step": 12.0}, tmp_path / "given",
                         log_output=False)
    assert given.ok, given.record.get("error")
    scores = json.loads((tmp_path / "given" / "scores.json").read_text())
    assert scores["lead_hours"] == [12.0, 24.0]
