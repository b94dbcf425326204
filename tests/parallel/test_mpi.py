"""MPI helpers: the serial stand-in, block ranges, exact moment combination, aborts,
sub-communicators, the sleeping barrier and the node layout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from turbda_kit.errors import InputError
from turbda_kit.parallel.mpi import (
    Moments,
    NodeLayout,
    SerialComm,
    abort_on_exception,
    block_range,
    combine_moments,
    first_ranks,
    get_comm,
    node_layout,
    node_local_rank,
    parallel_mean_var,
    rank_size,
    sleeping_barrier,
    tree_reduce,
)

from ..conftest import run_mpi

SCRIPTS = Path(__file__).resolve().parent.parent / "data" / "scripts"
HELPERS = Path(__file__).resolve().parent / "scripts" / "mpi_helpers.py"
LAUNCH_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")


def _data() -> np.ndarray:
    rng = np.random.default_rng(42)
    return rng.standard_normal((37, 3, 4)) * 10.0 ** rng.integers(-6, 6, size=(37, 1, 1))


def test_serial_comm_behaves_like_a_communicator_of_one(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    comm = get_comm()
    assert isinstance(comm, SerialComm)
    assert rank_size(comm) == (0, 1)
    assert comm.bcast("x") == "x"
    assert comm.gather(3) == [3] and comm.allgather(3) == [3]
    assert comm.scatter([5]) == 5 and comm.allreduce(2) == 2 and comm.reduce(2) == 2
    comm.barrier()
    marker = object()
    assert get_comm(marker) is marker


@pytest.mark.parametrize("n_items", [0, 1, 5, 37])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_block_ranges_tile_the_items_in_order(n_items, size):
    blocks = [block_range(n_items, r, size) for r in range(size)]
    assert [i for b in blocks for i in b] == list(range(n_items))
    lengths = [len(b) for b in blocks]
    assert max(lengths) - min(lengths) <= 1


def test_block_range_rejects_bad_rank():
    with pytest.raises(InputError, match="rank=2, size=2"):
        block_range(4, 2, 2)


def test_moments_match_numpy_over_any_axes():
    data = _data()
    for axis in (None, 0, (0, 2), (1, 2)):
        m = Moments.from_array(data, axis)
        np.testing.assert_allclose(m.mean, data.mean(axis=axis), rtol=1e-13, atol=0)
        np.testing.assert_allclose(m.variance(), data.var(axis=axis), rtol=1e-12)
        np.testing.assert_allclose(m.std(ddof=1), data.std(axis=axis, ddof=1), rtol=1e-12)


def test_chan_combination_equals_numpy_on_the_concatenation():
    data = _data()
    # Uneven pieces, including empty ones, folded in order.
    cuts = [0, 0, 1, 9, 9, 30, 37]
    parts = [Moments.from_array(data[a:b], axis=0) for a, b in zip(cuts[:-1], cuts[1:])]
    total = combine_moments(parts)
    assert total.count == 37
    np.testing.assert_allclose(total.mean, data.mean(axis=0), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(total.variance(), data.var(axis=0), rtol=1e-12)


def test_parallel_mean_var_on_one_rank_is_numpy():
    data = _data()
    count, mean, var = parallel_mean_var(data, SerialComm(), axis=(0, 2))
    assert count == 37 * 4
    np.testing.assert_allclose(mean, data.mean(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(var, data.var(axis=(0, 2)), rtol=1e-12)


def test_variance_of_too_few_values_is_refused():
    with pytest.raises(InputError, match="ddof=1"):
        Moments.from_array(np.ones(1)).variance(ddof=1)


def test_tree_reduce_follows_a_fixed_tree():
    # With one rank the tree is evaluated in full: compare with the same tree by hand.
    values = [1e16, 1.0, -1e16, 1.0, 3.0]

    def by_hand(lo, hi):
        if hi - lo == 1:
            return values[lo]
        mid = (lo + hi) // 2
        return by_hand(lo, mid) + by_hand(mid, hi)

    got = tree_reduce(len(values), lambda i: values[i], lambda a, b: a + b, SerialComm())
    assert got == by_hand(0, len(values))
    with pytest.raises(InputError, match="n_items >= 1"):
        tree_reduce(0, lambda i: i, max, SerialComm())


def test_abort_on_exception_reraises_on_a_single_rank():
    with pytest.raises(RuntimeError, match="plain"), abort_on_exception(SerialComm()):
        raise RuntimeError("plain")


@pytest.mark.mpi
@pytest.mark.parametrize("n_ranks", [2, 3])
def test_parallel_reductions_match_numpy_and_serial_bit_for_bit(tmp_path, n_ranks):
    out = tmp_path / "result.npz"
    proc = run_mpi(n_ranks, [str(SCRIPTS / "mpi_reductions.py"), str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    data = _data()
    assert int(got["count"]) == 37
    np.testing.assert_allclose(got["mean"], data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got["var"], data.var(axis=0), rtol=1e-12)
    # The tree reduction is independent of the decomposition: equal to the serial one bit for bit.
    serial = tree_reduce(37, lambda i: Moments.from_array(data[i:i + 1], axis=0),
                         lambda a, b: a.combine(b), SerialComm())
    assert got["tree_mean"].tobytes() == serial.mean.tobytes()
    assert got["tree_m2"].tobytes() == serial.m2.tobytes()
    sums = tree_reduce(37, lambda i: data[i].copy(), np.add, SerialComm())
    assert got["sums"].tobytes() == sums.tobytes()


@pytest.mark.mpi
def test_abort_on_exception_ends_a_two_rank_job_within_seconds():
    start = time.monotonic()
    proc = run_mpi(2, [str(SCRIPTS / "abort_demo.py")], timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stderr
    assert "unreachable" not in proc.stdout
    assert elapsed < 30, f"abort took {elapsed:.1f}s"


def test_first_ranks_on_one_process():
    comm = SerialComm()
    with first_ranks(comm, 1) as sub:
        assert sub is comm
    with pytest.raises(InputError, match="p=2"):
        with first_ranks(comm, 2):
            pass


def test_sleeping_barrier_and_node_layout_on_one_process():
    sleeping_barrier(None)
    sleeping_barrier(SerialComm())

    class TwoRanksWithoutIbarrier(SerialComm):
        calls = 0

        def Get_size(self) -> int:  # noqa: N802 - mirrors mpi4py
            return 2

        def barrier(self) -> None:
            TwoRanksWithoutIbarrier.calls += 1

    sleeping_barrier(TwoRanksWithoutIbarrier())          # falls back to the blocking barrier
    assert TwoRanksWithoutIbarrier.calls == 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert node_layout(None) == NodeLayout(0, 1, cpus) == node_layout(SerialComm())
    assert node_layout(None).cpus_per_rank == cpus and node_local_rank(SerialComm()) == 0
    assert NodeLayout(1, 3, 6).cpus_per_rank == 2 and NodeLayout(0, 4, 2).cpus_per_rank == 0.5


@pytest.mark.mpi
def test_sub_communicators_sleeping_barrier_and_node_layout_on_three_ranks(tmp_path):
    out = tmp_path / "seen.json"
    proc = run_mpi(3, [str(HELPERS), str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(out.read_text())
    # first_ranks(comm, p): ranks below p get a communicator of size p, the others None
    for entry in seen:
        assert entry["sub_sizes"] == {str(p): (p if entry["rank"] < p else 0) for p in (1, 2, 3)}
    # one node: local ranks 0, 1, 2 of 3, sharing the CPUs of the unbound launch
    layouts = sorted(tuple(e["layout"]) for e in seen)
    assert [lay[0] for lay in layouts] == [0, 1, 2] and {lay[1] for lay in layouts} == {3}
    assert len({lay[2] for lay in layouts}) == 1 and layouts[0][3] == layouts[0][2] / 3
    # ranks 1 and 2 waited about a second for rank 0 without spinning
    for entry in seen[1:]:
        assert entry["waited"]["wall_s"] > 0.5
        assert entry["waited"]["cpu_s"] < 0.5 * entry["waited"]["wall_s"], entry
