"""Per-day statistics and the threaded day pipeline: exact, thread-count independent, safe."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from turbda_kit.data.day_pipeline import DayPipeline, StageClock, row_blocks
from turbda_kit.data.day_statistics import DayStatistics, field_moments

SHAPE = (6, 2, 9, 7)  # (time, vars, ny, nx): odd sizes so that blocks are uneven


def days(n: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {d: (280 + 5 * rng.standard_normal(SHAPE)).astype(np.float32) for d in range(n)}


def assert_bit_equal(a: DayStatistics, b: DayStatistics) -> None:
    for x, y in ((a.scalar, b.scalar), (a.field, b.field)):
        assert x.count == y.count
        assert x.mean.tobytes() == y.mean.tobytes()
        assert x.m2.tobytes() == y.m2.tobytes()


def test_field_moments_equal_numpy_and_do_not_depend_on_blocks():
    data = days(1)[0]
    mean, m2 = np.empty(SHAPE[1:]), np.empty(SHAPE[1:])
    field_moments(data, mean, m2)
    np.testing.assert_allclose(mean, data.mean(axis=0, dtype=np.float64), rtol=1e-15)
    np.testing.assert_allclose(m2, SHAPE[0] * data.astype(np.float64).var(axis=0), rtol=1e-12)
    for pieces in (1, 2, 3, 5, 18, 40):
        block_mean, block_m2 = np.empty(SHAPE[1:]), np.empty(SHAPE[1:])
        scratch = np.empty(data.size)
        for v, rows in row_blocks(SHAPE[1], SHAPE[2], pieces):
            field_moments(data[:, v, rows], block_mean[v, rows], block_m2[v, rows], scratch)
        assert block_mean.tobytes() == mean.tobytes() and block_m2.tobytes() == m2.tobytes()


def test_blocks_do_not_change_the_bits_at_a_real_grid_size():
    # numpy picks its reduction loops by shape and strides: check at 256 x 256 too.
    data = (280 + np.random.default_rng(3).standard_normal((24, 2, 256, 256))).astype(np.float32)
    whole = DayStatistics.of(data)
    for pieces in (2, 4, 7):
        mean, m2 = np.empty(data.shape[1:]), np.empty(data.shape[1:])
        for v, rows in row_blocks(2, 256, pieces):
            field_moments(data[:, v, rows], mean[v, rows], m2[v, rows])
        assert_bit_equal(DayStatistics.from_fields(24, mean, m2), whole)


def test_a_scratch_buffer_too_small_is_refused():
    from turbda_kit.errors import InputError

    data = days(1)[0]
    out = np.empty(SHAPE[1:])
    with pytest.raises(InputError, match="at least 756 values"):
        field_moments(data, out, out.copy(), np.empty(10))
    with pytest.raises(InputError, match="float64"):
        field_moments(data, out, None, np.empty(data.size, dtype=np.float32))


def test_row_blocks_cover_every_row_of_every_variable_once():
    for n_vars, ny, pieces in ((2, 9, 4), (1, 5, 8), (3, 256, 4), (4, 3, 2), (1, 1, 1)):
        seen = np.zeros((n_vars, ny), dtype=int)
        blocks = row_blocks(n_vars, ny, pieces)
        for v, rows in blocks:
            seen[v, rows] += 1
        assert (seen == 1).all()
        assert len(blocks) >= min(pieces, n_vars * ny)


def test_statistics_without_spread_carry_nan():
    data = days(1)[0]
    full, partial = DayStatistics.of(data), DayStatistics.of(data, with_spread=False)
    assert partial.field.mean.tobytes() == full.field.mean.tobytes()
    assert partial.scalar.mean.tobytes() == full.scalar.mean.tobytes()
    assert np.isnan(partial.field.m2).all() and np.isnan(partial.scalar.m2).all()


class Recorder:
    """load / write_tasks for a pipeline over in-memory days, recording what happened."""

    def __init__(self, data: dict[int, np.ndarray], existing: set[int] = frozenset(),
                 write_delay: float = 0.0, fail_write: int | None = None):
        self.data, self.existing = data, set(existing)
        self.write_delay, self.fail_write = write_delay, fail_write
        self.written: dict[int, list[np.ndarray]] = {}
        self.lock = threading.Lock()

    def load(self, split: str, day: int, buffer: np.ndarray):
        if day in self.existing:
            return self.data[day].copy(), False
        np.copyto(buffer, self.data[day])
        return buffer, True

    def write_tasks(self, split: str, day: int, data: np.ndarray):
        def task(half: int):
            def run() -> None:
                if day == self.fail_write:
                    raise OSError(f"disk full writing day {day}")
                time.sleep(self.write_delay)  # the next day is read meanwhile
                piece = data[half * 3:(half + 1) * 3].copy()
                with self.lock:
                    self.written.setdefault(day, []).append((half, piece))
            return run
        return [task(0), task(1)]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_pipeline_equals_the_serial_statistics_and_writes_each_day_once(workers):
    data = days(5)
    order = [("train", 0), ("train", 1), ("train", 2), ("val", 3), ("test", 4)]
    rec = Recorder(data, existing={2}, write_delay=0.01)
    clock = StageClock()
    with DayPipeline(order, rec.load, rec.write_tasks, lambda split: split == "train",
                     SHAPE, np.float32, clock, workers=workers) as pipeline:
        for split, day in order:
            got = pipeline.statistics(split, day)
            assert_bit_equal(got, DayStatistics.of(data[day], with_spread=split == "train"))
            if day not in rec.existing:
                # Written by the time its statistics are back, from an intact buffer
                # although the next day was read into the other buffer meanwhile.
                halves = dict(rec.written[day])
                assert np.array_equal(np.concatenate([halves[0], halves[1]]), data[day])
            # Nothing of the next day is written before its statistics are asked for.
            assert set(rec.written) == {d for _, d in order[:order.index((split, day)) + 1]
                                        if d not in rec.existing}
    assert sorted(rec.written) == [0, 1, 3, 4] and all(len(v) == 2 for v in rec.written.values())
    assert {"read", "statistics", "write"} <= set(clock.seconds)


def test_days_asked_out_of_order_are_read_on_the_spot():
    data = days(4)
    order = [("train", d) for d in range(4)]
    rec = Recorder(data, write_delay=0.005)
    with DayPipeline(order, rec.load, rec.write_tasks, lambda split: True, SHAPE, np.float32,
                     StageClock()) as pipeline:
        for day in (0, 2, 1, 3, 3):  # the read-ahead guesses wrong three times
            assert_bit_equal(pipeline.statistics("train", day), DayStatistics.of(data[day]))
            halves = dict(rec.written[day])
            assert np.array_equal(np.concatenate([halves[0], halves[1]]), data[day])


def test_a_failed_write_raises_and_the_pipeline_stops():
    data = days(3)
    order = [("train", d) for d in range(3)]
    rec = Recorder(data, fail_write=1)
    pipeline = DayPipeline(order, rec.load, rec.write_tasks, lambda split: True, SHAPE,
                           np.float32, StageClock())
    with pipeline:
        pipeline.statistics("train", 0)
        with pytest.raises(OSError, match="disk full writing day 1"):
            pipeline.statistics("train", 1)
    assert 2 not in rec.written
    with pytest.raises(RuntimeError):  # closed: no more work is taken
        pipeline.statistics("train", 2)


def test_a_failed_read_raises_after_the_current_day_is_done():
    data = days(2)
    order = [("train", 0), ("train", 1)]
    rec = Recorder(data, write_delay=0.02)

    def load(split, day, buffer):
        if day == 1:
            raise OSError("unreadable day 1")
        return rec.load(split, day, buffer)

    with DayPipeline(order, load, rec.write_tasks, lambda split: True, SHAPE, np.float32,
                     StageClock()) as pipeline, pytest.raises(OSError, match="unreadable"):
        pipeline.statistics("train", 0)
    assert len(rec.written[0]) == 2  # day 0 was completely written before the error left
