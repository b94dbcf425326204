"""Paired comparison of two runs on one truth: block-bootstrap interval of the mean difference."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from turbda_kit.errors import InputError
from turbda_kit.experiments.paired import compare_runs, paired_difference
from turbda_kit.io import write_dataset

ROOT = Path(__file__).resolve().parents[2]


def _ar1(n: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + rng.standard_normal()
    return x


def test_a_constant_offset_is_found_exactly():
    b = 1.0 + 0.1 * np.random.default_rng(0).standard_normal(200)
    result = paired_difference(b + 0.25, b, block=10, n_boot=200)
    assert result.mean_difference == pytest.approx(0.25)
    assert result.low == pytest.approx(0.25) and result.high == pytest.approx(0.25)
    assert result.fraction_a_lower == 0.0 and result.n_cycles == 200


def test_no_difference_lies_inside_the_interval_and_seeds_reproduce():
    a, b = _ar1(400, 0.9, 1), _ar1(400, 0.9, 2)
    one = paired_difference(a, b, block=20, seed=3)
    assert one.low < 0.0 < one.high          # equal laws: 0 inside (this seed)
    assert one == paired_difference(a, b, block=20, seed=3)
    assert one != paired_difference(a, b, block=20, seed=4)


def test_blocks_widen_the_interval_of_correlated_differences():
    """Persistent errors: resampling single cycles understates the uncertainty."""
    a, b = _ar1(600, 0.95, 5), np.zeros(600)
    single = paired_difference(a, b, block=1, seed=0)
    blocked = paired_difference(a, b, block=40, seed=0)
    assert (blocked.high - blocked.low) > 2.0 * (single.high - single.low)


@pytest.mark.parametrize("kwargs, match", [
    ({"a": np.ones(5), "b": np.ones(4)}, "one length"),
    ({"a": np.array([1.0, np.nan]), "b": np.ones(2)}, "finite"),
    ({"a": np.ones(5), "b": np.ones(5), "block": 6}, "block"),
    ({"a": np.ones(5), "b": np.ones(5), "block": 2, "n_boot": 10}, "n_boot"),
    ({"a": np.ones(5), "b": np.ones(5), "block": 2, "level": 1.0}, "level"),
])
def test_bad_input_is_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        paired_difference(**kwargs)


def _run(path: Path, rmse: np.ndarray, climatology: float = 9.0) -> Path:
    ds = xr.Dataset({"rmse_analysis": ("cycle", rmse),
                     "rmse_obs_only": ("cycle", np.ones_like(rmse)),
                     "rmse_climatology": ((), climatology)})
    return write_dataset(ds, path)


def test_compare_runs_reads_cycling_files_and_refuses_other_truths(tmp_path):
    rng = np.random.default_rng(0)
    base = 1.0 + 0.1 * rng.standard_normal(50)
    a = _run(tmp_path / "a.nc", base + 0.2)
    b = _run(tmp_path / "b.nc", base)
    result = compare_runs(a, b, first_cycle=10, block=5, n_boot=200)
    assert result.n_cycles == 40 and result.mean_difference == pytest.approx(0.2)
    other = _run(tmp_path / "c.nc", base, climatology=9.5)
    with pytest.raises(InputError, match="same truth"):
        compare_runs(a, other)
    with pytest.raises(InputError, match="no 'spread_analysis'"):
        compare_runs(a, b, score="spread_analysis")
    with pytest.raises(InputError, match="first_cycle"):
        compare_runs(a, b, first_cycle=49)


def test_tool_writes_a_summary_without_machine_paths(tmp_path):
    spec = importlib.util.spec_from_file_location("paired_tool",
                                                  ROOT / "tools" / "paired_difference.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    base = np.linspace(1.0, 2.0, 30)
    _run(tmp_path / "x" / "a.nc", base + 0.1)
    _run(tmp_path / "x" / "b.nc", base)
    out = tmp_path / "pairs.json"
    assert tool.main(["--root", str(tmp_path), "--block", "5", "--n-boot", "200",
                      "--json", str(out), "--pair", "p=x/a.nc:x/b.nc"]) == 0
    summary = json.loads(out.read_text())
    assert "--root RUN" in summary["command"]
    row = summary["rows"][0]
    assert row["a"] == "x/a.nc" and row["mean_difference"] == pytest.approx(0.1)
    assert str(tmp_path / "x") not in json.dumps(summary["rows"])
    _run(tmp_path / "x" / "c.nc", base, climatology=8.0)
    assert tool.main(["--root", str(tmp_path), "--pair", "q=x/a.nc:x/c.nc"]) == 1


def test_tool_takes_pairs_of_absolute_paths_without_root(tmp_path, capsys):
    """--pair with absolute paths and no --root (it used to fail on relative_to)."""
    spec = importlib.util.spec_from_file_location("paired_tool",
                                                  ROOT / "tools" / "paired_difference.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    base = np.linspace(1.0, 2.0, 30)
    a, b = _run(tmp_path / "a.nc", base + 0.1), _run(tmp_path / "b.nc", base)
    assert tool.main(["--block", "5", "--n-boot", "200", "--pair", f"p={a}:{b}",
                      str(b), str(a)]) == 0
    printed = capsys.readouterr().out
    assert "p: rmse_analysis" in printed and "a-b: rmse_analysis" in printed
