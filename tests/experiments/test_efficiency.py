"""Efficiency maths of the scaling study: the definitions, baselines, cores and utilisation."""

from __future__ import annotations

import numpy as np
import pytest

from turbda_kit.errors import InputError
from turbda_kit.experiments.efficiency import cores_per_rank, cpu_utilisation, efficiency


def test_efficiency_matches_the_definitions_on_synthetic_times():
    ranks = [1, 2, 4, 8]
    t1 = 12.0
    ideal_strong = np.array([t1 / p for p in ranks])
    np.testing.assert_allclose(efficiency(ideal_strong, ranks, "strong"), 1.0)
    # T(p) = T1 / (p e): efficiency e by construction
    e = np.array([1.0, 0.9, 0.75, 0.5])
    np.testing.assert_allclose(efficiency(t1 / (np.array(ranks) * e), ranks, "strong"), e)
    # weak: constant time is perfect; T(p) = T1 / e gives e
    np.testing.assert_allclose(efficiency(np.full(4, t1), ranks, "weak"), 1.0)
    np.testing.assert_allclose(efficiency(t1 / e, ranks, "weak"), e)
    # the formulas of the brief, written out: T(1) / (p T(p)) and T(1) / T(p)
    times = np.array([10.0, 6.0, 4.0, 3.0])
    np.testing.assert_allclose(efficiency(times, ranks, "strong"),
                               [10 / (1 * 10), 10 / (2 * 6), 10 / (4 * 4), 10 / (8 * 3)])
    np.testing.assert_allclose(efficiency(times, ranks, "weak"), [1, 10 / 6, 10 / 4, 10 / 3])


def test_efficiency_baseline_is_the_smallest_rank_count_run_per_size():
    # two sizes along a trailing axis; the second size was not run on 8 ranks
    times = np.array([[8.0, np.nan], [4.0, 20.0], [2.5, 10.0]])
    eff = efficiency(times, [8, 16, 32], "strong")
    np.testing.assert_allclose(eff[:, 0], [1.0, 8 * 8 / (16 * 4), 8 * 8 / (32 * 2.5)])
    assert np.isnan(eff[0, 1])
    np.testing.assert_allclose(eff[1:, 1], [1.0, 16 * 20 / (32 * 10)])
    with pytest.raises(InputError, match="increasing"):
        efficiency(np.ones(2), [2, 1], "strong")
    with pytest.raises(InputError, match="axis 0"):
        efficiency(np.ones(3), [1, 2], "weak")
    with pytest.raises(InputError, match="mode"):
        efficiency(np.ones(2), [1, 2], "medium")


def test_cores_per_rank_counts_the_prefetch_thread_on_cpu_only():
    assert cores_per_rank(1, False) == 1
    assert cores_per_rank(1, True) == 2
    assert cores_per_rank(7, True, "cuda") == 7                  # no prefetch thread on a GPU
    with pytest.raises(InputError, match="threads_per_rank"):
        cores_per_rank(0, False)


def test_cpu_utilisation_divides_by_the_cores_given():
    # 1 rank x 2 cores for 10 s: 15 CPU-s used of 20; 2 ranks x 2 cores for 6 s: 24 of 24
    np.testing.assert_allclose(cpu_utilisation([15.0, 24.0], [10.0, 6.0], [1, 2], 2), [0.75, 1.0])
    # a baseline that used 1.55 cores while counted as 1 shows up as utilisation 1.55
    np.testing.assert_allclose(cpu_utilisation(15.5, 10.0, 1, 1), 1.55)
    assert np.isnan(cpu_utilisation(1.0, 0.0, 1, 1))
    with pytest.raises(InputError, match="cores_per_rank"):
        cpu_utilisation(1.0, 1.0, 1, 0)
