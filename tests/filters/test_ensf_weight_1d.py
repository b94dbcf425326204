"""tools/ensf_weight_1d.py, and the invariant it shows: with identity observations the
EnSF's analysis spread depends on the likelihood weight w and the observation precision
lam (relative to the prior) only through lam * w."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("ensf_weight_1d",
                                                  ROOT / "tools" / "ensf_weight_1d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spread_depends_on_lam_times_weight_only():
    """The likelihood enters the (linearly implicit) step as w h(t) lam (y - x): the
    anomalies see lam * w alone, so with the same noise the spreads agree to rounding."""
    tool = _tool()
    rows = [tool.analyse(lam, 10.0 / lam, 400, 20, 20, 3) for lam in (0.5, 10.0, 200.0)]
    spreads = [row["spread"] for row in rows]
    assert spreads == pytest.approx([spreads[0]] * 3, rel=1e-10)
    # the Kalman spread does depend on lam: one weight cannot fit all three
    assert rows[0]["kalman_spread"] > 2 * rows[1]["kalman_spread"] > 2 * rows[2]["kalman_spread"]


def test_tool_writes_its_table(tmp_path, capsys):
    out = tmp_path / "table.json"
    table = _tool().main(["--variables", "300", "--steps", "10", "--lams", "1", "100",
                          "--weights", "1", "30", "--out", str(out)])
    assert json.loads(out.read_text()) == table
    assert len(table["rows"]) == 4 and set(table["closest_weight_spread"]) == {"1.0", "100.0"}
    assert table["command"].startswith("python tools/ensf_weight_1d.py --variables 300")
    assert str(tmp_path) not in table["command"]
    assert "comes closest to the Kalman rmse" in capsys.readouterr().out
