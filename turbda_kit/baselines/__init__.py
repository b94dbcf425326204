"""Faithful reimplementations of the codes the kit is compared against.

Each module reproduces one published code's algorithm as that code computes it (our own
code, written from a reading of the original) and serves as the accuracy reference and the
speed baseline of the kit's counterpart:

* :mod:`turbda_kit.baselines.sqgturb` — J. Whitaker's ``sqgturb`` SQG model, one member at
  a time in NumPy (:class:`SqgturbModel`); the kit's ``SQGParams(sqgturb_compat=True)``
  matches it to round-off.
* :mod:`turbda_kit.baselines.seed_vit` — the paper code's (jqyin/sqg_vit) ViT in plain
  torch (:class:`SeedViT`), for training-throughput comparisons.
"""

from .seed_vit import SeedViT, seed_mse, seed_vit_from_config
from .sqgturb import SqgturbModel

__all__ = ["SeedViT", "SqgturbModel", "seed_mse", "seed_vit_from_config"]
