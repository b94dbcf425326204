"""Train / validation / test days of a nature run, and the names of the output variables.

A *day* is ``floor(time / 86400 s)`` with ``time`` in seconds since the run's time zero
(:mod:`turbda_kit.data.time_axis`). The splits are contiguous ranges of days, like
ClimaX's ``start_*_year`` boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

__all__ = ["SECONDS_PER_DAY", "SPLITS", "SplitDays", "variable_names"]

SPLITS = ("train", "val", "test")
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class SplitDays:
    """Day boundaries of the train/val/test splits (ClimaX's ``start_*_year`` for days).

    ``train = [start_train_day, start_val_day)``, ``val = [start_val_day, start_test_day)``,
    ``test = [start_test_day, end_day)``; ``end_day`` is exclusive. Every split must hold
    at least one day.
    """

    start_train_day: int
    start_val_day: int
    start_test_day: int
    end_day: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"{name}={value!r} must be an integer day number")
            if value < 0:
                raise InputError(f"{name}={value} must be >= 0 (days count from the start "
                                 "of the nature run's output)")
        if not (self.start_train_day < self.start_val_day < self.start_test_day
                < self.end_day):
            raise InputError(
                "split days must be strictly increasing, start_train_day < start_val_day < "
                f"start_test_day < end_day (each split at least one day); got "
                f"{self.start_train_day}, {self.start_val_day}, {self.start_test_day}, "
                f"{self.end_day}")

    def days(self, split: str) -> range:
        """Days of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        bounds = {"train": (self.start_train_day, self.start_val_day),
                  "val": (self.start_val_day, self.start_test_day),
                  "test": (self.start_test_day, self.end_day)}
        if split not in bounds:
            raise InputError(f"split={split!r} must be one of {', '.join(SPLITS)}")
        return range(*bounds[split])

    @property
    def all_days(self) -> range:
        """``range(start_train_day, end_day)``."""
        return range(self.start_train_day, self.end_day)

    def split_of(self, day: int) -> str:
        """The split holding ``day``."""
        for split in SPLITS:
            if day in self.days(split):
                return split
        raise InputError(f"day={day} is outside [{self.start_train_day}, {self.end_day})")


def variable_names(name: str, levels: Sequence[float]) -> list[str]:
    """ClimaX-style names ``{name}_{level}`` with the level in whole metres (``sqg_0``)."""
    return [f"{name}_{int(round(float(level)))}" for level in levels]
