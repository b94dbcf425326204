"""The surrogate export: one file with everything inference needs, read without running code.

An export is a dict written with :func:`torch.save` and read back with
``torch.load(weights_only=True)``:

=============== =====================================================================
``format``      ``"turbda_kit.surrogate.vit/1"``
``config``      :meth:`ViTConfig.to_dict`, the architecture
``state_dict``  the consolidated weights, float32 CPU tensors (int8 codes for the large
                ones when ``int8`` is present)
``int8``        optional: ``{"group", "scales"}`` of weight-only int8 storage
                (:mod:`turbda_kit.surrogate.quantize`); read back as float32
``metadata``    small JSON-like extras: training ``step``, ``val_loss``,
                ``lead_time_hours``, ``hours_per_step``, ``data_root``, ...
``normaliser``  ``{"variables", "mean", "std"}`` (K) the model was trained with, optional
``provenance``  :func:`turbda_kit.provenance.collect` of the exporting process, optional
=============== =====================================================================

* :func:`save_surrogate` writes one (the trainer's ``vit_last.pt`` / ``vit_best.pt``);
* :func:`export_surrogate` writes the file a workflow hands on: weights and config (from
  a model or an earlier export), normaliser, lead time and provenance
  (notebook 03's ``surrogate.pt``);
* :func:`read_surrogate` gives all of it back as a :class:`SurrogateExport`,
  :func:`load_surrogate` the model and metadata.

Exports written before the ``normaliser`` entry existed kept it in the metadata
(``variables``, ``normalize_mean``, ``normalize_std``); :func:`read_surrogate` reads both.

Example
-------
>>> from turbda_kit.surrogate.export import read_surrogate
>>> export = read_surrogate("runs/03_train_vit/surrogate.pt")         # doctest: +SKIP
>>> export.model, export.normaliser, export.lead_time_hours           # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.normaliser import Normaliser
from ..errors import InputError
from ..io import atomic_path
from ..provenance import collect
from .config import ViTConfig
from .quantize import dequantize_state_dict, quantize_state_dict
from .safe_loading import torch_load_restricted
from .vit import ViT

__all__ = ["EXPORT_FORMAT", "SurrogateExport", "save_surrogate", "export_surrogate",
           "read_surrogate", "load_surrogate"]

EXPORT_FORMAT = "turbda_kit.surrogate.vit/1"
"""Format tag of an export (unchanged since the first exports, which still load)."""

_EXPECTED = ("a ViT surrogate export: a torch zip archive of the ViT config, float32 "
             "weights and metadata, as written by save_surrogate or export_surrogate")
_FIX = ("export it again (03_train_vit writes surrogate.pt; the trainer writes "
        "export/vit_best.pt and vit_last.pt), or copy it again from where it was written")
_LEGACY_NORMALISER_KEYS = ("variables", "normalize_mean", "normalize_std")


@dataclass(frozen=True)
class SurrogateExport:
    """Everything an export holds, ready to use.

    Attributes
    ----------
    model : ViT
        In eval mode, on the requested device.
    metadata : dict
        The stored extras (``step``, ``val_loss``, ``lead_time_hours``, ...).
    normaliser : Normaliser or None
        Per-variable mean and std (K) of the training data; None when the export has none.
    provenance : dict
        Who wrote the export and with what (empty for older exports).
    path : Path
        The file read.
    """

    model: ViT
    metadata: dict[str, Any]
    normaliser: Normaliser | None
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def lead_time_hours(self) -> float | None:
        """Lead time of one forecast step (h), when stored."""
        value = self.metadata.get("lead_time_hours")
        return None if value is None else float(value)


def _plain(value: Any, name: str) -> Any:
    """A JSON round trip: what a weights-only load reads back (other values become text)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be JSON-like (numbers, strings, lists, dicts): {err}"
                         ) from None


