"""``benchmarks/bench_models.py``'s timing helpers: rounds, best-of, per-round ratios."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_models",
                                                  REPO / "benchmarks" / "bench_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_models"] = module
    spec.loader.exec_module(module)
    return module


def test_per_round_ratios_pair_the_sides_within_each_round():
    bench = _bench()
    baseline = [(9.0, 2.0), (9.0, 6.0), (9.0, 4.0)]
    side = [(1.0, 1.0), (1.0, 2.0), (1.0, 1.0)]
    # round by round 2/1, 6/2 and 4/1; the best-of ratio would be min 2 / min 1 = 2
    assert bench.round_ratios(baseline, side) == {"median": 3.0, "min": 2.0, "max": 4.0}


def test_every_side_runs_once_per_round_after_one_warm_up_and_best_is_the_minimum():
    bench = _bench()
    calls: list[str] = []
    sides = [(1, lambda: calls.append("a")), (1, lambda: calls.append("b"))]
    rounds = bench.round_times(sides, 3)
    assert calls == ["a", "b"] * 4                  # warm-up, then 3 interleaved rounds
    assert [len(r) for r in rounds] == [3, 3]
    assert all(wall >= 0 and cpu >= 0 for r in rounds for wall, cpu in r)
    # wall and CPU minima are taken separately, not from one round
    assert bench.best_of([[(3.0, 1.0), (2.0, 5.0)], [(4.0, 4.0)]]) == [(2.0, 1.0), (4.0, 4.0)]
