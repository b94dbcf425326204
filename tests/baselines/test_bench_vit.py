"""Smoke test of ``benchmarks/bench_vit.py``: one short run, the JSON summary's figures."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_vit", REPO / "benchmarks" / "bench_vit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vit"] = module            # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_times_kit_and_seed_in_one_run_and_writes_the_summary(tmp_path):
    bench = _bench()
    path = tmp_path / "vit.json"
    summary = bench.main(["--preset", "tiny", "--batch", "2", "--threads", "1", "--rounds", "2",
                          "--steps", "1", "--warmup", "1", "--fused-adamw",
                          "--json", str(path)])
    assert json.loads(path.read_text())["runs"] == json.loads(json.dumps(summary["runs"]))
    assert summary["format"] == bench.SUMMARY_FORMAT
    assert summary["config"]["pos_embed"] == "learned"          # the seed's function
    (run,) = summary["runs"]
    assert run["threads"] == 1
    assert set(run["sides"]) == {"seed", "kit", "kit_onednn", "kit_onednn_fused_adamw"}
    assert set(run["vs_seed"]) == set(run["sides"]) - {"seed"}
    for row in run["sides"].values():
        assert row["threads"] == 1 and row["samples_per_s"] > 0 and 0 < row["mfu"] < 1.5
        assert row["samples_per_s"] == 2 / row["seconds_per_step_wall"]
    probe = run["matmul_probe"]
    assert probe["peak_gflops"] == max(probe["blas_gflops"], probe["onednn_gflops"]) > 0
    ratio = run["vs_seed"]["kit"]["samples_per_s"]
    assert ratio == run["sides"]["kit"]["samples_per_s"] / run["sides"]["seed"]["samples_per_s"]


def test_side_plan_leaves_the_cpu_only_onednn_sides_out_off_the_cpu():
    bench = _bench()
    cpu = bench.kit_side_plan(True, True, True)
    assert [side[0] for side in cpu] == ["kit", "kit_onednn", "kit_onednn_fused_adamw",
                                        "kit_onednn_compiled"]
    gpu = bench.kit_side_plan(False, True, True)
    assert [side[0] for side in gpu] == ["kit", "kit_fused_adamw", "kit_compiled"]
    assert all(backend == "default" for _, _, backend, _, _ in gpu)
    # the flags reach only their own side
    assert [(fused, compiled) for *_, fused, compiled in gpu] == [(False, False), (True, False),
                                                                (False, True)]
    assert [side[0] for side in bench.kit_side_plan(False, False, False)] == ["kit"]
