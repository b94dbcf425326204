"""Checkpoint directories: writing them atomically, keeping a few, resuming from one.

``out_dir/checkpoints/`` holds ``step_XXXXXXXX/`` directories (see
:mod:`~turbda_kit.surrogate.training.checkpoint_files` for what is inside) and two
pointers, ``latest.json`` and ``best.json`` (``{"name", "step", ...}``). A checkpoint is
complete before anything points at it, and nothing a pointer names is deleted:

1. every rank writes its part into ``.step_XXXXXXXX.tmp/``;
2. rank 0 renames the complete directory to a name no directory has: ``step_XXXXXXXX``,
   or ``step_XXXXXXXX.1``, ``.2``, ... when a rerun saves the same step again;
3. rank 0 switches ``latest.json`` to it (written beside and renamed over: atomic);
4. rank 0 prunes: directories that neither pointer names and that are not among the
   newest ``keep`` are renamed to ``.trash-*`` (so a half-deleted directory never looks
   like a checkpoint) and deleted.

A kill at any moment therefore leaves ``latest.json`` naming a complete checkpoint (the
new one or the one before). Resuming needs the same world size, batch size, gradient
accumulation, seed, shuffling and augmentation; each rank's RNG state and the data
position are restored, so a resumed run gives the losses of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ...errors import InputError
from ...io import write_json
from ...parallel import distributed as pdist
from ..config import ViTConfig
from . import checkpoint_files as files
from .config import TORCH_STRATEGIES, TrainConfig
from .strategies import Strategy

__all__ = ["CheckpointKeeper", "resolve_resume", "check_resumable", "load_checkpoint",
           "checkpoint_dirs"]

_NAME = re.compile(r"^step_(\d{8})(?:\.(\d+))?$")


def _order(path: Path) -> tuple[int, int]:
    match = _NAME.match(path.name)
    assert match is not None
    return int(match.group(1)), int(match.group(2) or 0)


def checkpoint_dirs(root: Path) -> list[Path]:
    """The checkpoint directories under ``root``, oldest first (by step, then rerun)."""
    return sorted((p for p in Path(root).iterdir() if p.is_dir() and _NAME.match(p.name)),
                  key=_order) if Path(root).is_dir() else []


def _read_pointer(pointer: Path) -> str:
    try:
        name = json.loads(pointer.read_text())["name"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise InputError(f"checkpoint pointer {pointer} is not valid ({err}): delete it to "
                         "start afresh, or pass resume=<checkpoint directory>") from None
    # A pointer names a directory beside it, nothing else (no paths, no "..").
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"checkpoint pointer {pointer} names {name!r}, not a step_XXXXXXXX "
                         "directory beside it: delete it, or pass resume=<checkpoint directory>")
    return name


def _fresh_name(root: Path, step: int) -> str:
    base = f"step_{step:08d}"
    name, rerun = base, 0
    while (root / name).exists():
        rerun += 1
        name = f"{base}.{rerun}"
    return name


# The publishing steps, each a function of its own (a failure can be injected between them).


def _rename_into_place(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def _point(pointer: Path, record: dict[str, Any]) -> None:
    write_json(pointer, record)


def _prune(root: Path, keep: int) -> None:
    protected = set()
    for pointer in ("latest.json", "best.json"):
        if (root / pointer).exists():
            protected.add(_read_pointer(root / pointer))
    for path in checkpoint_dirs(root)[:-keep]:
        if path.name not in protected:
            trash = root / f".trash-{path.name}-{os.getpid()}"
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
    for leftover in root.glob(".trash-*"):   # of an earlier, interrupted prune
        shutil.rmtree(leftover, ignore_errors=True)


def _broadcast_name(name: str | None) -> str:
    if not pdist.is_distributed():
        assert name is not None
        return name
    box = [name]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class CheckpointKeeper:
    """Writes checkpoint directories collectively and atomically; keeps last N + best.

    Parameters
    ----------
    root : Path
        ``out_dir/checkpoints``.
    env : DistEnv
    keep : int
        Periodic checkpoints kept besides the best one.
    """

    def __init__(self, root: Path, env: pdist.DistEnv, keep: int):
        self.root, self.env, self.keep = Path(root), env, keep

    def save(self, strategy: Strategy, step: int, trainer_state: dict[str, Any],
             device: torch.device) -> Path:
        """Write a checkpoint of ``step`` (collective) and point ``latest.json`` at it."""
        tmp = self.root / f".step_{step:08d}.tmp"
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)   # of an earlier, interrupted save
            tmp.mkdir(parents=True)
        pdist.barrier()
        strategy.save(tmp)
        files.save_rng_state(tmp, self.env.rank, device)
        pdist.barrier()
        name = None
        if self.env.is_main:
            files.write_trainer_state(tmp, trainer_state)
            name = _fresh_name(self.root, step)
            _rename_into_place(tmp, self.root / name)
            _point(self.root / "latest.json", {"name": name, "step": step})
            _prune(self.root, self.keep)
        name = _broadcast_name(name)
        return self.root / name

    def mark_best(self, path: Path, step: int, val_loss: float) -> None:
        """Point ``best.json`` at a saved checkpoint (rank 0), then prune."""
        if self.env.is_main:
            _point(self.root / "best.json", {"name": path.name, "step": step,
                                             "val_loss": val_loss})
            _prune(self.root, self.keep)

    def best(self) -> Path | None:
        """The directory ``best.json`` names, if any."""
        pointer = self.root / "best.json"
        return self.root / _read_pointer(pointer) if pointer.exists() else None


def resolve_resume(resume: bool | str | os.PathLike | None, out_dir: Path) -> Path | None:
    """The checkpoint directory to resume from, or None to start afresh.

    ``True``: the one ``out_dir/checkpoints/latest.json`` names (it must exist);
    ``"auto"``: the same when there is one; a path: that directory; ``None``/``False``:
    none.
    """
    if resume is None or resume is False:
        return None
    if resume is True or resume == "auto":
        root = Path(out_dir) / "checkpoints"
        pointer = root / "latest.json"
        if not pointer.exists():
            if resume == "auto":
                return None
            raise InputError(f"resume=True but {pointer} does not exist: no checkpoint to "
                             "resume from (use resume='auto' to start fresh when there is none)")
        path = root / _read_pointer(pointer)
        if not path.is_dir():
            raise InputError(f"{pointer} names {path.name}, which does not exist: pass "
                             "resume=<checkpoint directory> or delete the pointer")
        return path
    path = Path(resume)
    if not (path / files.TRAINER_STATE).exists():
        raise InputError(f"resume={str(resume)!r} is not a checkpoint directory (no "
                         f"{files.TRAINER_STATE})")
    return path


def check_resumable(state: dict[str, Any], config: ViTConfig, train_config: TrainConfig,
                    env: pdist.DistEnv, path: Path) -> None:
    """Refuse (InputError) a checkpoint this run cannot continue exactly; warn on a new
    learning-rate schedule."""
    tc = train_config
    saved = ViTConfig.from_dict(state["model_config"])
    if saved != config:
        diff = {k: (v, getattr(config, k)) for k, v in dataclasses.asdict(saved).items()
                if k != "name" and getattr(config, k) != v}
        raise InputError(f"checkpoint {path} was trained with a different model config "
                         f"(saved, given): {diff}")
    saved_tc = state["train_config"]
    saved_strategy = saved_tc["strategy"]
    same_family = (saved_strategy in TORCH_STRATEGIES) == (tc.strategy in TORCH_STRATEGIES)
    if not same_family:
        raise InputError(f"checkpoint {path} was written by strategy={saved_strategy!r}; it "
                         f"cannot be resumed with strategy={tc.strategy!r}")
    if tc.strategy == "deepspeed" and saved_tc["zero_stage"] != tc.zero_stage:
        raise InputError(f"checkpoint {path} used zero_stage={saved_tc['zero_stage']}, not "
                         f"{tc.zero_stage}")
    if state["world_size"] != env.world_size:
        raise InputError(f"checkpoint {path} was written with world_size={state['world_size']}"
                         f", this run has {env.world_size}: resume with the same number of "
                         "processes")
    for key in ("batch_size", "grad_accum_steps", "seed", "shuffle", "augment_x_shift"):
        default = TrainConfig.__dataclass_fields__[key].default
        if saved_tc.get(key, default) != getattr(tc, key):
            raise InputError(f"checkpoint {path} used {key}={saved_tc.get(key, default)!r}, "
                             f"this run {getattr(tc, key)!r}: the data would not match")
    # Extending a run (more steps, another schedule) is legitimate, but the result is no
    # longer the uninterrupted run's: say so rather than let it pass silently.
    changed = {key: (saved_tc.get(key), getattr(tc, key))
               for key in ("max_steps", "max_epochs", "lr", "warmup_steps", "min_lr_ratio")
               if key in saved_tc and saved_tc[key] != getattr(tc, key)}
    if changed and env.is_main:
        warnings.warn(f"resuming {path} with a different learning-rate schedule (saved, now): "
                      f"{changed}; the run continues, but it will not equal an uninterrupted "
                      f"run of either schedule", stacklevel=3)


def load_checkpoint(strategy: Strategy, directory: Path, env: pdist.DistEnv,
                    device: torch.device) -> None:
    """Restore model, optimiser, schedule and this rank's RNG state (collective).

    Every file is read with a restricted unpickler (nothing stored runs); when any rank
    finds a bad file, all ranks raise the same InputError before the collective load.
    """
    rng, error = None, None
    try:
        rng = files.load_rng_state(directory, env.rank)
    except InputError as err:
        error = str(err)
    files.agree(error)
    strategy.load(directory)
    files.apply_rng_state(rng, device)
