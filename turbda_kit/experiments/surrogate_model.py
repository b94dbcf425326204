"""The trained ViT as a forecast model with the same step interface as SQG.

States are temperatures in K, ``(member, 2, N, N)`` (surface, lid) — the cycling engine's
units — and one step is the surrogate's lead time (12 h in the coupled experiments). A
whole ensemble advances in **one batched forward pass** (no per-member loop), in
inference mode, with bf16 autocast on GPUs when asked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError


def normalisation_metadata(variables: Sequence[str], mean: Sequence[float], std: Sequence[float]
                           ) -> dict[str, list]:
    """Metadata entries storing the normalisation in a surrogate export.

    The same keys the training notebook writes (``variables``, ``normalize_mean``,
    ``normalize_std``; read back by :func:`turbda_kit.surrogate.rollout.normaliser_from_metadata`).
    """
    return {"variables": list(variables), "normalize_mean": [float(m) for m in mean],
            "normalize_std": [float(s) for s in std]}


class SurrogateModel:
    """A ViT surrogate advancing ensembles of SQG temperature fields.

    Parameters
    ----------
    vit : torch.nn.Module
        ``vit(fields (B, V, N, N), lead_time_hours) -> (B, V, N, N)``, normalised in and out;
        it must have a ``config`` with ``img_size`` and ``variables``.
    mean, std : array-like, shape (V,)
        Per-variable normalisation (K) the surrogate was trained with.
    lead_hours : float
        Lead time of one step (h).
    autocast : bool
        Use bf16 autocast on CUDA/ROCm devices (ignored on CPU, where fp32 is faster).
    batch_size : int, optional
        Largest batch per forward pass (default: the whole ensemble at once).

    Attributes
    ----------
    state_shape : tuple of int
        ``(V, N, N)``.
    dt : float
        One step in seconds.
    time_unit_seconds : float
        1.
    """

    time_unit_seconds = 1.0

    def __init__(self, vit: torch.nn.Module, mean, std, lead_hours: float = 12.0,
                 autocast: bool = True, batch_size: int | None = None):
        config = getattr(vit, "config", None)
        if config is None:
            raise InputError("the surrogate needs a `config` attribute (a turbda_kit ViT)")
        self.vit = vit.eval()
        n_vars = len(config.variables)
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != (n_vars,) or self.std.shape != (n_vars,):
            raise InputError(f"normalisation for {n_vars} variables needed, got mean "
                             f"{self.mean.shape} and std {self.std.shape}")
        if not (self.std > 0).all():
            raise InputError(f"normalisation std must be > 0, got {self.std}")
        self.variables = tuple(config.variables)
        self.state_shape = (n_vars, config.img_size, config.img_size)
        self.lead_hours = float(lead_hours)
        self.dt = self.lead_hours * 3600.0
        self.autocast = autocast
        self.batch_size = batch_size
        self._stats: dict[tuple, tuple[Tensor, Tensor]] = {}

    @classmethod
    def from_files(cls, checkpoint: str | os.PathLike, shards_root: str | os.PathLike | None = None,
                   device: torch.device | str = "cpu", lead_hours: float = 12.0, **kwargs
                   ) -> SurrogateModel:
        """Load an exported surrogate and its normalisation.

        The normalisation comes from the export's metadata (``variables``,
        ``normalize_mean``, ``normalize_std``, as the training notebook writes them) or else
        from the training shards at ``shards_root``; the lead time from
        ``lead_time_hours`` in the metadata when present.
        """
        from ..surrogate.vit import load_surrogate

        vit, metadata = load_surrogate(checkpoint, device)
        names = tuple(vit.config.variables)
        if "normalize_mean" in metadata:
            from ..surrogate.rollout import normaliser_from_metadata

            normaliser = normaliser_from_metadata(metadata)
        elif shards_root is not None:
            from ..data.shards import open_shards

            normaliser = open_shards(shards_root).normaliser
        else:
            raise InputError(f"{checkpoint} carries no normalisation: pass shards_root= the "
                             "training data's root, or export with the training notebook")
        if tuple(normaliser.variables) != names:
            raise InputError(f"normalisation for variables {tuple(normaliser.variables)}, but the "
                             f"surrogate was trained on {names}")
        mean, std = normaliser.mean, normaliser.std
        lead_hours = float(metadata.get("lead_time_hours", lead_hours))
        return cls(vit, mean, std, lead_hours=lead_hours, **kwargs)

    def _device_stats(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (device, dtype)
        if key not in self._stats:
            shape = (1, len(self.variables), 1, 1)
            self._stats[key] = (torch.as_tensor(self.mean, dtype=dtype, device=device).reshape(shape),
                                torch.as_tensor(self.std, dtype=dtype, device=device).reshape(shape))
        return self._stats[key]

    def check_grid(self, state_shape: Sequence[int]) -> None:
        """Refuse truth/ensemble grids that differ from the surrogate's."""
        if tuple(state_shape) != self.state_shape:
            raise InputError(f"the surrogate predicts {self.state_shape} fields "
                             f"({', '.join(self.variables)}), got states of shape "
                             f"{tuple(state_shape)}: use data of the training grid")

    def step(self, state: Tensor) -> Tensor:
        """One lead-time step of states in K, shape ``(member, V, N, N)``."""
        return self.advance(state, 1)

    def advance(self, state: Tensor, n_steps: int) -> Tensor:
        """``n_steps`` autoregressive steps of states in K, shape ``(member, V, N, N)``."""
        if state.dim() == len(self.state_shape):
            return self.advance(state.unsqueeze(0), n_steps)[0]
        self.check_grid(state.shape[1:])
        if n_steps < 0:
            raise InputError(f"n_steps must be >= 0, got {n_steps}")
        param = next(self.vit.parameters())
        mean, std = self._device_stats(param.device, param.dtype)
        x = ((state.to(param.device, param.dtype) - mean) / std)
        use_autocast = self.autocast and param.device.type == "cuda"
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            for _ in range(n_steps):
                chunks = x.split(self.batch_size or x.shape[0])
                lead = torch.full((chunks[0].shape[0],), self.lead_hours, device=x.device,
                                  dtype=x.dtype)
                x = torch.cat([self.vit(c, lead[:c.shape[0]]).to(param.dtype) for c in chunks])
        return (x * std + mean).to(state.device, state.dtype)

