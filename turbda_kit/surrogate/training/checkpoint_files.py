"""The files inside one checkpoint directory, and reading them back without running code.

Layout of ``checkpoints/step_XXXXXXXX/``::

    trainer_state.json      loop position, early-stopping state, configs, metrics (JSON)
    rng_rank00000.pt ...    each rank's RNG state (tensors)
    dcp/.metadata           torch strategies: torch.distributed.checkpoint index (pickle)
    dcp/__<rank>_0.distcp   torch strategies: model and optimiser tensors and numbers
    extras.pt               torch strategies: scheduler and grad-scaler state (numbers)
    deepspeed/state/*.pt    deepspeed: DeepSpeed's model, optimiser and engine state

What a checkpoint may contain, and how each file is read:

* JSON files: parsed as JSON;
* ``.pt`` files of the kit: ``torch.load(weights_only=True)`` — tensors, numbers, strings,
  and lists, tuples and dicts of them;
* ``dcp/.metadata``: an unpickler that builds only DCP's own metadata dataclasses,
  ``torch.Size``, dtypes and layouts (:data:`~turbda_kit.surrogate.safe_loading.
  DCP_METADATA_GLOBALS`); ``.distcp`` items: tensors weights-only (as DCP does) and the
  non-tensor items (learning rates, betas, flags) weights-only too, where DCP itself
  would unpickle them unrestricted;
* DeepSpeed's ``.pt`` files: first every one is parsed weights-only with the four
  plain-data DeepSpeed classes they hold (:data:`DEEPSPEED_CHECKPOINT_GLOBALS`), mapping
  rather than reading the tensors; then DeepSpeed loads them with ``weights_only`` forced
  on, so a file swapped in between the check and the load is refused just the same.

Anything else (a pickle naming ``os.system``, any class outside these lists) is refused
with an :class:`~turbda_kit.errors.InputError` naming the file, before the object is built.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ...errors import InputError
from ...io import write_json
from ...parallel import distributed as pdist
from ..safe_loading import (
    failure_reason,
    is_refusal,
    read_dcp_metadata,
    refusal_error,
    torch_load_restricted,
    weights_only_forced,
)

__all__ = ["TRAINER_STATE", "DEEPSPEED_CHECKPOINT_GLOBALS", "save_dcp", "load_dcp",
           "save_torch_file", "load_torch_file", "save_rng_state", "load_rng_state",
           "apply_rng_state", "write_trainer_state", "read_trainer_state",
           "verify_deepspeed_checkpoint", "deepspeed_loading", "remove_helper_scripts", "agree"]

TRAINER_STATE = "trainer_state.json"

DEEPSPEED_CHECKPOINT_GLOBALS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)
"""The classes DeepSpeed 0.19 stores in its checkpoint files besides tensors and
containers: two loss scalers (a scale and counters), the ZeRO-stage enum and a
``(numel, start)`` dataclass. Building them stores numbers; nothing else is allowed."""

_FIX = ("resume from another checkpoint (resume=<checkpoint directory>) or start afresh "
        "(resume=None), after deleting this one")
_TORCH_FILE = "a file the trainer wrote with torch.save (tensors, numbers and strings)"
_MAY_HOLD = "tensors, numbers, strings and lists or dicts of them"


# ----------------------------------------------------------------------------- agreement


def agree(error: str | None) -> None:
    """Raise the same InputError on every rank when any rank met one.

    Loading is partly rank-local (each rank's RNG file, its own optimiser partition). A
    rank that stopped alone would leave the others waiting in the next collective, so
    every rank reports what it found and all raise together.
    """
    if pdist.is_distributed():
        errors: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
        found = [(rank, e) for rank, e in enumerate(errors) if e]
    else:
        found = [(0, error)] if error else []
    if found:
        rank, message = found[0]
        where = f" (rank {rank})" if pdist.is_distributed() else ""
        raise InputError(f"{message}{where}")


# ----------------------------------------------------------------------------- JSON state


def write_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    """``trainer_state.json`` in ``directory`` (plain JSON, written atomically)."""
    write_json(directory / TRAINER_STATE, state)


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint directory, checked for its keys."""
    path = Path(directory) / TRAINER_STATE
    if not path.is_file():
        raise InputError(f"{directory} is not a checkpoint directory (no {TRAINER_STATE}): "
                         "give a checkpoints/step_XXXXXXXX directory")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"checkpoint file {path} is not valid JSON ({err}): {_FIX}") from None
    required = ("step", "epoch", "position", "world_size", "model_config", "train_config",
                "history")
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"checkpoint file {path} lacks {missing}: it was not written by this "
                         f"trainer; {_FIX}")
    return state


# ----------------------------------------------------------------------------- torch files


def save_torch_file(obj: Any, path: Path) -> None:
    """``torch.save`` of plain data (tensors, numbers, strings, containers)."""
    torch.save(obj, path)


def load_torch_file(path: Path) -> Any:
    """Read a kit ``.pt`` file of a checkpoint, weights-only."""
    return torch_load_restricted(path, "checkpoint file", expected=_TORCH_FILE, fix=_FIX,
                                 may_hold=_MAY_HOLD)


def _rng_path(directory: Path, rank: int) -> Path:
    return Path(directory) / f"rng_rank{rank:05d}.pt"


def save_rng_state(directory: Path, rank: int, device: torch.device) -> None:
    """This rank's torch RNG state (dropout, drop-path) into ``rng_rank<rank>.pt``."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    save_torch_file(state, _rng_path(directory, rank))


def load_rng_state(directory: Path, rank: int) -> dict[str, torch.Tensor]:
    """Read (not apply) this rank's RNG state; :func:`apply_rng_state` sets it."""
    path = _rng_path(directory, rank)
    state = load_torch_file(path)
    if not isinstance(state, dict) or not isinstance(state.get("cpu"), torch.Tensor):
        raise InputError(f"checkpoint file {path} holds no RNG state: {_FIX}")
    return state


