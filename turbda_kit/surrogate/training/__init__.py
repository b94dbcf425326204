"""The ViT trainer, one module per job.

=================== =============================================================
``config``          :class:`TrainConfig` (+ presets), the DeepSpeed config
``optim``           AdamW and the warm-up + cosine schedule (:func:`warmup_cosine`)
``losses``          :func:`rollout_loss`
``augment``         random periodic shifts along x
``batches``         which samples each rank trains and validates on
``strategies``      none / DDP / FSDP / DeepSpeed around the plain model
``evaluation``      validation metrics
``checkpoint``      checkpoint directories: atomic save, keep, resume
``checkpoint_files`` the files of one checkpoint, read without running code
``metrics_log``     ``metrics.csv`` and ``scalars.jsonl``
``loop``            :class:`Trainer` and the :func:`train` driver
=================== =============================================================
"""

from .batches import check_dataset
from .config import DS_CONFIG_PATH, TrainConfig, build_deepspeed_config, load_train_config
from .loop import Trainer, TrainResult, train
from .losses import rollout_loss
from .optim import warmup_cosine
from .strategies import DeepSpeedStrategy, StepOutcome, Strategy, TorchStrategy

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train", "warmup_cosine", "rollout_loss",
           "build_deepspeed_config", "load_train_config", "check_dataset", "DS_CONFIG_PATH",
           "Strategy", "StepOutcome", "TorchStrategy", "DeepSpeedStrategy"]
