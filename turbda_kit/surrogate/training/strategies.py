"""Distribution strategies: the plain ViT wrapped for training, with its optimiser.

The model file imports nothing from :mod:`torch.distributed`. A strategy takes the plain
model and applies, torchtitan style, activation checkpointing, ``torch.compile`` and data
parallelism (:func:`turbda_kit.parallel.distributed.parallelize`), or hands model,
optimiser and schedule to DeepSpeed. It then runs one optimiser step, the forward pass for
evaluation, and saves and loads its part of a checkpoint.

* :class:`TorchStrategy` — ``"none"``, ``"ddp"`` and ``"fsdp"`` (FSDP1, FULL_SHARD,
  SHARD_GRAD_OP, HYBRID_SHARD, NO_SHARD; bf16 through FSDP's mixed-precision policy),
  checkpoints in ``torch.distributed.checkpoint`` with FQN keys, so none/ddp/fsdp
  checkpoints load into each other;
* :class:`DeepSpeedStrategy` — ``deepspeed.initialize`` with ZeRO stage 0-3, a client torch
  AdamW and LambdaLR; checkpoints in DeepSpeed's format.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ...errors import InputError
from ...optional import require
from ...parallel import distributed as pdist
from ..safe_loading import describe_refusal
from ..vit import Block, ViT
from . import checkpoint_files as files
from .batches import Batch
from .config import DTYPES, TrainConfig, build_deepspeed_config
from .losses import rollout_loss
from .optim import build_optimizer, build_scheduler

__all__ = ["Strategy", "StepOutcome", "TorchStrategy", "DeepSpeedStrategy", "build_strategy"]


@dataclass(frozen=True)
class StepOutcome:
    """What one optimiser step did on this rank.

    Attributes
    ----------
    loss : Tensor, 0-d
        Mean loss over the step's micro-batches (normalised units, detached).
    lr : float
        Learning rate the update used.
    grad_norm : float or None
        Global gradient norm before clipping (None without clipping).
    """

    loss: Tensor
    lr: float
    grad_norm: float | None


class Strategy(Protocol):
    """What the training loop needs of a distribution strategy."""

    model: nn.Module
    """The wrapped model (DDP/FSDP module, DeepSpeed engine, or the plain ViT)."""

    def train_step(self, micro_batches: Sequence[Batch]) -> StepOutcome:
        """Forward, backward and one optimiser step over ``grad_accum_steps`` micro-batches."""
        ...

    def forward(self, inputs: Tensor, leads: Tensor) -> Tensor:
        """The wrapped model's forecast at the run's precision (collective when sharded)."""
        ...

    def train(self) -> None: ...

    def eval(self) -> None: ...

    def save(self, directory: Path) -> None:
        """Write model, optimiser and schedule into a checkpoint directory (collective)."""
        ...

    def load(self, directory: Path) -> None:
        """Read them back, refusing files that hold anything but data (collective)."""
        ...

    def full_state_dict(self) -> dict[str, Tensor] | None:
        """Consolidated weights on rank 0 (None elsewhere); collective when sharded."""
        ...


def _dcp_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Flat "param_groups.<fqn>.lr" keys: a fresh FSDP rank's nested param_groups list does
    # not always match the saved one's structure (torch 2.13), the flat form always does.
    return StateDictOptions(flatten_optimizer_state_dict=True)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    inputs, targets, leads = (t.to(device, non_blocking=True) for t in batch)
    return inputs, targets, leads


class TorchStrategy:
    """Model, optimiser, schedule and grad scaler for ``none``, ``ddp`` and ``fsdp``.

    Parameters
    ----------
    model : ViT
        The plain model on ``device``.
    config : TrainConfig
    env : DistEnv
    device : torch.device
    total_steps : int
        Length of the learning-rate schedule.
    """

    def __init__(self, model: ViT, config: TrainConfig, env: pdist.DistEnv, device: torch.device,
                 total_steps: int):
        self.config, self.env, self.device = config, env, device
        dtype = DTYPES[config.precision]
        self.model = pdist.parallelize(
            model, config.strategy, device=device, env=env, sharding=config.sharding,
            param_dtype=dtype if config.strategy == "fsdp" else None, block_types=(Block,),
            activation_checkpointing=config.activation_checkpointing, compile=config.compile)
        self.optimizer = build_optimizer(self.model.parameters(), config)
        self.scheduler = build_scheduler(self.optimizer, config, total_steps)
        # FSDP casts through its mixed-precision policy; the others autocast.
        use_autocast = config.precision != "fp32" and config.strategy != "fsdp"
        self.autocast = functools.partial(torch.autocast, device.type, dtype=dtype,
                                          enabled=use_autocast)
        if config.strategy == "fsdp":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.scaler = ShardedGradScaler(device.type, enabled=config.precision == "fp16")
        else:
            self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def forward(self, inputs: Tensor, leads: Tensor) -> Tensor:
        with self.autocast():
            return self.model(inputs, leads)

    def train_step(self, micro_batches: Sequence[Batch]) -> StepOutcome:
        self.model.train()
        losses = []
        for i, batch in enumerate(micro_batches):
            inputs, targets, leads = _to_device(batch, self.device)
            # Gradients are all-reduced on the last micro-batch only.
            sync = i == len(micro_batches) - 1 or self.config.strategy == "none"
            with contextlib.nullcontext() if sync else self.model.no_sync():
                loss = rollout_loss(self.forward, inputs, targets, leads)
                self.scaler.scale(loss / self.config.grad_accum_steps).backward()
            losses.append(loss.detach())
        lr = float(self.optimizer.param_groups[0]["lr"])   # the rate this update uses
        norm = None
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            if self.config.strategy == "fsdp":
                norm = self.model.clip_grad_norm_(self.config.grad_clip)
            else:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                      self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return StepOutcome(torch.stack(losses).mean(), lr,
                           float(norm) if norm is not None else None)

    def save(self, directory: Path) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer,
                                                  options=_dcp_options())
        files.save_dcp({"model": model_state, "optim": optim_state}, directory / "dcp")
        if self.env.is_main:
            files.save_torch_file({"scheduler": self.scheduler.state_dict(),
                                   "scaler": self.scaler.state_dict()}, directory / "extras.pt")

    def load(self, directory: Path) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if not (directory / "dcp").exists():
            raise InputError(f"{directory} holds no torch.distributed.checkpoint data (was it "
                             "written by the deepspeed strategy?)")
        extras, error = None, None
        try:   # every rank reads the same small file; check it before the collective load
            extras = files.load_torch_file(directory / "extras.pt")
            if not isinstance(extras, dict) or "scheduler" not in extras:
                raise InputError(f"checkpoint file {directory / 'extras.pt'} holds no "
                                 "scheduler state")
        except InputError as err:
            error = str(err)
        files.agree(error)
        model_state, optim_state = get_state_dict(self.model, self.optimizer,
                                                  options=_dcp_options())
        state = {"model": model_state, "optim": optim_state}
        files.load_dcp(state, directory / "dcp")
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=_dcp_options())
        self.scheduler.load_state_dict(extras["scheduler"])
        if extras.get("scaler"):
            self.scaler.load_state_dict(extras["scaler"])

    def full_state_dict(self) -> dict[str, Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Offloading (rank-0-only gather into CPU memory) is what big GPU models need; on
        # CPU ranks FSDP1's offload path crashes (SIGSEGV, torch 2.13) and is pointless.
        offload = self.device.type == "cuda"
        state = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=offload))
        return state if self.env.is_main else None


class DeepSpeedStrategy:
    """A DeepSpeed engine (ZeRO 0-3) around the model, a client AdamW and LambdaLR.

    Parameters are those of :class:`TorchStrategy`.
    """

    def __init__(self, model: ViT, config: TrainConfig, env: pdist.DistEnv, device: torch.device,
                 total_steps: int):
        self.config, self.env, self.device = config, env, device
        pdist.parallelize(model, "deepspeed", device=device, block_types=(Block,),
                       activation_checkpointing=config.activation_checkpointing,
                       compile=config.compile)
        optimizer = build_optimizer(model.parameters(), config)
        scheduler = build_scheduler(optimizer, config, total_steps)
        self.model = self.engine = pdist.deepspeed_initialize(
            model, optimizer, scheduler, build_deepspeed_config(config, env.world_size))
        self.input_dtype = DTYPES[config.precision] if config.precision != "fp32" \
            else torch.float32

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def forward(self, inputs: Tensor, leads: Tensor) -> Tensor:
        return self.engine(inputs.to(self.input_dtype), leads.to(self.input_dtype))

    def train_step(self, micro_batches: Sequence[Batch]) -> StepOutcome:
        self.engine.train()
        losses, lr = [], None
        for i, batch in enumerate(micro_batches):
            inputs, targets, leads = _to_device(batch, self.device)
            loss = rollout_loss(self.forward, inputs, targets, leads)
            self.engine.backward(loss)   # scales by 1/grad_accum itself
            if i == len(micro_batches) - 1:
                # Read before the boundary's engine.step(), which advances the schedule.
                lr = float(self.engine.get_lr()[0])
            self.engine.step()           # optimiser + scheduler step at the boundary
            losses.append(loss.detach())
        norm = getattr(self.engine, "get_global_grad_norm", lambda: None)()
        return StepOutcome(torch.stack(losses).mean(), lr,
                           float(norm) if norm is not None else None)

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)
        if self.env.is_main:   # rank 0 copied them, in its own call
            files.remove_helper_scripts(directory / "deepspeed")

    def load(self, directory: Path) -> None:
        root = directory / "deepspeed"
        if not root.exists():
            raise InputError(f"{directory} holds no DeepSpeed checkpoint (was it written by a "
                             "torch strategy?)")
        error = None
        try:   # every rank checks every file before DeepSpeed reads any of them
            files.verify_deepspeed_checkpoint(root)
        except InputError as err:
            error = str(err)
        files.agree(error)
        try:
            with files.deepspeed_loading():
                path, _ = self.engine.load_checkpoint(str(root), tag="state",
                                                      load_optimizer_states=True,
                                                      load_lr_scheduler_states=True)
        except pickle.UnpicklingError as err:   # a file replaced after the check above
            raise InputError(f"a file of the DeepSpeed checkpoint {root} changed after it was "
                             f"checked and holds {describe_refusal(err)}: it was refused "
                             "unbuilt, nothing in it ran; resume from another checkpoint"
                             ) from None
        if path is None:
            raise InputError(f"DeepSpeed could not load the checkpoint in {directory}")

    def full_state_dict(self) -> dict[str, Tensor] | None:
        module = self.engine.module
        if self.config.zero_stage == 3:
            deepspeed = require("deepspeed", "DeepSpeed training")
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                state = ({k: v.detach().float().cpu().clone()
                          for k, v in module.state_dict().items()} if self.env.is_main else None)
            return state
        return ({k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
                if self.env.is_main else None)


def build_strategy(model: ViT, config: TrainConfig, env: pdist.DistEnv, device: torch.device,
                   total_steps: int) -> Strategy:
    """The strategy ``config.strategy`` names, around the plain ``model``."""
    kind = DeepSpeedStrategy if config.strategy == "deepspeed" else TorchStrategy
    return kind(model, config, env, device, total_steps)
