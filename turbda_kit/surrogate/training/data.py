"""The training and validation sets of a shard root, as the training workflow offers them.

Two loaders (notebook 03's ``loader`` parameter):

* ``"trajectory"`` — every ``(state, state one lead later)`` pair of each split, the split
  joined into one trajectory in memory (:class:`~turbda_kit.surrogate.rollout.
  TrajectoryPairs`); with ``rollout_steps = k > 1`` each target is the next ``k`` states;
* ``"shards"`` — ClimaX's in-shard pairs, streamed and shuffled per rank
  (:class:`~turbda_kit.data.datasets.ForecastShards`), one-step targets only.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from ...data.datasets import ForecastSamples, ForecastShards
from ...data.shards import ShardCatalog
from ...errors import InputError
from ...parallel.distributed import DistEnv
from ..rollout import TrajectoryPairs, split_trajectory

__all__ = ["LOADERS", "training_datasets"]

LOADERS = ("trajectory", "shards")


def training_datasets(catalog: ShardCatalog, *, loader: str = "trajectory", lead_steps: int = 1,
                      rollout_steps: int = 1, seed: int = 0, env: DistEnv | None = None
                      ) -> tuple[Dataset, Dataset]:
    """Normalised training and validation samples of a shard root.

    Parameters
    ----------
    catalog : ShardCatalog
        From :func:`turbda_kit.data.shards.open_shards`.
    loader : {"trajectory", "shards"}
        See the module docstring.
    lead_steps : int
        Data steps between an input and its target.
    rollout_steps : int
        Targets per sample (autoregressive training); ``"trajectory"`` only.
    seed : int
        Shuffling of the streamed shards.
    env : DistEnv, optional
        This rank, for the streamed shards (each rank reads its own).

    Returns
    -------
    (train_data, val_data)
        Items ``(input, target, lead_time_hours)`` for :func:`~turbda_kit.surrogate.
        training.loop.train`.
    """
    if catalog.hours_per_step is None:
        raise InputError(f"{catalog.root} has no manifest.json giving the time between steps: "
                         "for a published (ClimaX/seed-layout) root give it, e.g. "
                         "open_shards(root, hours_per_step=12.0) or notebook 03's "
                         "-p hours_per_step 12; or preprocess the nature run with 02_preprocess")
    if loader == "trajectory":
        hours = catalog.hours_per_step
        return tuple(TrajectoryPairs(split_trajectory(catalog, split)[0], catalog.normaliser,
                                     lead_steps, hours, rollout_steps=rollout_steps)
                     for split in ("train", "val"))
    if loader not in LOADERS:
        raise InputError(f"loader={loader!r}: use one of {LOADERS}")
    if rollout_steps != 1:
        raise InputError(f"rollout_steps={rollout_steps} needs loader='trajectory' "
                         "(in-shard pairs hold one target)")
    env = env or DistEnv()
    train = ForecastShards(catalog, "train", lead_steps=lead_steps, shuffle=True,
                           buffer_size=64, seed=seed, rank=env.rank, world_size=env.world_size)
    return train, ForecastSamples(catalog, "val", lead_steps=lead_steps)
