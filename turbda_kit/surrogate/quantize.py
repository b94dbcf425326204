"""Weight-only int8 storage of a surrogate export: groups of values with one scale each.

A weight matrix is flattened in its row-major order and cut into groups of ``group``
consecutive values (within a row for the kit's ViT: every row length is a multiple of 32);
each group stores ``round(w / s)`` as int8 in ``[-127, 127]`` with its scale
``s = max|w| / 127`` in float16. Dequantised, every weight is within ``s / 2`` of its
float32 value (``s`` rounded to float16 first, so the bound is exact for the stored ``s``).
Small tensors (biases, norms, embeddings under ``min_numel`` values) stay float32.

Why: the shipped ``sqg_64_cpu`` is 5.2 MB in float32 and 1.4 MB this way, under the
repository's 2 MB bound for tracked files. Its manifest records the held-out RMSE of the
stored (int8) weights and of the float32 weights they came from
(:func:`turbda_kit.surrogate.pretrained.package_pretrained`), so the cost is measured
with every bundle; groups of 32 keep it to hundredths of a kelvin, groups of 128 did not
(+0.14 K at 120 h in a trial on the same weights).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["DEFAULT_GROUP", "dequantize_int8", "dequantize_state_dict", "quantize_int8",
           "quantize_state_dict"]

DEFAULT_GROUP = 32
"""Values per scale."""
_MIN_NUMEL = 4096


def quantize_int8(weight: Tensor, group: int = DEFAULT_GROUP) -> tuple[Tensor, Tensor]:
    """Int8 codes and float16 group scales of ``weight``.

    Parameters
    ----------
    weight : Tensor, any shape, ``numel`` a multiple of ``group``
    group : int
        Consecutive values (row-major) sharing one scale.

    Returns
    -------
    (Tensor, Tensor)
        Codes (int8, shape of ``weight``) and scales (float16, ``(numel / group,)``).
    """
    if group < 1 or weight.numel() % group:
        raise InputError(f"a tensor of {weight.numel()} values cannot be cut into groups "
                         f"of {group}")
    flat = weight.detach().to("cpu", torch.float32).reshape(-1, group)
    scale = (flat.abs().amax(dim=1) / 127.0).to(torch.float16)
    # a group of zeros keeps scale 0 and codes 0
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    codes = torch.round(flat / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return codes.reshape(weight.shape), scale


def dequantize_int8(codes: Tensor, scale: Tensor, group: int) -> Tensor:
    """Float32 weights from :func:`quantize_int8`'s codes and scales."""
    if codes.dtype != torch.int8 or scale.dtype != torch.float16 or \
            codes.numel() != scale.numel() * group:
        raise InputError(f"int8 codes of {codes.numel()} values ({codes.dtype}) do not match "
                         f"{scale.numel()} float16 scales ({scale.dtype}) of groups of {group}")
    flat = codes.reshape(-1, group).float() * scale.float()[:, None]
    return flat.reshape(codes.shape)


def quantize_state_dict(state: Mapping[str, Tensor], group: int = DEFAULT_GROUP,
                        min_numel: int = _MIN_NUMEL) -> tuple[dict[str, Tensor], dict]:
    """Int8 codes for every tensor of ``min_numel`` values or more (and a multiple of
    ``group``), float32 for the rest.

    Returns
    -------
    (dict, dict)
        The state dict to store, and ``{"group": group, "scales": {name: scales}}``.
    """
    stored, scales = {}, {}
    for name, value in state.items():
        value = value.detach().to("cpu", torch.float32)
        if value.numel() >= min_numel and value.numel() % group == 0:
            stored[name], scales[name] = quantize_int8(value, group)
        else:
            stored[name] = value.clone()
    return stored, {"group": int(group), "scales": scales}


def dequantize_state_dict(state: Mapping[str, Tensor], entry: Mapping) -> dict[str, Tensor]:
    """Float32 state dict from :func:`quantize_state_dict`'s two results."""
    try:
        group, scales = int(entry["group"]), dict(entry["scales"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"malformed int8 entry ({err})") from None
    unknown = sorted(set(scales) - set(state))
    if unknown:
        raise InputError(f"int8 scales for tensors the state dict lacks: {unknown}")
    return {name: dequantize_int8(value, scales[name], group) if name in scales else value
            for name, value in state.items()}
