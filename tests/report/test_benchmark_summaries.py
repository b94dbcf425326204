"""The benchmarks' ``--json`` summaries hold what the README's blocks read, and the
printed tables stay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from turbda_kit.report import RENDERERS
from turbda_kit.report.summaries import load_results, write_summary

REPO = Path(__file__).resolve().parents[2]

CASES = {
    "bench_models": (["benchmarks/bench_models.py", "--sizes", "16", "--threads", "1",
                      "--hours", "0.2", "--repeats", "1"], "speed-up CPU"),
    "bench_ensf": (["benchmarks/bench_ensf.py", "--n", "2000", "--steps", "2", "--repeats", "1",
                    "--threads", "1"], "of copy"),
    "l96_accuracy": (["benchmarks/bench_ensf.py", "--accuracy", "--n", "512", "--cycles", "2",
                      "--steps", "5", "--threads", "1"], "final analysis RMSE"),
    "bench_preprocess": (["benchmarks/bench_preprocess.py", "--size-gb", "0.002", "--grid",
                          "16", "--ranks", "1", "--modes", "direct", "--repeat", "1"],
                         "copy (baseline)"),
}


@pytest.mark.parametrize("stage", sorted(CASES))
def test_benchmark_json_feeds_its_readme_block(stage, tmp_path):
    args, printed = CASES[stage]
    out = tmp_path / f"{stage}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, *args, "--json", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert printed in proc.stdout and "summary written to" in proc.stdout
    data = json.loads(out.read_text())
    assert data["command"].startswith("python benchmarks/")
    if stage == "l96_accuracy":
        assert data["start"].startswith("cold") and data["cycles"] == 2
        assert len(data["rmse_analysis"]) == 2
    write_summary(tmp_path / "results" / f"{stage}.json", data, command="turbda pipeline paper")
    block = "l96_accuracy" if stage == "l96_accuracy" else "benchmarks"
    text = RENDERERS[block](load_results(tmp_path / "results"))
    assert "Not yet generated" not in text.split("Still to run")[0]
