"""FFT helpers for doubly periodic square grids (real FFTs, ``torch.fft.rfft2`` layout).

Conventions
-----------
* Grid fields are ``(..., N, N)`` with the last two axes ``(y, x)``.
* Spectral fields are ``(..., N, N//2 + 1)`` complex: rows are the y wavenumbers in
  ``fftfreq`` order (0, 1, ..., N/2-1, -N/2, ..., -1), columns the x wavenumbers 0..N/2.
* Transforms use ``norm="forward"``: a coefficient is the amplitude of its Fourier mode,
  independent of the grid size, so zero-padding to a finer grid (dealiasing) and
  truncating back need no rescaling, and ``mean(field**2) == sum |coef|**2`` over the
  full (two-sided) spectrum.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "to_spectral",
    "to_grid",
    "wavenumbers",
    "dealias_rows",
    "pad_spectral",
    "truncate_spectral",
    "half_plane_weights",
    "shell_index",
]


def to_spectral(field: Tensor) -> Tensor:
    """Real grid field ``(..., N, N)`` -> mode amplitudes ``(..., N, N//2+1)`` (complex)."""
    return torch.fft.rfft2(field, norm="forward")


def to_grid(spec: Tensor, n: int) -> Tensor:
    """Mode amplitudes ``(..., n, n//2+1)`` -> real grid field ``(..., n, n)``."""
    return torch.fft.irfft2(spec, s=(n, n), norm="forward")


def wavenumbers(n: int, length: float, device: torch.device | None = None,
                dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Angular wavenumbers of the rfft2 layout, in rad per unit of ``length``.

    Parameters
    ----------
    n : int
        Grid points per side.
    length : float
        Side of the square domain (e.g. metres).

    Returns
    -------
    kx : Tensor, shape ``(1, n//2+1)``
        x wavenumbers ``2*pi*[0..n/2]/length``.
    ky : Tensor, shape ``(n, 1)``
        y wavenumbers in ``fftfreq`` order.
    """
    scale = 2.0 * math.pi / length
    kx = torch.arange(n // 2 + 1, device=device, dtype=torch.float64) * scale
    ky = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=torch.float64) * scale
    return kx.reshape(1, -1).to(dtype), ky.reshape(-1, 1).to(dtype)


def dealias_rows(n: int, m: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Row slices pairing the modes kept by the 2/3 rule on an ``n`` grid with an ``m`` grid.

    The kept modes are ``|l| <= n/2 - 1`` and ``0 <= k <= n/2 - 1`` (Nyquist excluded).

    Returns
    -------
    (small_pos, large_pos), (small_neg, large_neg)
        Row slices of the non-negative and the negative y wavenumbers in the ``n`` and the
        ``m`` layouts.
    """
    half = n // 2
    return ((slice(0, half), slice(0, half)),
            (slice(n - half + 1, n), slice(m - half + 1, m)))


def pad_spectral(spec: Tensor, m: int, out: Tensor | None = None) -> Tensor:
    """Zero-pad ``(..., n, n//2+1)`` amplitudes onto an ``m`` grid ``(..., m, m//2+1)``.

    Only the modes kept by the 2/3 rule are copied (see :func:`dealias_rows`); with
    ``out`` given, the rest of ``out`` must already be zero (it is not touched).
    """
    n = spec.shape[-2]
    half = n // 2
    if out is None:
        out = spec.new_zeros((*spec.shape[:-2], m, m // 2 + 1))
    for small, large in dealias_rows(n, m):
        out[..., large, :half] = spec[..., small, :half]
    return out


def truncate_spectral(spec: Tensor, n: int, out: Tensor | None = None) -> Tensor:
    """Keep the 2/3-rule modes of ``(..., m, m//2+1)`` amplitudes on an ``n`` grid.

    With ``out`` given, entries of ``out`` outside the kept modes must already be zero.
    """
    m = spec.shape[-2]
    half = n // 2
    if out is None:
        out = spec.new_zeros((*spec.shape[:-2], n, n // 2 + 1))
    for small, large in dealias_rows(n, m):
        out[..., small, :half] = spec[..., large, :half]
    return out


def half_plane_weights(n: int, device: torch.device | None = None,
                       dtype: torch.dtype = torch.float64) -> Tensor:
    """Multiplicity of each rfft2 column in the full spectrum, shape ``(1, n//2+1)``.

    Columns ``1..n/2-1`` stand for two modes (``k`` and ``-k``); ``k = 0`` and the
    Nyquist column (even ``n``) for one. ``sum(w * |c|**2)`` is then the mean square of
    the grid field.
    """
    w = torch.full((1, n // 2 + 1), 2.0, device=device, dtype=dtype)
    w[0, 0] = 1.0
    if n % 2 == 0:
        w[0, -1] = 1.0
    return w


def shell_index(n: int, device: torch.device | None = None) -> Tensor:
    """Isotropic shell of each rfft2 entry: ``round(sqrt(k**2 + l**2))`` in integer units.

    Returns
    -------
    Tensor, shape ``(n, n//2+1)``, int64
    """
    kx = torch.arange(n // 2 + 1, device=device, dtype=torch.float64).reshape(1, -1)
    ky = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=torch.float64).reshape(-1, 1)
    return torch.round(torch.sqrt(kx**2 + ky**2)).to(torch.int64)