def apply_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore an RNG state read by :func:`load_rng_state`."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------- DCP


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns that it assumes a single process when no group is up: that is the intent.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_dcp(state: dict[str, Any], directory: Path) -> None:
    """``torch.distributed.checkpoint.save`` of ``state`` into ``directory`` (collective)."""
    import torch.distributed.checkpoint as dcp

    with _quiet_single_process():
        dcp.save(state, checkpoint_id=directory)


def _restricted_dcp_classes() -> tuple[type, type]:
    """A DCP reader and load planner that parse every file with restricted unpicklers."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta
    from torch.futures import Future

    class RestrictedReader(FileSystemReader):
        """Reads ``.metadata`` with :func:`read_dcp_metadata` and names failing files."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_dcp_metadata(Path(self.path) / ".metadata")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def set_up_storage_reader(self, metadata: Any, is_coordinator: bool, *args: Any,
                                  **kwargs: Any) -> None:
            for info in (metadata.storage_data or {}).values():
                name = getattr(info, "relative_path", "")
                # The index names data files: only plain names inside this directory.
                if not isinstance(name, str) or not name or Path(name).name != name \
                        or name in (".", ".."):
                    raise InputError(f"checkpoint file {Path(self.path) / '.metadata'} points "
                                     f"at {name!r}, outside its directory: {_FIX}")
            super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)

        def read_data(self, plan: Any, planner: Any) -> Any:
            per_file: dict[str, list[Any]] = {}
            for item in plan.items:
                per_file.setdefault(self.storage_data[item.storage_index].relative_path,
                                    []).append(item)
            for name, items in per_file.items():
                path = Path(self.path) / name
                try:
                    super().read_data(dataclasses.replace(plan, items=items), planner).wait()
                except InputError:
                    raise
                except Exception as err:
                    if is_refusal(err):
                        raise refusal_error(path, "checkpoint file", err, _MAY_HOLD,
                                            _FIX) from None
                    raise InputError(f"checkpoint file {path} is not readable "
                                     f"({failure_reason(err)}): the file is truncated or "
                                     f"corrupt; nothing in it ran; {_FIX}") from None
            done: Future = Future()
            done.set_result(None)
            return done

    class RestrictedPlanner(DefaultLoadPlanner):
        """DCP unpickles non-tensor items with ``weights_only=False``; force it on."""

        def load_bytes(self, read_item: Any, value: Any) -> None:
            with weights_only_forced():
                super().load_bytes(read_item, value)

    return RestrictedReader, RestrictedPlanner


def load_dcp(state: dict[str, Any], directory: Path) -> None:
    """Fill ``state`` in place from the DCP checkpoint in ``directory`` (collective).

    Raises
    ------
    InputError
        On every rank, naming the file, when any file is unreadable or holds objects a
        checkpoint may not contain.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    # Every rank checks the index first, so that all refuse it together (DCP's own
    # reading below uses the same restricted unpickler, should the file change meanwhile).
    error = None
    try:
        read_dcp_metadata(Path(directory) / ".metadata")
    except InputError as err:
        error = str(err)
    agree(error)
    reader_type, planner_type = _restricted_dcp_classes()
    try:
        with _quiet_single_process():
            dcp.load(state, storage_reader=reader_type(directory), planner=planner_type())
    except CheckpointException as err:
        causes = [f[0] if isinstance(f, tuple) else f for f in err.failures.values()]
        for cause in causes:
            if isinstance(cause, InputError):
                raise InputError(str(cause)) from None
        reason = failure_reason(causes[0]) if causes else "unknown"
        raise InputError(f"the checkpoint in {directory} could not be loaded ({reason}); "
                         f"{_FIX}") from None


# ----------------------------------------------------------------------------- DeepSpeed


def _deepspeed_globals() -> list[type]:
    found = []
    for module, name in DEEPSPEED_CHECKPOINT_GLOBALS:
        value = getattr(importlib.import_module(module), name, None)
        if value is not None:
            found.append(value)
    return found


def verify_deepspeed_checkpoint(directory: Path) -> None:
    """Parse every ``.pt`` file of a DeepSpeed checkpoint weights-only (tensors mapped).

    Raises
    ------
    InputError
        Naming the first file that is unreadable or holds objects outside the allow-list.
    """
    files = sorted(Path(directory).rglob("*.pt"))
    if not files:
        raise InputError(f"{directory} holds no DeepSpeed checkpoint files: {_FIX}")
    allowed = _deepspeed_globals()
    for path in files:
        torch_load_restricted(path, "checkpoint file", expected="a DeepSpeed checkpoint "
                              "file (torch zip archive of tensors and engine state)", fix=_FIX,
                              may_hold="tensors, numbers, strings and DeepSpeed's loss-scaler, "
                              "ZeRO-stage and fragment records", extra_globals=allowed,
                              mmap=True)


@contextmanager
def deepspeed_loading() -> Iterator[None]:
    """Run DeepSpeed's own loading with ``weights_only`` forced and the allow-list."""
    with weights_only_forced(_deepspeed_globals()):
        yield


def remove_helper_scripts(directory: Path) -> None:
    """Drop the conversion scripts DeepSpeed copies into every checkpoint.

    A checkpoint holds data only; the kit's consolidated export replaces
    ``zero_to_fp32.py``, and a script on a shared file system is one more thing to trust.
    """
    for script in Path(directory).rglob("*.py"):
        script.unlink(missing_ok=True)

