"""The counter-based normal generator: slab independence, C == torch, statistics, tails."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from turbda_kit import native
from turbda_kit.random_streams import (
    counter_normal,
    counter_words,
    indexed_normal_,
    indexed_normal_add_,
    mix32,
)

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler here")


def _torch_reference(rows: int, n: int, key, offset: int = 0, row0: int = 0) -> torch.Tensor:
    r = torch.arange(row0, row0 + rows, dtype=torch.int32)[:, None]
    c = torch.arange(offset, offset + n, dtype=torch.int32)[None, :]
    return counter_normal(r, c, torch.tensor(counter_words(key), dtype=torch.int32))


def test_mix32_is_a_bijection_on_a_window():
    h = mix32(torch.arange(-2 ** 20, 2 ** 20, dtype=torch.int32))
    assert h.unique().numel() == 2 ** 21


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_counter_slabs_equal_the_whole_for_any_cut(dtype):
    n, key = 1003, (11, 2, 5)
    whole = indexed_normal_(torch.empty(5, n, dtype=dtype), key, method="counter")
    bounds = [0, 1, 90, 91, 517, 1003]
    for block_size in (7, 256):           # tiles and global size play no part
        parts = [indexed_normal_(torch.empty(5, b - a, dtype=dtype), key, offset=a,
                                 global_size=10 ** 6, block_size=block_size, method="counter")
                 for a, b in zip(bounds[:-1], bounds[1:])]
        assert torch.equal(torch.cat(parts, dim=-1), whole)
    # Fewer rows draw the leading rows of more rows (rows 2p, 2p+1 share a Box-Muller pair).
    assert torch.equal(indexed_normal_(torch.empty(3, n, dtype=dtype), key, method="counter"),
                       whole[:3])
    base = torch.linspace(-1, 1, 5 * n, dtype=dtype).reshape(5, n)
    added = indexed_normal_add_(base.clone(), 0.3, key, method="counter")
    assert torch.equal(added, base.clone().add_(whole, alpha=0.3))
    # float64 values are the float32 values, converted.
    if dtype == torch.float64:
        assert torch.equal(whole, _torch_reference(5, n, key).double())


@needs_native
@pytest.mark.parametrize(("rows", "row0", "offset"), [(5, 0, 0), (4, 3, 12345), (1, 7, 2 ** 31 - 300)])
def test_c_kernel_draws_the_torch_functions_bits(rows, row0, offset):
    key = (3, -1)
    out = torch.empty(rows, 300)
    assert native.counter_fill_f32(out, counter_words(key), offset, row0)
    assert torch.equal(out, _torch_reference(rows, 300, key, offset, row0))


def _sample() -> np.ndarray:
    # 8 rows x 250k columns of one key: 2e6 values.
    return indexed_normal_(torch.empty(8, 250_000), (2026, 12), method="counter").double().numpy()


def test_moments_and_distribution():
    z = _sample()
    flat = z.ravel()
    n = flat.size
    assert abs(flat.mean()) < 5 / math.sqrt(n)
    assert abs(flat.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(flat)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(flat)) < 5 * math.sqrt(24 / n)        # excess kurtosis
    assert stats.kstest(flat[::4], "norm").pvalue > 1e-3
    # Chi-square on 64 equiprobable bins of the normal CDF.
    counts = np.bincount(np.minimum((stats.norm.cdf(flat) * 64).astype(int), 63), minlength=64)
    assert stats.chisquare(counts).pvalue > 1e-3
    # Each row on its own is standard normal too.
    for row in z:
        assert abs(row.mean()) < 5 / math.sqrt(row.size)
        assert abs(row.var() - 1) < 5 * math.sqrt(2 / row.size)


def test_independence_of_neighbours():
    z = _sample()
    n = z.shape[1]
    bound = 5 / math.sqrt(n)

    def corr(a, b):
        return float(np.corrcoef(a, b)[0, 1])

    assert abs(corr(z[0, :-1], z[0, 1:])) < bound                    # neighbouring columns
    assert abs(corr(z[0], z[1])) < bound                             # the two rows of a pair
    assert abs(corr(z[0] ** 2, z[1] ** 2)) < bound                   # ... even in their squares
    assert abs(corr(z[1], z[2])) < bound                             # neighbouring pairs
    assert abs(corr(z[0, :-1], z[2, 1:])) < bound                    # shifted across rows
    other = indexed_normal_(torch.empty(8, n), (2026, 13), method="counter").double().numpy()
    assert abs(corr(z[0], other[0])) < bound                         # the next key (step)
    assert not np.array_equal(z[0], other[0])
    # Rows are not copies or shifted copies of each other (float32 ties aside).
    for shift in (0, 1, 1000):
        assert (z[0, shift:] == z[2, :n - shift]).sum() < 10


def test_tails():
    flat = np.abs(_sample().ravel())
    n = flat.size
    for threshold in (2.0, 3.0, 4.0):
        expected = n * 2 * stats.norm.sf(threshold)
        assert abs((flat > threshold).sum() - expected) < 5 * math.sqrt(expected) + 2
    # 31 bits in u: |z| <= sqrt(-2 log 2^-32) = 6.66.
    assert flat.max() <= math.sqrt(64 * math.log(2)) + 1e-4
