"""Load the paper code's Lightning checkpoints (github jqyin/sqg_vit) into the kit's ViT.

The paper's surrogate is ``SQG_ViT`` (``src/sqg/model/arch.py`` there), trained by a
Lightning module that holds it as ``net``; its checkpoints are Lightning ``.ckpt`` files
``{"state_dict": {"net.<name>": tensor, ...}, "epoch": ..., "optimizer_states": ...}``.
The kit's :class:`~turbda_kit.surrogate.vit.ViT` with ``pos_embed="learned"`` and
``lead_time_convention="seed"`` (the presets ``sqg_64``, ``sqg_64_coupled``, ``sqg_128``,
``sqg_256``) computes the same function; only the layout of some weights differs. With
``V`` variables, width ``D``, patch ``p``, ``L`` tokens:

=====================================================  =====================================
seed key (after ``net.``)                              kit key
=====================================================  =====================================
``token_embeds.{i}.proj.weight (D, 1, p, p)``, ``i<V``  ``patch_embed.weight (V*D, 1, p, p)``
``token_embeds.{i}.proj.bias (D,)``                     ``patch_embed.bias (V*D,)``
(or ``token_embeds.proj_weights (V, D, 1, p, p)`` and
``token_embeds.proj_biases (V, D)`` when the seed ran
with ``parallel_patch_embed=True``)
``var_embed (1, V, D)``                                 ``var_embed (1, V, 1, D)``
``var_query (1, 1, D)``                                 ``var_agg.query``
``var_agg.in_proj_weight (3D, D)`` rows ``[:D]``,       ``var_agg.q_proj.weight``,
``[D:]`` (and ``in_proj_bias``)                         ``var_agg.kv_proj.weight`` (and biases)
``var_agg.out_proj.*``, ``pos_embed (1, L, D)``,        same names
``lead_time_embed.*``, ``blocks.{k}.norm1/attn.qkv/
attn.proj/norm2/mlp.fc1/mlp.fc2.*``, ``norm.*``,
``head.{j}.*``
=====================================================  =====================================

The head's output layer (``head.{2 * decoder_depth}``) has its ``V * p * p`` rows permuted:
the seed unpatchifies values ordered ``(py, px, v)`` per patch, the kit ``(v, py, px)``.
A permutation of output rows changes no value, so the loaded model's forward is the seed's
up to float rounding (tested against an independent re-implementation of the seed's forward).

What stays different (none of it changes the function of given weights):

* the variable aggregation runs through ``scaled_dot_product_attention`` instead of
  :class:`torch.nn.MultiheadAttention` (same maths, different rounding);
* initialisation: the seed starts its variable embedding from a 1-D sin-cos table and its
  patch-embedding biases from PyTorch's default, the kit from truncated normals and zeros;
* the number of attention heads is not stored in the weights: the config must carry the
  seed's (``sqg_64_coupled``: 16);
* the seed normalises fields with the per-variable mean and standard deviation of its
  training data (``normalize_mean.npz`` / ``normalize_std.npz``), which are not in the
  checkpoint: normalise inputs with those before calling the model.

Safety: files are read with ``torch.load(weights_only=True)`` only. Lightning checkpoints
written by old versions store hyperparameters in an ``AttributeDict`` (a ``dict``
subclass); those names, and only those, are read as plain dicts, without importing
Lightning. Any other object type is refused with an :class:`~turbda_kit.errors.InputError`
that names it and says how to strip the checkpoint to its weights.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from .config import ViTConfig, load_vit_config
from .vit import ViT

__all__ = ["SEED_PREFIX", "LIGHTNING_DICT_NAMES", "seed_parameter_shapes",
           "seed_to_kit_state_dict", "read_seed_state_dict", "load_seed_checkpoint"]

SEED_PREFIX = "net."
"""Prefix of the model's keys in the seed's Lightning ``state_dict`` (its module's ``net``)."""

LIGHTNING_DICT_NAMES = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
)
"""Fully qualified names of Lightning's ``AttributeDict`` (a ``dict`` subclass for
hyperparameters), read as plain dicts. Nothing else outside torch's own allow-list is read."""

_MAX_LISTED = 12   # keys listed per category in an error message


class _PlainDict:
    """Stand-in for Lightning's ``AttributeDict`` while unpickling: builds a plain ``dict``.

    Pickle rebuilds a ``dict`` subclass as ``cls.__new__(cls)`` followed by item
    assignments; returning a real ``dict`` here lets torch's weights-only unpickler fill it
    (it fills only exact ``dict`` types) and runs no code from the checkpoint.
    """

    def __new__(cls, *args: Any) -> dict:  # type: ignore[misc]
        return {}


