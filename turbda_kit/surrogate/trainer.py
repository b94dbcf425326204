"""The trainer's public names, kept importable from here.

The trainer lives in :mod:`turbda_kit.surrogate.training`, one module per job (config,
strategies, checkpoints, batches, loop); its public names are also exported by
:mod:`turbda_kit.surrogate`.
"""

from .training import (
    DS_CONFIG_PATH,
    TrainConfig,
    TrainResult,
    build_deepspeed_config,
    check_dataset,
    load_train_config,
    rollout_loss,
    train,
    warmup_cosine,
)

__all__ = ["TrainConfig", "TrainResult", "train", "warmup_cosine", "check_dataset", "rollout_loss",
           "build_deepspeed_config", "load_train_config", "DS_CONFIG_PATH"]
