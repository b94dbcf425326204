"""The trained ViT as a forecast model: ensembles of SQG temperature fields in K.

:class:`SurrogateModel` implements the kit's ``ForecastModel`` protocol
(:mod:`turbda_kit.models.base`): ``state_shape``, ``dt`` (seconds), ``time_unit_seconds``,
``step`` and ``advance``, so the cycling engine runs it like the SQG model. States are
temperatures in K, ``(member, V, N, N)`` (surface, lid); one step is the surrogate's lead
time (12 h in the coupled experiments).

It is built on the rollout of :mod:`turbda_kit.surrogate.rollout` and the training data's
:class:`~turbda_kit.data.shards.Normaliser`: ``advance`` normalises, runs
:func:`~turbda_kit.surrogate.rollout.iter_rollout` and denormalises. A whole ensemble
advances in one batched forward per step (or ``batch_size`` members at a time), in eval
mode without autograd, with bf16 autocast on GPUs when asked.

Example
-------
>>> from turbda_kit.surrogate.forecast_model import SurrogateModel
>>> model = SurrogateModel.from_export("runs/03_train_vit/surrogate.pt")   # doctest: +SKIP
>>> forecast = model.advance(ensemble_in_kelvin, 2)       # 24 h later     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.normaliser import Normaliser
from ..data.shards import open_shards
from ..errors import InputError
from .export import read_surrogate
from .rollout import iter_rollout

__all__ = ["SurrogateModel"]


class SurrogateModel:
    """A ViT surrogate advancing ensembles of SQG temperature fields.

    Parameters
    ----------
    vit : torch.nn.Module
        ``vit(fields (B, V, N, N), lead_time_hours (B,)) -> (B, V, N, N)``, normalised in
        and out; it must have a ``config`` with ``img_size`` and ``variables``.
    normaliser : Normaliser or array-like
        The per-variable normalisation (K) the surrogate was trained with. For backward
        compatibility, per-variable means may be given here with ``std``.
    std : array-like, optional
        Per-variable standard deviations (K) when ``normaliser`` holds the means.
    lead_hours : float
        Lead time of one step (h).
    autocast : bool
        Use bf16 autocast on CUDA/ROCm devices (ignored on CPU, where fp32 is faster).
    batch_size : int, optional
        Largest number of members per forward pass (default: the whole ensemble at once).

    Attributes
    ----------
    state_shape : tuple of int
        ``(V, N, N)``.
    dt : float
        One step in seconds (``lead_hours * 3600``).
    time_unit_seconds : float
        Seconds per unit of ``dt``: 1.
    normaliser : Normaliser
    """

    time_unit_seconds: float = 1.0

    def __init__(self, vit: nn.Module, normaliser: Normaliser | Sequence[float] | np.ndarray,
                 std: Sequence[float] | np.ndarray | None = None, lead_hours: float = 12.0,
                 autocast: bool = True, batch_size: int | None = None):
        config = getattr(vit, "config", None)
        if config is None:
            raise InputError("the surrogate needs a `config` attribute (a turbda_kit ViT)")
        self.variables = tuple(config.variables)
        n_vars = len(self.variables)
        if std is not None:
            normaliser = Normaliser(self.variables, np.asarray(normaliser, dtype=np.float64),
                                    np.asarray(std, dtype=np.float64))
        if not isinstance(normaliser, Normaliser):
            raise InputError(f"normaliser must be a Normaliser (or means with std=), got "
                             f"{type(normaliser).__name__}")
        mean = np.asarray(normaliser.mean, dtype=np.float64).reshape(-1)
        spread = np.asarray(normaliser.std, dtype=np.float64).reshape(-1)
        if mean.shape != (n_vars,) or spread.shape != (n_vars,):
            raise InputError(f"normalisation for {n_vars} variables needed, got mean "
                             f"{mean.shape} and std {spread.shape}")
        if not (spread > 0).all():
            raise InputError(f"normalisation std must be > 0, got {spread}")
        if tuple(normaliser.variables) != self.variables:
            raise InputError(f"normalisation for variables {tuple(normaliser.variables)}, but "
                             f"the surrogate was trained on {self.variables}")
        if not (isinstance(lead_hours, int | float) and lead_hours > 0):
            raise InputError(f"lead_hours={lead_hours!r} must be a number of hours > 0")
        if batch_size is not None and (isinstance(batch_size, bool)
                                       or not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"batch_size={batch_size!r} must be None or an integer >= 1")
        self.vit = vit.eval()
        self.normaliser = Normaliser(self.variables, mean, spread)
        self.state_shape = (n_vars, config.img_size, config.img_size)
        self.lead_hours = float(lead_hours)
        self.dt = self.lead_hours * 3600.0
        self.autocast = autocast
        self.batch_size = batch_size

    @classmethod
    def from_export(cls, path: str | os.PathLike, device: torch.device | str = "cpu",
                    lead_hours: float | None = None, **kwargs: Any) -> SurrogateModel:
        """Load an export (:func:`~turbda_kit.surrogate.export.export_surrogate`).

        The normaliser and the lead time come from the export; ``lead_hours`` is used
        when the export stores none. Other keyword arguments go to the constructor.
        """
        export = read_surrogate(path, device)
        if export.normaliser is None:
            raise InputError(f"{path} carries no normalisation: export it with "
                             "export_surrogate (03_train_vit does), or build the model with "
                             "SurrogateModel(vit, normaliser)")
        lead = export.lead_time_hours or lead_hours
        if lead is None:
            raise InputError(f"{path} stores no lead time: pass lead_hours=")
        return cls(export.model, export.normaliser, lead_hours=lead, **kwargs)

    @classmethod
    def from_files(cls, checkpoint: str | os.PathLike, shards_root: str | os.PathLike | None = None,
                   device: torch.device | str = "cpu", lead_hours: float = 12.0, **kwargs: Any
                   ) -> SurrogateModel:
        """Load an export, taking the normalisation from the training shards if it has none.

        Parameters
        ----------
        checkpoint : path-like
            The export.
        shards_root : path-like, optional
            Training shards whose normaliser to use when the export carries none.
        device : torch.device or str
        lead_hours : float
            Lead time when the export stores none.
        **kwargs
            For the constructor.
        """
        export = read_surrogate(checkpoint, device)
        normaliser = export.normaliser
        if normaliser is None:
            if shards_root is None:
                raise InputError(f"{checkpoint} carries no normalisation: pass shards_root= "
                                 "the training data's root, or export with export_surrogate")
            normaliser = open_shards(shards_root).normaliser
        return cls(export.model, normaliser, lead_hours=export.lead_time_hours or lead_hours,
                   **kwargs)

    def check_grid(self, state_shape: Sequence[int]) -> None:
        """Refuse truth/ensemble grids that differ from the surrogate's."""
        if tuple(state_shape) != self.state_shape:
            raise InputError(f"the surrogate predicts {self.state_shape} fields "
                             f"({', '.join(self.variables)}), got states of shape "
                             f"{tuple(state_shape)}: use data of the training grid")

    def step(self, state: Tensor) -> Tensor:
        """One lead-time step of states in K, shape ``(member, V, N, N)`` or ``(V, N, N)``."""
        return self.advance(state, 1)

    def advance(self, state: Tensor, n_steps: int) -> Tensor:
        """``n_steps`` autoregressive steps of states in K.

        Parameters
        ----------
        state : Tensor, shape (member, V, N, N) or (V, N, N)
            Temperatures in K, any float dtype and device.
        n_steps : int
            Steps (>= 0).

        Returns
        -------
        Tensor
            Same shape, dtype and device as ``state``.
        """
        if not isinstance(state, Tensor):
            raise InputError(f"state must be a torch.Tensor, got {type(state).__name__}")
        if state.dim() == len(self.state_shape):
            return self.advance(state.unsqueeze(0), n_steps)[0]
        self.check_grid(state.shape[1:])
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise InputError(f"n_steps must be an integer >= 0, got {n_steps!r}")
        if n_steps == 0:
            return state.clone()
        param = next(self.vit.parameters())
        dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        fields = state.to(param.device, dtype)
        use_autocast = self.autocast and param.device.type == "cuda"
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast
               else contextlib.nullcontext())
        forecasts = []
        for members in fields.split(self.batch_size or fields.shape[0]):
            with amp:   # the generator's forwards run in this context
                steps = iter_rollout(self.vit, members, n_steps, self.lead_hours,
                                     self.normaliser)
                forecasts.append(deque(steps, maxlen=1)[0])   # only the last step is kept
        return torch.cat(forecasts).to(state.device, state.dtype)
