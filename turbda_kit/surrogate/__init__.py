"""The ViT surrogate of SQG turbulence: model, trainer, export, rollouts, forecast model.

=================== ================================================================
``config``          :class:`ViTConfig` and the YAML presets
``vit``             :class:`ViT`, a plain ``nn.Module``
``flops``           parameter and FLOP counts
``training``        the trainer (:func:`train`, :class:`TrainConfig`, strategies, checkpoints)
``export``          the inference file (:func:`export_surrogate`, :func:`read_surrogate`)
``safe_loading``    reading checkpoint and export files without running code in them
``rollout``         autoregressive rollouts and their scores
``forecast_model``  :class:`SurrogateModel`, the ViT as a ``ForecastModel`` in K
=================== ================================================================
"""

from .config import ViTConfig, load_vit_config
from .export import (
    SurrogateExport,
    export_surrogate,
    load_surrogate,
    read_surrogate,
    save_surrogate,
)
from .forecast_model import SurrogateModel
from .rollout import (
    SplitRollout,
    iter_rollout,
    rollout,
    rollout_rmse,
    score_test_split,
    split_trajectory,
)
from .training import (
    TrainConfig,
    Trainer,
    TrainResult,
    build_deepspeed_config,
    load_train_config,
    rollout_loss,
    train,
    warmup_cosine,
)
from .vit import ViT

__all__ = ["ViTConfig", "load_vit_config", "ViT", "TrainConfig", "TrainResult", "Trainer",
           "train", "rollout_loss", "warmup_cosine", "build_deepspeed_config",
           "load_train_config", "SurrogateExport", "save_surrogate", "export_surrogate",
           "read_surrogate", "load_surrogate", "SurrogateModel", "iter_rollout", "rollout",
           "rollout_rmse", "SplitRollout", "score_test_split", "split_trajectory"]
