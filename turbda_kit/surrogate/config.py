"""Configuration of the ViT surrogate: a frozen dataclass, YAML presets, validation.

Presets live in ``turbda_kit/configs/vit/<name>.yaml`` and are named after their use
(``tiny`` for tests and the quickstart, ``sqg_64_cpu`` for CPU training, ``sqg_64`` ...
``sqg_256`` for the paper's scaling runs, ``sqg_64_coupled`` for the coupled ViT+EnSF
experiments). The four paper presets are the architectures of the paper's code (github
jqyin/sqg_vit, ``configs/<name>.yaml``), with its learned positional embedding and
lead-time input, so its checkpoints load
(:func:`turbda_kit.surrogate.seed_checkpoint.load_seed_checkpoint`). A YAML file holds the
model keys at top level and, optionally, a ``train:`` mapping of training defaults that the
trainer reads (see :class:`turbda_kit.surrogate.training.TrainConfig`).

Example
-------
>>> from turbda_kit.surrogate.config import load_vit_config
>>> cfg = load_vit_config("tiny")
>>> cfg.img_size, cfg.patch_size, cfg.n_tokens
(32, 4, 64)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "vit"
"""Directory of the shipped YAML presets."""

DEFAULT_VARIABLES = ("sqg_0", "sqg_10000")
"""SQG potential temperature at z=0 and at the lid z=H=10 km, named ``{name}_{level in m}``
as :mod:`turbda_kit.data.preprocess` names the training shards' variables."""

POS_EMBEDS = ("sincos", "learned")
"""Allowed values of :attr:`ViTConfig.pos_embed`."""

LEAD_TIME_CONVENTIONS = ("kit", "seed")
"""Allowed values of :attr:`ViTConfig.lead_time_convention`."""

