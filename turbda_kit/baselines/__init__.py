"""Faithful reimplementations of the algorithms the kit is compared against.

Each module reproduces one published code's algorithm step by step (our own code, written
from a reading of the original) and serves as the accuracy reference and the speed
baseline of the kit's counterpart:

* :mod:`turbda_kit.baselines.sqgturb` — J. Whitaker's ``sqgturb`` SQG model, one member
  at a time in NumPy (:class:`SqgturbModel`); the kit's ``SQGParams(sqgturb_compat=True)``
  matches it to round-off.
"""

from .sqgturb import SqgturbModel

__all__ = ["SqgturbModel"]
