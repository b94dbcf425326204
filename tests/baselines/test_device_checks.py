"""``benchmarks/device_checks.sh`` (the GPU checks as one command) rehearsed on the CPU, and
the benchmarks' ``--device`` option."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "device_checks.sh"


def _run(tmp_path, **env):
    full = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
            "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=full, capture_output=True,
                          text=True, timeout=600)


def test_rehearsal_on_the_cpu_runs_every_step_and_writes_the_summaries(tmp_path):
    proc = _run(tmp_path, DEVICE="cpu", QUICK="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "device_checks: all passed" in proc.stdout
    for step in ("tests", "bench_models", "bench_vit"):
        assert f"== {step}:" in proc.stdout
        assert (tmp_path / "out" / f"{step}.log").is_file()
    models = json.loads((tmp_path / "out" / "bench_models.json").read_text())
    assert models["device"] == "cpu"
    assert {(row["side"], row["device"]) for row in models["rows"]} == {
        ("sqgturb", "cpu"), ("kit", "cpu"), ("kit-compat", "cpu")}
    for row in models["rows"]:
        spread = row["speedup_cpu_per_round"]
        assert row["speedup_wall"] > 0 and 0 < spread["min"] <= spread["median"] <= spread["max"]
    vit = json.loads((tmp_path / "out" / "bench_vit.json").read_text())
    assert vit["device"] == "cpu"
    (run,) = vit["runs"]
    assert {"seed", "kit", "kit_onednn"} <= set(run["sides"])


def test_a_step_that_fails_is_reported_and_the_others_still_run(tmp_path):
    # an interpreter that cannot run bench_vit.py and runs everything else
    python = tmp_path / "python"
    python.write_text("#!/bin/bash\n"
                      'for a in "$@"; do [ "$a" = benchmarks/bench_vit.py ] && '
                      '{ echo "broken on purpose" >&2; exit 3; }; done\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    proc = _run(tmp_path, DEVICE="cpu", QUICK="1", PYTHON=str(python))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "FAILED (exit 3" in proc.stdout and "broken on purpose" in proc.stdout
    assert "device_checks: FAILED: bench_vit" in proc.stdout
    assert (tmp_path / "out" / "bench_models.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_without_a_gpu_the_script_stops_at_once_and_says_why(tmp_path):
    proc = _run(tmp_path, DEVICE="cuda")
    assert proc.returncode == 2
    assert "sees no GPU" in proc.stderr and "DEVICE=cpu QUICK=1" in proc.stderr
    assert not (tmp_path / "out" / "tests.log").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
@pytest.mark.parametrize("script", ["bench_models.py", "bench_vit.py"])
def test_benchmarks_refuse_a_missing_gpu_with_a_usage_error(script):
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--device", "cuda"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no GPU is visible" in proc.stderr
