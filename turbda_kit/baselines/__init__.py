"""Baselines the kit is measured against: plain-torch reimplementations of peer codes.

``SeedViT``: the paper code's (jqyin/sqg_vit) ViT as its code computes it, for training
throughput comparisons (:mod:`turbda_kit.baselines.seed_vit`).
"""

from .seed_vit import SeedViT, seed_mse, seed_vit_from_config

__all__ = ["SeedViT", "seed_mse", "seed_vit_from_config"]
