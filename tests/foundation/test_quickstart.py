"""The quickstart chain end to end at its --quick size (slow: several minutes on 2 cores).

Marked ``slow`` and left out of the default run: every stage's notebook has its own test
at a small size, and the chain runs whenever ``make quickstart`` does.
"""

from __future__ import annotations

import json

import pytest

from turbda_kit.workflow.pipelines import PIPELINES, run_pipeline

pytestmark = pytest.mark.slow


def test_quickstart_chain_runs_end_to_end(tmp_path):
    out = tmp_path / "qs"
    results = run_pipeline("quickstart", {}, out, log_output=False, quick=True)
    assert [r.status for r in results] == ["ok"] * len(PIPELINES["quickstart"].stages), [
        (r.run_dir.name, r.record.get("error")) for r in results]
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["status"] == "ok" and summary["quick"] is True
    assert (out / "01_generate_data" / "nature_sqg.nc").exists()
    assert (out / "03_train_vit" / "surrogate.pt").exists()
    for name in ("free", "letkf", "ensf"):
        assert (out / "05_da_cycling" / f"cycling_{name}.nc").exists()
    assert (out / "06_coupled_vit_ensf" / "coupled_vit_ensf.nc").exists()
    assert (out / "fig_rmse_vs_time" / "fig_rmse_vs_time.png").exists()
    # run again: every stage is done, nothing runs
    assert run_pipeline("quickstart", {}, out, log_output=False, quick=True) == []