SEED_LEAD_TIME_DIVISOR = 100.0
"""The paper code divides ``hrs_each_step * predict_range`` by 100 before its lead-time
embedding (``Forecast`` in jqyin/sqg_vit ``src/sqg/model/dataset.py``)."""


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of the ClimaX-style ViT surrogate.

    Parameters
    ----------
    img_size : int
        Grid points per side ``N`` of the square, doubly periodic SQG grid.
    patch_size : int
        Side ``p`` of a square patch; ``img_size`` must be a multiple of it.
    variables : tuple of str
        Names of the input/output channels (one patch embedding and one learned variable
        embedding each), in the order of the tensor's channel axis.
    embed_dim : int
        Transformer width ``D``.
    depth : int
        Number of transformer blocks.
    num_heads : int
        Attention heads; must divide ``embed_dim``.
    mlp_ratio : float
        Hidden width of each block's MLP as a multiple of ``embed_dim``.
    decoder_depth : int
        Hidden ``Linear(D, D) + GELU`` layers of the prediction head before its output layer.
    drop_rate : float
        Dropout probability after the attention/MLP projections and on the embeddings, in [0, 1).
    attn_drop_rate : float
        Dropout probability on the attention weights, in [0, 1).
    drop_path_rate : float
        Stochastic-depth probability of the last block (linearly increasing from 0 over the
        blocks), in [0, 1).
    lead_time_scale_hours : float
        Hours of one lead-time unit. With ``lead_time_convention="kit"`` lead times are
        divided by this before the lead-time embedding, so typical inputs are O(1). With
        ``"seed"`` it is the hours of one step of the training data (the seed's
        ``predict_range`` unit: 12 for its 12-hourly 64x64 data).
    residual : bool
        Predict the increment: the output is ``input + head(...)`` in normalised units, and
        the head's output layer starts at zero, so an untrained model is exactly
        persistence. Meaningful because the input and output channels are the same
        ``variables``; ``False`` (the default, and every paper preset) predicts the full
        next state.
    pos_embed : {"sincos", "learned"}
        Positional embedding of the ``L`` tokens. ``"sincos"`` (the default): the fixed 2-D
        sin-cos table, a buffer that is not trained or saved. ``"learned"``: a trainable
        ``(1, L, D)`` parameter initialised to that same table, as in the paper's code
        (jqyin/sqg_vit); it adds ``L * D`` parameters and no FLOPs of note.
    lead_time_convention : {"kit", "seed"}
        What the linear lead-time embedding sees for a lead of ``t`` hours. ``"kit"`` (the
        default): ``t / lead_time_scale_hours``. ``"seed"``: the paper code's
        ``hrs_each_step * predict_range / 100`` with ``hrs_each_step = 1`` (all its configs)
        and ``predict_range = t / lead_time_scale_hours`` data steps, i.e.
        ``(t / lead_time_scale_hours) / 100``: 0.01 for one step.
    name : str
        Preset name (informational; not part of the architecture).
    """

    img_size: int = 64
    patch_size: int = 4
    variables: tuple[str, ...] = DEFAULT_VARIABLES
    embed_dim: int = 1024
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    decoder_depth: int = 2
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    lead_time_scale_hours: float = 12.0
    residual: bool = False
    pos_embed: str = "sincos"
    lead_time_convention: str = "kit"
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "variables", tuple(str(v) for v in self.variables))
        _check_int("img_size", self.img_size, 1)
        _check_int("patch_size", self.patch_size, 1)
        _check_int("embed_dim", self.embed_dim, 1)
        _check_int("depth", self.depth, 0)
        _check_int("num_heads", self.num_heads, 1)
        _check_int("decoder_depth", self.decoder_depth, 0)
        if self.img_size % self.patch_size:
            raise InputError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}: "
                f"use a patch size among the divisors of {self.img_size} "
                f"({_divisors(self.img_size)})")
        if self.embed_dim % self.num_heads:
            raise InputError(
                f"num_heads={self.num_heads} does not divide embed_dim={self.embed_dim}: "
                f"use a head count among the divisors of {self.embed_dim} "
                f"({_divisors(self.embed_dim)})")
        if self.embed_dim % 4:
            raise InputError(f"embed_dim={self.embed_dim} must be a multiple of 4 (the 2-D sin-cos "
                             "positional embedding splits it in four)")
        if not self.variables:
            raise InputError("variables=() is empty: give at least one variable name")
        if len(set(self.variables)) != len(self.variables):
            raise InputError(f"variables={self.variables} has duplicates: names must be unique")
        if not (isinstance(self.mlp_ratio, int | float) and self.mlp_ratio > 0):
            raise InputError(f"mlp_ratio={self.mlp_ratio!r} must be a number > 0")
        if self.mlp_hidden_dim < 1:
            raise InputError(f"mlp_ratio={self.mlp_ratio} gives an empty MLP: use a larger ratio")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise InputError(f"{name}={value!r} must be a probability in [0, 1)")
        if not (isinstance(self.lead_time_scale_hours, int | float)
                and self.lead_time_scale_hours > 0):
            raise InputError(
                f"lead_time_scale_hours={self.lead_time_scale_hours!r} must be a number > 0")
        # A strict bool: 0/1 or a quoted "no" would silently mean something else.
        if not isinstance(self.residual, bool):
            raise InputError(f"residual={self.residual!r} must be true or false (a bool)")
        if self.pos_embed not in POS_EMBEDS:
            raise InputError(f"pos_embed={self.pos_embed!r} is not one of {list(POS_EMBEDS)}: "
                             "'sincos' is the fixed table, 'learned' a trained parameter")
        if self.lead_time_convention not in LEAD_TIME_CONVENTIONS:
            raise InputError(
                f"lead_time_convention={self.lead_time_convention!r} is not one of "
                f"{list(LEAD_TIME_CONVENTIONS)}: 'kit' feeds hours / lead_time_scale_hours, "
                "'seed' the paper code's data steps / 100")

    @property
    def n_vars(self) -> int:
        """Number of channels ``V``."""
        return len(self.variables)

    @property
    def grid_patches(self) -> int:
        """Patches per side ``N / p``."""
        return self.img_size // self.patch_size

    @property
    def n_tokens(self) -> int:
        """Sequence length ``L = (N / p)**2`` of the transformer (after variable aggregation)."""
        return self.grid_patches**2

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width of the block MLPs, ``int(embed_dim * mlp_ratio)``."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.embed_dim // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) for YAML/JSON/``torch.save(weights_only)``."""
        out = dataclasses.asdict(self)
        out["variables"] = list(self.variables)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ViTConfig:
        """Build from a mapping, rejecting unknown keys with the list of known ones."""
        if not isinstance(values, dict):
            raise InputError(f"a ViT config must be a mapping, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown ViT config keys {unknown}: known keys are {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> ViTConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name}={value!r} must be an integer >= {minimum}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def available_vit_configs() -> list[str]:
    """Names of the shipped presets (``turbda_kit/configs/vit/*.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_config_file(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping of a preset name or a YAML file path.

    Parameters
    ----------
    name_or_path : str or path-like
        A preset name (see :func:`available_vit_configs`) or the path of a YAML file.

    Returns
    -------
    dict
        Model keys at top level, plus an optional ``train`` mapping.
    """
    import yaml

    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise InputError(f"no ViT config named {str(name_or_path)!r}: "
                             f"choose among {available_vit_configs()} or give a YAML path")
    if not path.exists():
        raise InputError(f"ViT config file {path} does not exist")
    with open(path) as stream:
        values = yaml.safe_load(stream) or {}
    if not isinstance(values, dict):
        raise InputError(f"{path} must hold a YAML mapping, got {type(values).__name__}")
    return values


def load_vit_config(name_or_path: str | os.PathLike, **overrides: Any) -> ViTConfig:
    """Load a :class:`ViTConfig` from a preset name or YAML path.

    Parameters
    ----------
    name_or_path : str or path-like
        Preset name (``"tiny"``, ``"sqg_64"``, ...) or YAML file.
    **overrides
        Fields to change after loading (e.g. ``drop_path_rate=0.0``).

    Returns
    -------
    ViTConfig
    """
    values = dict(read_config_file(name_or_path))
    values.pop("train", None)
    values.setdefault("name", Path(name_or_path).stem)
    values.update(overrides)
    return ViTConfig.from_dict(values)
