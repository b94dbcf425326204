"""The training loop: a small :class:`Trainer` and the :func:`train` driver.

:class:`Trainer` is one rank's model (wrapped by its strategy), optimiser and loop
position: :meth:`~Trainer.train_step`, :meth:`~Trainer.validate`,
:meth:`~Trainer.state_dict` / :meth:`~Trainer.load_state_dict`. :func:`train` builds
one, restores a checkpoint when resuming, and runs epochs of steps with logging,
validation, early stopping, checkpoints and exports.

Outputs in ``out_dir``: ``metrics.csv`` and ``scalars.jsonl``
(:mod:`~turbda_kit.surrogate.training.metrics_log`), ``checkpoints/`` (resumable,
:mod:`~turbda_kit.surrogate.training.checkpoint`) and ``export/vit_last.pt`` /
``export/vit_best.pt`` (consolidated weights + config,
:func:`turbda_kit.surrogate.export.load_surrogate`).

Example
-------
>>> from turbda_kit.surrogate import TrainConfig, load_vit_config, train  # doctest: +SKIP
>>> result = train(load_vit_config("tiny"), TrainConfig(max_steps=100), dataset,
...                "runs/vit_tiny", val_data=val_dataset)      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset

from ...errors import InputError
from ...parallel import distributed as pdist
from ...progress import progress_bar
from ..config import ViTConfig
from ..export import read_surrogate, save_surrogate
from ..flops import achieved_tflops
from ..matmul import set_matmul_backend
from ..vit import ViT
from . import checkpoint_files as files
from .batches import (
    Batch,
    check_dataset,
    micro_batches_per_epoch,
    sharded_by_rank,
    train_batches,
)
from .checkpoint import CheckpointKeeper, check_resumable, load_checkpoint, resolve_resume
from .config import TrainConfig
from .evaluation import Denormalise, evaluate
from .metrics_log import MetricsLog, peak_memory_gb
from .strategies import StepOutcome, build_strategy

__all__ = ["Progress", "Trainer", "TrainResult", "train"]

STATE_FORMAT = 1
"""Version of ``trainer_state.json``."""


@dataclass
class Progress:
    """Where the loop is, and the early-stopping state (saved in every checkpoint).

    Attributes
    ----------
    step, epoch : int
        Optimiser steps done; the current epoch.
    position : int
        Micro-batches of this epoch already consumed (where a resumed run continues).
    best_val_loss : float or None
        Lowest validation loss so far.
    best_step : int or None
        Its step.
    evals_without_improvement : int
        Validations since the last improvement (patience).
    last_val_step : int
        Step of the last validation (-1: none), so a step is validated once.
    """

    step: int = 0
    epoch: int = 0
    position: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    last_val_step: int = -1


class Trainer:
    """One rank's model, optimiser and loop position.

    Parameters
    ----------
    model_config : ViTConfig
    train_config : TrainConfig
    env : DistEnv
        This rank (the process group must be up for distributed strategies).
    device : torch.device
    total_steps : int
        Length of the learning-rate schedule.
    initial_state : dict of str to Tensor, optional
        Weights to start from (a fine-tune) instead of the seeded initialisation.
    """

    def __init__(self, model_config: ViTConfig, train_config: TrainConfig, env: pdist.DistEnv,
                 device: torch.device, total_steps: int,
                 initial_state: dict[str, Tensor] | None = None):
        self.model_config, self.config, self.env, self.device = (model_config, train_config,
                                                                  env, device)
        # Dropout and drop-path draw from the global generator: one stream per rank.
        torch.manual_seed(train_config.seed + 7919 * env.rank)
        model = ViT(model_config, generator=torch.Generator().manual_seed(train_config.seed))
        if initial_state is not None:
            model.load_state_dict(initial_state)
        # Kernel choice before any wrapping (DDP/FSDP/DeepSpeed see the chosen layers).
        set_matmul_backend(model, train_config.matmul_backend)
        self.strategy = build_strategy(model.to(device), train_config, env, device, total_steps)
        self.progress = Progress()

    def train_step(self, micro_batches: Sequence[Batch]) -> StepOutcome:
        """One optimiser step over ``grad_accum_steps`` micro-batches; advances the position."""
        outcome = self.strategy.train_step(micro_batches)
        self.progress.step += 1
        self.progress.position += len(micro_batches)
        return outcome

    def validate(self, data: Dataset, denormalise: Denormalise | None = None
                 ) -> dict[str, float]:
        """Validation metrics at this step (collective); see :func:`evaluate`."""
        self.progress.last_val_step = self.progress.step
        return evaluate(self.strategy, data, self.model_config, self.config.batch_size,
                        self.env, self.device, denormalise)

    def record_validation(self, val_loss: float) -> bool:
        """Update the best loss and the patience; True when ``val_loss`` is a new best."""
        p = self.progress
        if p.best_val_loss is None or val_loss < p.best_val_loss - self.config.min_delta:
            p.best_val_loss, p.best_step, p.evals_without_improvement = val_loss, p.step, 0
            return True
        p.evals_without_improvement += 1
        return False

    @property
    def patience_exhausted(self) -> bool:
        """Whether early stopping is due."""
        return (self.config.patience is not None
                and self.progress.evals_without_improvement >= self.config.patience)

    def end_epoch(self) -> None:
        """Move to the next epoch's first micro-batch."""
        self.progress.epoch += 1
        self.progress.position = 0

    def state_dict(self) -> dict[str, Any]:
        """The JSON part of a checkpoint: position, early-stopping state, configs."""
        return {"format": STATE_FORMAT, **dataclasses.asdict(self.progress),
                "world_size": self.env.world_size, "model_config": self.model_config.to_dict(),
                "train_config": self.config.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position and early-stopping state of :meth:`state_dict`."""
        names = {f.name for f in dataclasses.fields(Progress)}
        self.progress = Progress(**{k: v for k, v in state.items() if k in names})

    @torch.no_grad()
    def predict(self, fields: Tensor, lead_time_hours: Tensor) -> Tensor:
        """Forecast of the trained model in eval mode, float32 (collective when sharded)."""
        self.strategy.eval()
        return self.strategy.forward(fields.to(self.device),
                                     lead_time_hours.to(self.device)).float()


@dataclass
class TrainResult:
    """What a training run did (identical on every rank).

    Attributes
    ----------
    step, epoch : int
        Optimiser steps done and epochs started.
    step_losses : dict of int to float
        Mean training loss (over ranks and micro-batches, normalised units) of each step
        run in this call.
    history : list of dict
        All metric rows (also in ``metrics.csv``), including those of resumed runs.
    best_val_loss : float or None
        Lowest validation loss (mean MSE over variables, normalised units).
    best_step : int or None
        Step of ``best_val_loss``.
    stopped_early : bool
        Whether early stopping ended the run.
    last_checkpoint, best_checkpoint : str or None
        Checkpoint directories.
    export_path, best_export_path : str or None
        Consolidated inference files.
    model : nn.Module or None
        The trained, still wrapped model (DDP/FSDP module or DeepSpeed engine).
    predict : callable or None
        ``predict(fields (B, V, N, N), lead_time_hours (B,)) -> (B, V, N, N)`` float32
        forecast of the trained model in eval mode, with the run's precision; collective
        for sharded strategies (call on every rank).
    """

    step: int = 0
    epoch: int = 0
    step_losses: dict[int, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    export_path: str | None = None
    best_export_path: str | None = None
    model: Any = field(default=None, repr=False, compare=False)
    predict: Callable[[Tensor, Tensor], Tensor] | None = field(default=None, repr=False,
                                                               compare=False)


class _Run:
    """The driver's bookkeeping around a :class:`Trainer`: logs, checkpoints, exports."""

    def __init__(self, trainer: Trainer, keeper: CheckpointKeeper, log: MetricsLog,
                 result: TrainResult, out_dir: Path, val_data: Dataset | None,
                 denormalise: Denormalise | None, last_saved_step: int):
        self.trainer, self.keeper, self.log, self.result = trainer, keeper, log, result
        self.out_dir, self.val_data, self.denormalise = out_dir, val_data, denormalise
        self.last_saved_step = last_saved_step
        self.interval: list[tuple[int, Tensor]] = []
        self.interval_start = time.perf_counter()

    @property
    def step(self) -> int:
        return self.trainer.progress.step

    def save_checkpoint(self) -> Path:
        state = {**self.trainer.state_dict(), "history": self.log.rows}
        path = self.keeper.save(self.trainer.strategy, self.step, state, self.trainer.device)
        self.last_saved_step = self.step
        self.result.last_checkpoint = str(path)
        return path

    def export(self, name: str, metadata: dict[str, Any]) -> str:
        state = self.trainer.strategy.full_state_dict()   # collective for sharded strategies
        path = self.out_dir / "export" / name
        if self.trainer.env.is_main:
            save_surrogate(self.trainer.model_config, state, path, metadata)
        pdist.barrier()
        return str(path)

    def log_step(self, outcome: StepOutcome, total_steps: int) -> dict[str, Any] | None:
        """Collect the step's loss; every ``log_every`` steps write a train row."""
        trainer, tc = self.trainer, self.trainer.config
        self.interval.append((self.step, outcome.loss))
        if self.step % tc.log_every and self.step < total_steps:
            return None
        steps = [s for s, _ in self.interval]
        losses = pdist.all_reduce_mean(torch.stack([loss for _, loss in self.interval]).float())
        self.result.step_losses.update(zip(steps, losses.tolist()))
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = max(time.perf_counter() - self.interval_start, 1e-9)
        world = trainer.env.world_size
        rate = len(steps) * tc.batch_size * world * tc.grad_accum_steps / elapsed
        row = {"step": self.step, "epoch": trainer.progress.epoch, "kind": "train",
               "train_loss": sum(losses.tolist()) / len(steps), "lr": outcome.lr,
               "grad_norm": outcome.grad_norm, "samples_per_s": rate,
               "tokens_per_s": rate * trainer.model_config.n_tokens,
               "tflops_per_device": achieved_tflops(trainer.model_config, rate, world),
               "peak_mem_gb": peak_memory_gb(device)}
        self.log.add(row)
        self.interval = []
        self.interval_start = time.perf_counter()
        return row

    def validate(self) -> bool:
        """Validate once per step, log, track the best; True when early stopping fires."""
        trainer = self.trainer
        if self.val_data is None or trainer.progress.last_val_step == self.step:
            return False
        metrics = trainer.validate(self.val_data, self.denormalise)
        self.log.add({"step": self.step, "epoch": trainer.progress.epoch, "kind": "val",
                      **metrics})
        val_loss = metrics["val_loss"]
        if trainer.record_validation(val_loss):
            path = self.save_checkpoint()
            self.keeper.mark_best(path, self.step, val_loss)
            self.result.best_checkpoint = str(path)
            self.result.best_export_path = self.export(
                "vit_best.pt", {"step": self.step, "val_loss": val_loss})
            return False
        return trainer.patience_exhausted

    def run_epoch(self, train_data: Dataset, total_steps: int, bar: Any) -> tuple[bool, int]:
        """Steps until the epoch's data runs out or training stops; (stop, steps taken)."""
        trainer, tc = self.trainer, self.trainer.config
        progress = trainer.progress
        batches = train_batches(train_data, tc, trainer.env, progress.epoch, progress.position,
                                trainer.device.type == "cuda")
        taken = 0
        while True:
            group = [b for _, b in zip(range(tc.grad_accum_steps), batches)]
            complete = len(group) == tc.grad_accum_steps
            if sharded_by_rank(train_data) and pdist.is_distributed():
                # Ranks read their own streams: all stop when the first runs dry.
                flag = torch.tensor([float(complete)], device=trainer.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                complete = bool(flag.item())
            if not complete:
                return False, taken
            outcome = trainer.train_step(group)
            taken += 1
            bar.update(1)
            row = self.log_step(outcome, total_steps)
            if row is not None:
                bar.set_postfix_str(f"loss {row['train_loss']:.4g}")
            stop = False
            if tc.eval_every and self.step % tc.eval_every == 0:
                stop = self.result.stopped_early = self.validate()
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 \
                    and self.last_saved_step != self.step:
                self.save_checkpoint()
            if stop or self.step >= total_steps:
                return True, taken

    def run(self, train_data: Dataset, total_steps: int, show_progress: bool | None) -> None:
        """Epochs until ``total_steps``, ``max_epochs`` or early stopping."""
        trainer, tc = self.trainer, self.trainer.config
        progress = trainer.progress
        bar = progress_bar(total=total_steps, desc=f"train vit ({tc.strategy})",
                           enabled=show_progress)
        if progress.step:
            bar.update(progress.step)
        stop = progress.step >= total_steps
        while not stop and (tc.max_epochs is None or progress.epoch < tc.max_epochs):
            stopped_in_epoch, taken = self.run_epoch(train_data, total_steps, bar)
            stop = stopped_in_epoch
            # End of an epoch, or of training: validate once at this step.
            if not self.result.stopped_early and self.validate():
                self.result.stopped_early = stop = True
            if not stopped_in_epoch:   # the data ran out: the epoch is complete
                if taken == 0 and progress.position == 0:
                    break   # an iterable dataset too short for one step: nothing more to do
                trainer.end_epoch()
        bar.close()


def _initial_weights(init_weights: str | os.PathLike | None, config: ViTConfig
                     ) -> dict[str, Tensor] | None:
    if init_weights is None:
        return None
    initial_model = read_surrogate(init_weights).model
    # Regularisation may change for a fine-tune; what the weights mean may not.
    free = {"name", "drop_rate", "attn_drop_rate", "drop_path_rate"}
    have = {k: v for k, v in initial_model.config.to_dict().items() if k not in free}
    want = {k: v for k, v in config.to_dict().items() if k not in free}
    if have != want:
        differ = sorted(k for k in want if have.get(k) != want[k])
        raise InputError(f"init_weights {init_weights} holds a model that differs from "
                         f"model_config in {differ} ({[have.get(k) for k in differ]} vs "
                         f"{[want[k] for k in differ]}): fine-tune the same architecture")
    return initial_model.state_dict()


def _check_inputs(config: ViTConfig, train_config: TrainConfig, train_data: Dataset,
                  val_data: Dataset | None, denormalise: Denormalise | None, env: pdist.DistEnv
                  ) -> tuple[torch.device, int]:
    """Refuse what cannot train (InputError, before any compute); the device and the
    schedule's length in optimiser steps."""
    if not isinstance(config, ViTConfig):
        raise InputError(f"model_config must be a ViTConfig, got {type(config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise InputError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    tc = train_config
    if tc.strategy == "none" and env.world_size > 1:
        raise InputError(f"strategy='none' but this launch has world_size={env.world_size}: "
                         "choose 'ddp', 'fsdp' or 'deepspeed'")
    device = pdist.device_for(env)
    if tc.precision == "fp16" and device.type == "cpu":
        raise InputError("precision='fp16' is not supported on CPU: use 'bf16' or 'fp32'")
    check_dataset(train_data, config, "train_data",
                  min_samples=tc.batch_size * env.world_size * tc.grad_accum_steps)
    if val_data is not None:
        check_dataset(val_data, config, "val_data")
    if denormalise is not None and not callable(denormalise) and len(denormalise) != config.n_vars:
        raise InputError(f"denormalise has {len(denormalise)} standard deviations; the model "
                         f"has {config.n_vars} variables")
    if tc.max_steps is not None:
        return device, tc.max_steps
    micro_per_epoch = micro_batches_per_epoch(train_data, tc, env.world_size)
    if micro_per_epoch is None:
        raise InputError("an IterableDataset needs max_steps (its length is unknown)")
    return device, tc.max_epochs * (micro_per_epoch // tc.grad_accum_steps)


def _restore(trainer: Trainer, path: Path, saved: dict[str, Any], out_dir: Path,
             result: TrainResult) -> list[dict[str, Any]]:
    """Load the checkpoint at ``path`` into ``trainer``; the metric rows up to its step."""
    load_checkpoint(trainer.strategy, path, trainer.env, trainer.device)
    trainer.load_state_dict(saved)
    progress = trainer.progress
    result.last_checkpoint = str(path)
    if progress.best_step is not None:
        if (path.parent / "best.json").exists():
            keeper = CheckpointKeeper(path.parent, trainer.env, trainer.config.keep_checkpoints)
            result.best_checkpoint = str(keeper.best())
        # The best export of the interrupted run stays valid until a better one replaces it.
        best_export = out_dir / "export" / "vit_best.pt"
        if best_export.exists():
            result.best_export_path = str(best_export)
    return [row for row in saved["history"] if row["step"] <= progress.step]


def train(model_config: ViTConfig, train_config: TrainConfig, train_data: Dataset,
          out_dir: str | os.PathLike, *, val_data: Dataset | None = None,
          resume: bool | str | os.PathLike | None = None,
          denormalise: Denormalise | None = None,
          env: pdist.DistEnv | None = None, show_progress: bool | None = None,
          init_weights: str | os.PathLike | None = None) -> TrainResult:
    """Train the ViT surrogate; every rank of a parallel launch calls this.

    Parameters
    ----------
    model_config : ViTConfig
        Architecture.
    train_config : TrainConfig
        Hyperparameters and distribution strategy.
    train_data : Dataset
        Map-style or iterable; items ``(input (V, N, N), target, lead_time_hours)``,
        normalised. The target is ``(V, N, N)``, or ``(k, V, N, N)`` to train on
        autoregressive rollouts of ``k`` steps (:func:`rollout_loss`; e.g.
        :class:`~turbda_kit.surrogate.rollout.TrajectoryPairs` with ``rollout_steps``).
    out_dir : path-like
        Where metrics, checkpoints and exports go (shared by all ranks).
    val_data : Dataset, optional
        Validation samples (same item format): RMSE per variable, early stopping, best
        checkpoint.
    resume : bool, "auto", path or None
        ``True``: continue from ``out_dir/checkpoints/latest.json`` (must exist); ``"auto"``:
        the same when it exists, else start fresh; a checkpoint directory: from there.
        Every checkpoint file is read with a restricted unpickler: a file holding anything
        but data is refused with an InputError naming it, and nothing in it runs.
    denormalise : sequence of float or callable, optional
        Per-variable standard deviations (K) of the normalisation, or a function mapping
        normalised ``(B, V, N, N)`` fields to K: validation RMSEs are then also reported in K.
    env : DistEnv, optional
        Launch description; discovered from the environment by default. The process group
        is initialised here when needed and left up (call
        :func:`turbda_kit.parallel.distributed.shutdown` at the end of the driver).
    show_progress : bool or None
        Progress lines/bar; None reports on rank 0 only.
    init_weights : path-like or None
        Start from the weights of an export (:func:`~turbda_kit.surrogate.export.
        save_surrogate`, e.g. ``vit_best.pt`` of an earlier run) instead of a fresh
        initialisation, to fine-tune it. Its architecture must equal ``model_config``.
        Ignored when resuming (the checkpoint holds the weights).

    Returns
    -------
    TrainResult
    """
    out_dir = Path(out_dir)
    env = env or pdist.discover_env()
    device, total_steps = _check_inputs(model_config, train_config, train_data, val_data,
                                        denormalise, env)
    initial_state = _initial_weights(init_weights, model_config)
    resume_path = resolve_resume(resume, out_dir)
    saved: dict[str, Any] | None = None
    if resume_path is not None:
        saved = files.read_trainer_state(resume_path)
        check_resumable(saved, model_config, train_config, env, resume_path)

    # --- set-up (no training compute before this point)
    if train_config.strategy != "none":
        pdist.init_distributed(env)
    trainer = Trainer(model_config, train_config, env, device, total_steps,
                      initial_state if saved is None else None)
    result, history = TrainResult(), []
    if saved is not None:
        history = _restore(trainer, resume_path, saved, out_dir, result)
    run = _Run(trainer, CheckpointKeeper(out_dir / "checkpoints", env,
                                         train_config.keep_checkpoints),
               MetricsLog(out_dir, env.is_main, history), result, out_dir, val_data,
               denormalise, last_saved_step=trainer.progress.step if saved is not None else -1)
    run.run(train_data, total_steps, show_progress)

    progress = trainer.progress
    if run.last_saved_step != progress.step:
        run.save_checkpoint()
    result.export_path = run.export("vit_last.pt", {"step": progress.step})
    result.step, result.epoch = progress.step, progress.epoch
    result.best_val_loss, result.best_step = progress.best_val_loss, progress.best_step
    result.history = list(run.log.rows)
    result.model = trainer.strategy.model
    result.predict = trainer.predict
    return result
