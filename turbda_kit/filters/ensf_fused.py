"""The EnSF Euler-Maruyama step as one elementwise function: noise, likelihood, update.

For the common case — paired prior score, explicit likelihood step, an identity or arctan
observation of every state value, float32, counter-based noise — every value of the new
ensemble depends only on its own old value, its prior member, its observation and its
global position. :func:`fused_step_` computes all of it in one expression of whole-tensor
torch operations. On CPU its transcription in C (:mod:`turbda_kit.native`) is one loop
that reads ``x``, ``x0`` and ``y`` and writes ``x`` once per step, with the Gaussian draw
(:func:`turbda_kit.random_streams.counter_normal`) computed in registers; elsewhere (GPU, or
no C compiler) the torch function itself runs.

Arctan score, float32: ``s (y - atan(s x)) / (1 + (s x)^2) / sigma^2`` with the kit's own
arctangent, :func:`atan_float32` (one division shared with ``1 / (1 + (s x)^2)``, an odd
polynomial of degree 15 on ``[0, 1]``): absolute error <= 2.4e-7 rad over all float32
inputs (measured against float64 in ``tests/filters/test_ensf_fused.py``), i.e. within
two units in the last place of ``pi / 2``, comparable to the library ``atan`` in float32.
All operations are exactly rounded (no library transcendental), so the C and torch
versions give the same bits and a slab reproduces the full analysis exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..random_streams import counter_normal

__all__ = ["FUSED_OPERATORS", "atan_float32", "fused_step_"]

#: Observation operators with a fused kernel.
FUSED_OPERATORS = ("identity", "arctan")

_HALF_PI = 1.5707963267948966
# atan(t) = t * P(t^2) on [0, 1]: near-minimax fit, max error 3.7e-8 before float32 rounding.
_ATAN_COEFFS = (0.9999993356526078, -0.3332986091954358, 0.19946566325582768,
                -0.13908630357600724, 0.09642195062231672, -0.05591225403242367,
                0.0218628859621713, -0.0040545427547270625)


def _atan_parts(z: Tensor) -> tuple[Tensor, Tensor]:
    # (atan(z), 1 / (1 + z^2)) with one division: r = 1 / (max(|z|, 1) (1 + z^2)) gives
    # 1 / (1 + z^2) = r max(|z|, 1) and, for |z| > 1, the reduced argument 1/|z| = r (1 + z^2).
    a = z.abs()
    big = a > 1.0
    denominator = a * a + 1.0
    larger = torch.where(big, a, 1.0)
    r = 1.0 / (larger * denominator)
    weight = r * larger
    t = torch.where(big, r * denominator, a)
    t2 = t * t
    poly = t2 * _ATAN_COEFFS[7] + _ATAN_COEFFS[6]
    for c in reversed(_ATAN_COEFFS[:6]):
        poly = poly * t2 + c
    angle = poly * t
    angle = torch.where(big, _HALF_PI - angle, angle)
    return torch.where(z < 0, -angle, angle), weight


def atan_float32(z: Tensor) -> Tensor:
    """Arctangent of a float32 tensor, absolute error <= 2.4e-7 (see the module docstring)."""
    return _atan_parts(z)[0]


def fused_step_(x: Tensor, prior: Tensor, obs: Tensor, inv_var: Tensor, words: Tensor,
                coefficients: Tensor, operator: str) -> None:
    """One EnSF Euler-Maruyama step of the paired-score filter, in place.

    ``x <- keep x + pull x0 + like S(x) + noise xi`` with ``S`` the likelihood score of
    ``operator`` and ``xi`` the counter-based normals of ``(key, member, global column)``.

    Parameters
    ----------
    x : Tensor, shape ``(M, n)``, float32
        Particles, updated in place.
    prior : Tensor, shape ``(M, n)``
        Prior (forecast) members ``x0``.
    obs : Tensor, shape ``(n,)``
        Observations of each value.
    inv_var : Tensor, shape ``(1,)`` or ``(n,)``
        ``1 / sigma^2``.
    words : Tensor of int32, shape ``(3,)``
        Noise key words (:func:`turbda_kit.random_streams.counter_words`) and the global
        column of ``x[:, 0]``.
    coefficients : Tensor, shape ``(5,)``
        ``keep, pull, like, noise`` of the step and the arctan ``scale``.
    operator : {"identity", "arctan"}
    """
    members, n = x.shape
    rows = torch.arange(members, dtype=torch.int32, device=x.device)[:, None]
    columns = torch.arange(n, dtype=torch.int32, device=x.device)[None, :] + words[2]
    xi = counter_normal(rows, columns, words, x.dtype)
    keep, pull, like, noise, scale = (coefficients[i] for i in range(5))
    if operator == "arctan":
        angle, weight = _atan_parts(x * scale)
        score = (obs - angle) * weight * (inv_var * scale)
    else:
        score = (obs - x) * inv_var
    x.copy_(x * keep + prior * pull + score * like + xi * noise)
