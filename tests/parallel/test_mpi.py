"""MPI helpers: the serial stand-in, block ranges, exact moment combination, aborts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from turbda_kit.errors import InputError
from turbda_kit.parallel.mpi import (
    Moments,
    SerialComm,
    abort_on_exception,
    block_range,
    combine_moments,
    get_comm,
    parallel_mean_var,
    rank_size,
    tree_reduce,
)

from ..conftest import run_mpi

SCRIPTS = Path(__file__).resolve().parent.parent / "data" / "scripts"
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
