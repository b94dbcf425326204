"""The quickstart chain end to end, at an even smaller size than `make quickstart`."""

from __future__ import annotations

import json

from turbda_kit.pipelines import PIPELINES, run_pipeline

TINY = {
    "01_generate_data.N": 16, "01_generate_data.spinup_days": 10,
    "03_train_vit.max_steps": 20, "03_train_vit.eval_every": 10, "03_train_vit.rollout_steps": 3,
    "05_da_cycling.n_cycles": 4, "05_da_cycling.n_members": 6,
    "06_coupled_vit_ensf.n_cycles": 4, "06_coupled_vit_ensf.n_members": 6,
}


def test_quickstart_chain_runs_end_to_end(tmp_path):
    out = tmp_path / "qs"
    results = run_pipeline("quickstart", TINY, out, log_output=False)
    assert [r.status for r in results] == ["ok"] * len(PIPELINES["quickstart"]), [
        (r.run_dir.name, r.record.get("error")) for r in results]
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["status"] == "ok"
    assert (out / "01_generate_data" / "nature_sqg.nc").exists()
    assert (out / "03_train_vit" / "surrogate.pt").exists()
    for name in ("free", "letkf", "ensf"):
        assert (out / "05_da_cycling" / f"cycling_{name}.nc").exists()
    assert (out / "06_coupled_vit_ensf" / "coupled_vit_ensf.nc").exists()
    assert (out / "fig_rmse_vs_time" / "fig_rmse_vs_time.png").exists()
