"""tools/da_table.py: runs the presets at its --quick size, writes the JSON table, reads runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "da_table.py"), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_quick_table_runs_and_reads_back(tmp_path):
    out, runs = tmp_path / "table.json", tmp_path / "runs"
    done = _tool("--quick", "--presets", "sqgturb_lgetkf_cv", "--filters", "free", "letkf",
                 "ensf_twostage", "--runs-dir", str(runs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    table = json.loads(out.read_text())
    assert table["size"] == "quick" and table["mode"] == "run"
    assert table["run"]["n_cycles"] == 8 and table["run"]["spinup_cycles"] == 2
    assert table["run"]["start"].startswith("warm")
    assert table["command"].startswith("python tools/da_table.py --quick")
    rows = {row["filter"]: row for row in table["rows"]}
    assert set(rows) == {"free", "letkf", "ensf_twostage"}
    for row in rows.values():
        assert not row["diverged"] and row["units"] == "K"
        assert set(row["forecast_rmse_by_lead_hours"]) == {"12", "24"}
        assert row["baselines"]["free_run_analysis_rmse"] == rows["free"]["analysis_rmse"]
        assert row["baselines"]["climatology_rmse"] > 0
        assert row["baselines"]["obs_only_rmse"] is None          # sparse network
    assert (runs / "sqgturb_lgetkf_cv" / "cycling_letkf.nc").exists()

    # reading back, in this process (the command line was tested above)
    spec = importlib.util.spec_from_file_location("da_table", ROOT / "tools" / "da_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    again = tmp_path / "read.json"
    read = tool.main(["--quick", "--presets", "sqgturb_lgetkf_cv", "--filters", "free", "letkf",
                      "ensf_twostage", "--read", str(runs), "--out", str(again)])
    assert json.loads(again.read_text()) == json.loads(json.dumps(read, default=str))
    assert read["mode"] == "read"
    for ran, reread in zip(table["rows"], read["rows"]):
        assert ran["analysis_rmse"] == reread["analysis_rmse"]
        assert ran["forecast_rmse_by_lead_hours"] == reread["forecast_rmse_by_lead_hours"]


def test_set_changes_filter_settings_of_every_preset():
    spec = importlib.util.spec_from_file_location("da_table", ROOT / "tools" / "da_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    changes = tool._changes(["ensf_twostage.ensf.spread_relaxation=0.7",
                             "ensf_twostage.ridge=0.1", "letkf.inflation=none"])
    assert changes == {"ensf_twostage": {"ensf": {"spread_relaxation": 0.7}, "ridge": 0.1},
                       "letkf": {"inflation": "none"}}
    preset = tool._preset("sqgturb_lgetkf_cv", {"cycles": 8, "spinup": 2, "members": 4,
                                                "N": 16, "filter_changes": changes})
    twostage = preset.filter_settings("ensf_twostage")
    assert twostage.ridge == 0.1 and twostage.ensf.spread_relaxation == 0.7
    assert twostage.ensf.likelihood_weight == 10.0          # the rest of the preset's EnSF
    assert preset.network.n_obs == 64                        # 1024 scaled to 16²