@contextmanager
def _lightning_dicts_allowed() -> Iterator[None]:
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:    # torch < 2.5: no named allow-list; AttributeDict is refused
        yield
        return
    with safe_globals([(_PlainDict, name) for name in LIGHTNING_DICT_NAMES]):
        yield


def seed_parameter_shapes(config: ViTConfig, parallel_patch_embed: bool = False
                          ) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the seed ``SQG_ViT``'s parameters for ``config``.

    Parameters
    ----------
    config : ViTConfig
        A seed-mirroring architecture (see :func:`seed_to_kit_state_dict`).
    parallel_patch_embed : bool
        The seed's ``parallel_patch_embed`` flag: one grouped ``token_embeds.proj_weights``
        tensor instead of one ``token_embeds.{i}.proj`` convolution per variable.

    Returns
    -------
    dict
        ``{name: shape}`` without the Lightning ``net.`` prefix, in module order. The
        total of their sizes equals :func:`turbda_kit.surrogate.flops.count_parameters`
        of a ``pos_embed="learned"`` config (tested).
    """
    d, v, p = config.embed_dim, config.n_vars, config.patch_size
    hidden = config.mlp_hidden_dim
    shapes: dict[str, tuple[int, ...]] = {}
    if parallel_patch_embed:
        shapes["token_embeds.proj_weights"] = (v, d, 1, p, p)
        shapes["token_embeds.proj_biases"] = (v, d)
    else:
        for i in range(v):
            shapes[f"token_embeds.{i}.proj.weight"] = (d, 1, p, p)
            shapes[f"token_embeds.{i}.proj.bias"] = (d,)
    shapes["var_embed"] = (1, v, d)
    shapes["var_query"] = (1, 1, d)
    shapes["var_agg.in_proj_weight"] = (3 * d, d)
    shapes["var_agg.in_proj_bias"] = (3 * d,)
    shapes["var_agg.out_proj.weight"] = (d, d)
    shapes["var_agg.out_proj.bias"] = (d,)
    shapes["pos_embed"] = (1, config.n_tokens, d)
    shapes["lead_time_embed.weight"] = (d, 1)
    shapes["lead_time_embed.bias"] = (d,)
    for k in range(config.depth):
        block = f"blocks.{k}."
        for name, shape in (("norm1.weight", (d,)), ("norm1.bias", (d,)),
                            ("attn.qkv.weight", (3 * d, d)), ("attn.qkv.bias", (3 * d,)),
                            ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)),
                            ("norm2.weight", (d,)), ("norm2.bias", (d,)),
                            ("mlp.fc1.weight", (hidden, d)), ("mlp.fc1.bias", (hidden,)),
                            ("mlp.fc2.weight", (d, hidden)), ("mlp.fc2.bias", (d,))):
            shapes[block + name] = shape
    shapes["norm.weight"] = (d,)
    shapes["norm.bias"] = (d,)
    for j in range(config.decoder_depth):   # Linear, GELU pairs: Linears at even indices
        shapes[f"head.{2 * j}.weight"] = (d, d)
        shapes[f"head.{2 * j}.bias"] = (d,)
    out = 2 * config.decoder_depth
    shapes[f"head.{out}.weight"] = (v * p * p, d)
    shapes[f"head.{out}.bias"] = (v * p * p,)
    return shapes


def _check_seed_config(config: ViTConfig) -> None:
    fixes = []
    if config.pos_embed != "learned":
        fixes.append(f"pos_embed={config.pos_embed!r} -> 'learned' (the seed trains its "
                     "positional embedding)")
    if config.lead_time_convention != "seed":
        fixes.append(f"lead_time_convention={config.lead_time_convention!r} -> 'seed' (its "
                     "weights expect data steps / 100)")
    if config.residual:
        fixes.append("residual=True -> False (the seed predicts the full state)")
    if fixes:
        raise InputError(f"config {config.name or '(unnamed)'} cannot compute the seed's "
                         f"function: set {'; '.join(fixes)}, or use a seed preset "
                         "(sqg_64, sqg_64_coupled, sqg_128, sqg_256)")


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def _describe(state: Mapping[str, Any]) -> str:
    """What architecture a seed state dict implies (best effort, for error messages)."""
    found = []
    try:
        if "var_query" in state:
            found.append(f"embed_dim={state['var_query'].shape[-1]}")
        patch = state.get("token_embeds.0.proj.weight", state.get("token_embeds.proj_weights"))
        if patch is not None:
            found.append(f"patch_size={patch.shape[-1]}")
            if "pos_embed" in state:
                side = math.isqrt(state["pos_embed"].shape[1])
                found.append(f"img_size={side * patch.shape[-1]}")
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
        if blocks:
            found.append(f"depth={max(blocks) + 1}")
        if "blocks.0.mlp.fc1.weight" in state:
            hidden, width = state["blocks.0.mlp.fc1.weight"].shape
            found.append(f"mlp_ratio={hidden / width:g}")
        if "var_embed" in state:
            found.append(f"{state['var_embed'].shape[1]} variables")
        heads = [int(m.group(1)) for k in state if (m := re.match(r"head\.(\d+)\.weight$", k))]
        if heads:
            found.append(f"decoder_depth={max(heads) // 2}")
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    return "; the checkpoint looks like " + ", ".join(found) if found else ""


def seed_to_kit_state_dict(seed_state: Mapping[str, Tensor], config: ViTConfig
                           ) -> dict[str, Tensor]:
    """Map a seed ``SQG_ViT`` state dict onto the kit's ``ViT(config)`` keys, strictly.

    Parameters
    ----------
    seed_state : mapping of str to Tensor
        The seed model's parameters, without the Lightning ``net.`` prefix (see
        :func:`read_seed_state_dict`). Either patch-embedding layout is accepted.
    config : ViTConfig
        The architecture to load into; must have ``pos_embed="learned"``,
        ``lead_time_convention="seed"`` and ``residual=False``.

    Returns
    -------
    dict
        ``ViT(config).state_dict()``-compatible tensors (dtype kept; a shape-changing
        mapping returns new tensors, the others the given ones).

    Raises
    ------
    InputError
        Config not seed-compatible, or any key of ``seed_state`` left unmapped, any expected
        key missing, any shape not the one ``config`` implies (all listed at once).
    """
    if not isinstance(config, ViTConfig):
        raise InputError(f"config must be a ViTConfig, got {type(config).__name__}")
    _check_seed_config(config)
    if not isinstance(seed_state, Mapping):
        raise InputError(f"seed_state must be a mapping of names to tensors, got "
                         f"{type(seed_state).__name__}")
    not_tensors = sorted(k for k, value in seed_state.items() if not isinstance(value, Tensor))
    if not_tensors:
        raise InputError(f"seed_state values must be tensors; these are not: "
                         f"{_listing(not_tensors)}")
    expected = seed_parameter_shapes(
        config, parallel_patch_embed="token_embeds.proj_weights" in seed_state)
    unmapped = [k for k in seed_state if k not in expected]
    missing = [k for k in expected if k not in seed_state]
    wrong = [f"{k} {tuple(seed_state[k].shape)} (config expects {expected[k]})"
             for k in expected if k in seed_state and tuple(seed_state[k].shape) != expected[k]]
    if unmapped or missing or wrong:
        parts = []
        if unmapped:
            parts.append(f"{len(unmapped)} checkpoint keys map to nothing in the kit's ViT: "
                         f"{_listing(unmapped)}")
        if missing:
            parts.append(f"{len(missing)} keys the config needs are missing: "
                         f"{_listing(missing)}")
        if wrong:
            parts.append(f"{len(wrong)} shapes differ: {_listing(wrong)}")
        raise InputError(f"the seed state dict does not fit config {config.name or '(unnamed)'}"
                         f": {'; '.join(parts)}{_describe(seed_state)}. Pick the preset the "
                         "checkpoint was trained with (sqg_64_coupled for the released one)")

    d, v, p = config.embed_dim, config.n_vars, config.patch_size
    kit: dict[str, Tensor] = {}
    if "token_embeds.proj_weights" in seed_state:
        kit["patch_embed.weight"] = seed_state["token_embeds.proj_weights"].reshape(v * d, 1, p, p)
        kit["patch_embed.bias"] = seed_state["token_embeds.proj_biases"].reshape(v * d)
    else:
        # Grouped convolution: group i (input channel i) owns output channels i*D:(i+1)*D.
        kit["patch_embed.weight"] = torch.cat(
            [seed_state[f"token_embeds.{i}.proj.weight"] for i in range(v)])
        kit["patch_embed.bias"] = torch.cat(
            [seed_state[f"token_embeds.{i}.proj.bias"] for i in range(v)])
    kit["var_embed"] = seed_state["var_embed"].reshape(1, v, 1, d)
    kit["var_agg.query"] = seed_state["var_query"]
    # nn.MultiheadAttention packs the q, k, v projections; the kit keeps k and v together.
    in_weight, in_bias = seed_state["var_agg.in_proj_weight"], seed_state["var_agg.in_proj_bias"]
    kit["var_agg.q_proj.weight"], kit["var_agg.kv_proj.weight"] = in_weight[:d], in_weight[d:]
    kit["var_agg.q_proj.bias"], kit["var_agg.kv_proj.bias"] = in_bias[:d], in_bias[d:]
    out = f"head.{2 * config.decoder_depth}."
    for key, value in seed_state.items():
        if key.startswith(("var_agg.out_proj.", "pos_embed", "lead_time_embed.", "blocks.",
                           "norm.", "head.")) and not key.startswith(out):
            kit[key] = value
    # Output rows: seed (py, px, v) per patch -> kit (v, py, px).
    kit[out + "weight"] = (seed_state[out + "weight"].reshape(p, p, v, d).permute(2, 0, 1, 3)
                           .reshape(v * p * p, d))
    kit[out + "bias"] = seed_state[out + "bias"].reshape(p, p, v).permute(2, 0, 1).reshape(-1)
    return kit


def read_seed_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the model weights of a seed checkpoint, with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    path : path-like
        A Lightning ``.ckpt`` (``{"state_dict": {"net.<name>": tensor}, ...}``), or a file
        holding the state dict itself (with or without the ``net.`` prefix).

    Returns
    -------
    dict
        ``{name: tensor}`` on the CPU; keys under ``net.`` lose the prefix, others are kept
        as they are (and then reported as unmapped by :func:`seed_to_kit_state_dict`).

    Raises
    ------
    InputError
        Missing file, a directory (e.g. a DeepSpeed checkpoint), not a torch file, objects
        the weights-only unpickler refuses (listed, with how to strip them), no tensors.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory: give the Lightning .ckpt file (a DeepSpeed "
                         "checkpoint directory must first be consolidated to one file)")
    if not path.exists():
        raise InputError(f"no seed checkpoint at {path}")
    with _lightning_dicts_allowed():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            blocked = _unsafe_globals(path)
            if not blocked:
                raise InputError(f"{path} is not a readable torch checkpoint (weights-only "
                                 f"unpickling failed: {err})") from err
            raise InputError(
                f"{path} holds objects that torch.load(weights_only=True) refuses to build: "
                f"{', '.join(blocked)}. The kit never unpickles arbitrary objects (that could "
                "run code), and only the weights are needed: in the environment that wrote "
                "the checkpoint, run python -c \"import torch; c = torch.load('IN.ckpt', "
                "map_location='cpu', weights_only=False); torch.save({'state_dict': "
                "c['state_dict']}, 'OUT.ckpt')\" and load OUT.ckpt") from err
        except (RuntimeError, EOFError, OSError) as err:
            raise InputError(f"{path} is not a readable torch checkpoint: {err}") from err
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    if (not isinstance(state, Mapping) or not state
            or not all(isinstance(value, Tensor) for value in state.values())):
        found = (f"top-level keys {sorted(map(str, payload))[:_MAX_LISTED]}"
                 if isinstance(payload, dict) else f"a {type(payload).__name__}")
        raise InputError(f"{path} holds no state dict of tensors ({found}): a Lightning "
                         "checkpoint has a 'state_dict' mapping of names to tensors")
    return {(key[len(SEED_PREFIX):] if str(key).startswith(SEED_PREFIX) else str(key)): value
            for key, value in state.items()}


def _unsafe_globals(path: Path) -> list[str]:
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if lister is None:
        return []
    try:
        return sorted(lister(path))
    except Exception:   # the listing only improves the message; never mask the real error
        return []


def load_seed_checkpoint(path: str | os.PathLike, config: ViTConfig | str,
                         device: torch.device | str = "cpu") -> ViT:
    """Build the kit's ViT from a seed (jqyin/sqg_vit) Lightning checkpoint.

    Parameters
    ----------
    path : path-like
        The ``.ckpt`` file (e.g. the released ``last-v1.ckpt`` of the coupled experiments).
    config : ViTConfig or str
        The architecture, or a preset name / YAML path: ``"sqg_64_coupled"`` for the
        released checkpoint.
    device : torch.device or str
        Where to put the model.

    Returns
    -------
    ViT
        In eval mode, float32. Feed it fields normalised as the seed's data were, and lead
        times in hours (one step of ``config.lead_time_scale_hours`` hours -> 0.01).

    Examples
    --------
    >>> model = load_seed_checkpoint("vit_model/last-v1.ckpt", "sqg_64_coupled")  # doctest: +SKIP
    >>> forecast = model(fields, 12.0)    # (B, 2, 64, 64), normalised   # doctest: +SKIP
    """
    if isinstance(config, str | os.PathLike):
        config = load_vit_config(config)
    if not isinstance(config, ViTConfig):
        raise InputError(f"config must be a ViTConfig or a preset name, got "
                         f"{type(config).__name__}")
    _check_seed_config(config)
    state = seed_to_kit_state_dict(read_seed_state_dict(path), config)
    model = ViT(config)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