def _normaliser_entry(normaliser: Normaliser, config: ViTConfig) -> dict[str, list]:
    variables = tuple(str(v) for v in normaliser.variables)
    if variables != tuple(config.variables):
        raise InputError(f"normaliser variables {variables} differ from the model's "
                         f"{tuple(config.variables)}: export the normaliser of the data the "
                         "model was trained on")
    mean = np.asarray(normaliser.mean, dtype=np.float64).reshape(-1)
    std = np.asarray(normaliser.std, dtype=np.float64).reshape(-1)
    if mean.shape != (len(variables),) or std.shape != (len(variables),):
        raise InputError(f"normaliser mean {mean.shape} and std {std.shape} must hold one "
                         f"value per variable ({len(variables)})")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise InputError(f"normaliser needs finite means and stds > 0, got {mean} and {std}")
    return {"variables": list(variables), "mean": mean.tolist(), "std": std.tolist()}


def save_surrogate(config: ViTConfig, state_dict: Mapping[str, Tensor], path: str | os.PathLike,
                   metadata: Mapping[str, Any] | None = None, *,
                   normaliser: Normaliser | None = None,
                   provenance: Mapping[str, Any] | None = None,
                   weights: str = "float32") -> Path:
    """Write a consolidated, single-device export for inference (atomically).

    Parameters
    ----------
    config : ViTConfig
        Architecture of the weights.
    state_dict : mapping of str to Tensor
        Full (unsharded) ``ViT`` state dict; stored as float32 CPU tensors.
    path : path-like
        Destination ``.pt`` file.
    metadata : mapping, optional
        Small JSON-like extras (training step, validation loss, lead time, ...).
    normaliser : Normaliser, optional
        Per-variable mean and std (K) of the training data; its variables must be the
        model's.
    provenance : mapping, optional
        JSON-like record of the writer (:func:`turbda_kit.provenance.collect`).
    weights : {"float32", "int8"}
        How the weights are stored: float32, or the large tensors as int8 codes with
        float16 group scales (:mod:`turbda_kit.surrogate.quantize`; about 4x smaller).

    Returns
    -------
    Path
        The written file; read it with :func:`read_surrogate` or :func:`load_surrogate`.
    """
    if not isinstance(config, ViTConfig):
        raise InputError(f"config must be a ViTConfig, got {type(config).__name__}")
    if weights not in ("float32", "int8"):
        raise InputError(f"weights={weights!r}: choose 'float32' or 'int8'")
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in state_dict.items()}
    payload: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "config": config.to_dict(),
        "state_dict": state,
        "metadata": _plain(dict(metadata or {}), "metadata"),
    }
    if weights == "int8":
        payload["state_dict"], payload["int8"] = quantize_state_dict(state)
    if normaliser is not None:
        payload["normaliser"] = _normaliser_entry(normaliser, config)
    if provenance is not None:
        payload["provenance"] = _plain(dict(provenance), "provenance")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def export_surrogate(source: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                     normaliser: Normaliser, lead_time_hours: float,
                     hours_per_step: float | None = None,
                     metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the export a workflow hands on: weights, config, normaliser, lead time, provenance.

    Parameters
    ----------
    source : ViT or path-like
        The model, or an earlier export (e.g. the trainer's ``export/vit_best.pt``) whose
        weights and metadata are carried over.
    path : path-like
        Destination (e.g. ``surrogate.pt``).
    normaliser : Normaliser
        Mean and std (K) per variable of the training data.
    lead_time_hours : float
        Lead time of one forecast step, hours (> 0).
    hours_per_step : float, optional
        Spacing of the training data, hours.
    metadata : mapping, optional
        More extras (``data_root``, ...), merged over the source export's.

    Returns
    -------
    Path
        The written file.
    """
    if isinstance(lead_time_hours, bool) or not isinstance(lead_time_hours, int | float) \
            or not math.isfinite(lead_time_hours) or lead_time_hours <= 0:
        raise InputError(f"lead_time_hours={lead_time_hours!r} must be a number of hours > 0")
    extras: dict[str, Any] = {}
    if isinstance(source, nn.Module):
        model = source
    else:
        earlier = read_surrogate(source)
        model = earlier.model
        extras.update(earlier.metadata, source_export=Path(source).name)
    config = getattr(model, "config", None)
    if not isinstance(config, ViTConfig):
        raise InputError(f"source must be a turbda_kit ViT or an export path, got "
                         f"{type(source).__name__}")
    extras.update(lead_time_hours=float(lead_time_hours))
    if hours_per_step is not None:
        extras["hours_per_step"] = float(hours_per_step)
    extras.update(metadata or {})
    for key in _LEGACY_NORMALISER_KEYS:   # the normaliser has its own entry now
        extras.pop(key, None)
    return save_surrogate(config, model.state_dict(), path, extras, normaliser=normaliser,
                          provenance=collect())


def _legacy_normaliser(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    if not all(k in metadata for k in _LEGACY_NORMALISER_KEYS):
        return None
    return {"variables": metadata["variables"], "mean": metadata["normalize_mean"],
            "std": metadata["normalize_std"]}


def _read_normaliser(entry: Any, path: Path) -> Normaliser:
    try:
        variables = tuple(str(v) for v in entry["variables"])
        mean = np.asarray(entry["mean"], dtype=np.float64).reshape(-1)
        std = np.asarray(entry["std"], dtype=np.float64).reshape(-1)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"the normaliser stored in {path} is malformed ({err}): {_FIX}"
                         ) from None
    if mean.shape != (len(variables),) or std.shape != mean.shape or not (std > 0).all():
        raise InputError(f"the normaliser stored in {path} is malformed (variables "
                         f"{variables}, mean {mean}, std {std}): {_FIX}")
    return Normaliser(variables, mean, std)


def read_surrogate(path: str | os.PathLike, device: torch.device | str = "cpu"
                   ) -> SurrogateExport:
    """Read an export written by :func:`save_surrogate` or :func:`export_surrogate`.

    Parameters
    ----------
    path : path-like
        The ``.pt`` file.
    device : torch.device or str
        Where to put the model.

    Returns
    -------
    SurrogateExport

    Raises
    ------
    InputError
        A missing, truncated or corrupt file, one that is not an export, or one holding
        objects an export may not contain (refused unbuilt: nothing in it runs).
    """
    path = Path(path)
    payload = torch_load_restricted(path, "surrogate export", expected=_EXPECTED, fix=_FIX,
                                    may_hold="the config, tensors, numbers and strings")
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"{path} is not {_EXPECTED} (found format {found!r}, expected "
                         f"{EXPORT_FORMAT!r}): give the path of a surrogate export")
    state = payload.get("state_dict")
    if not isinstance(payload.get("config"), dict) or not isinstance(state, dict) or not all(
            isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"{path} lacks a config or a state dict of tensors: {_FIX}")
    try:
        config = ViTConfig.from_dict(payload["config"])
    except InputError as err:
        raise InputError(f"the config stored in {path} is invalid ({err}): {_FIX}") from None
    if "int8" in payload:
        try:
            state = dequantize_state_dict(state, payload["int8"])
        except InputError as err:
            raise InputError(f"the int8 weights in {path} are malformed ({err}): {_FIX}"
                             ) from None
    model = ViT(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise InputError(f"the weights in {path} do not fit the stored config ({first}): "
                         f"{_FIX}") from None
    metadata = dict(payload.get("metadata") or {})
    entry = payload.get("normaliser") or _legacy_normaliser(metadata)
    normaliser = None if entry is None else _read_normaliser(entry, path)
    if normaliser is not None and normaliser.variables != tuple(config.variables):
        raise InputError(f"{path} stores a normaliser for {normaliser.variables} but a model "
                         f"of {tuple(config.variables)}: {_FIX}")
    return SurrogateExport(model=model.to(device).eval(), metadata=metadata,
                           normaliser=normaliser, provenance=dict(payload.get("provenance") or {}),
                           path=path)


def load_surrogate(path: str | os.PathLike, device: torch.device | str = "cpu"
                   ) -> tuple[ViT, dict[str, Any]]:
    """Load an export into a ready-to-use model.

    Parameters
    ----------
    path : path-like
        Exported ``.pt`` file.
    device : torch.device or str
        Where to put the model.

    Returns
    -------
    (ViT, dict)
        The model in eval mode, and the stored metadata (see :func:`read_surrogate` for
        the normaliser and provenance).
    """
    export = read_surrogate(path, device)
    return export.model, export.metadata
