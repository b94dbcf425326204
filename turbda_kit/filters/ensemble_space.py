"""Ensemble-space maths of the LETKF: local Gram matrices, the transforms made from them,
Nerger's regularised localisation weights and the cross-validated perturbation update.

Pure functions on batched tensors, one batch entry per analysis location;
:mod:`turbda_kit.filters.letkf` drives them. Notation, for ``m`` members and the ``k``
local observations of one location: ``Y`` ``(k, m)`` whitened observation anomalies
``R^{-1/2}(HX - mean HX)``, ``d`` ``(k,)`` whitened innovations, ``rho`` ``(k,)`` taper
weights; the *Gram matrix* is ``[Y|d]ᵀ diag(rho) [Y|d]``, ``(m + 1, m + 1)``.

References
----------
Hunt, Kostelich & Szunyogh (2007), Physica D 230, 112–126 (the transform).
Bishop, Whitaker & Lei (2017), MWR 145, 4575–4592 (the gain form of the perturbation
update used by the cross-validated variant).
Nerger, Janjić, Schröter & Hiller (2012), QJRMS 138, 802–812 (regulated localisation).
Whitaker & Hamill (2012), MWR 140, 3078–3089; J. Whitaker's ``sqgturb`` ``lgetkf``
(leave-one-out cross-validated perturbations with Nerger's weights).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from .localization import LatticeGeometry

__all__ = [
    "batched_eigh",
    "cross_validated_transforms",
    "lattice_gram",
    "nerger_weights",
    "transforms_from_gram",
]

# torch's CPU eigh loops over a batch on one thread; slices of at least this many
# matrices go to worker threads when torch may use several.
_MIN_EIGH_SLICE = 64
_EIGH_POOLS: dict[int, ThreadPoolExecutor] = {}


def _forget_pools() -> None:
    _EIGH_POOLS.clear()   # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def batched_eigh(matrices: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of a batch, split over torch's intra-op threads on CPU.

    LAPACK decomposes each matrix on its own, so the result is bit-identical to one
    ``torch.linalg.eigh`` call on the whole batch whatever the split.

    Parameters
    ----------
    matrices : Tensor, shape (batch, n, n)
        Symmetric matrices.

    Returns
    -------
    eigenvalues : Tensor, shape (batch, n), ascending
    eigenvectors : Tensor, shape (batch, n, n), columns
    """
    n_workers = min(torch.get_num_threads(), matrices.shape[0] // _MIN_EIGH_SLICE)
    if matrices.device.type != "cpu" or n_workers < 2:
        return torch.linalg.eigh(matrices)
    pool = _EIGH_POOLS.get(n_workers)
    if pool is None:
        pool = _EIGH_POOLS[n_workers] = ThreadPoolExecutor(n_workers,
                                                           thread_name_prefix="letkf-eigh")
    # torch releases the GIL inside the call, so the slices run in parallel.
    parts = list(pool.map(torch.linalg.eigh, torch.tensor_split(matrices, n_workers)))
    return (torch.cat([values for values, _ in parts]),
            torch.cat([vectors for _, vectors in parts]))


def transforms_from_gram(gram: Tensor) -> Tensor:
    """ETKF transforms ``T = w̄ 1ᵀ + [(m - 1) C⁻¹]^{1/2}`` from local Gram matrices.

    Parameters
    ----------
    gram : Tensor, shape (n_loc, m + 1, m + 1)
        ``[Y|d]ᵀ diag(w) [Y|d]``: its leading block is ``Yᵀ diag(w) Y`` and its last
        column ``Yᵀ diag(w) d`` (the ``(m, m)`` entry is not read).

    Returns
    -------
    Tensor, shape (n_loc, m, m)
        Member ``k`` of the analysis at a state point with forecast anomalies ``a`` (m,)
        is ``mean + a @ T[:, k]``; ``C = Yᵀ diag(w) Y + (m - 1) I`` and
        ``w̄ = C⁻¹ Yᵀ diag(w) d``.
    """
    n_members = gram.shape[-1] - 1
    precision = gram[:, :n_members, :n_members].clone()             # (n_loc, m, m)
    precision.diagonal(dim1=-2, dim2=-1).add_(n_members - 1)
    projected = gram[:, :n_members, n_members:]                     # (n_loc, m, 1)
    eigenvalues, eigenvectors = batched_eigh(precision)           # eigenvalues >= m - 1 > 0
    coefficients = eigenvectors.transpose(1, 2) @ projected
    mean_weights = eigenvectors @ (coefficients / eigenvalues[..., None])   # (n_loc, m, 1)
    root = torch.sqrt((n_members - 1) / eigenvalues)
    transforms = (eigenvectors * root[:, None, :]) @ eigenvectors.transpose(1, 2)
    return transforms + mean_weights


def lattice_gram(augmented: Tensor, lattice: LatticeGeometry, *,
                 block_elements: int = 2 ** 24) -> Tensor:
    """Local Gram matrices of every location at once, by FFT convolution on a lattice.

    With observations on lattice nodes, ``gram_i = sum_o w(i, o) a_o a_oᵀ`` (``a_o`` the
    observation's ``[Y|d]`` row) is the convolution of the per-node sums of ``a_o a_oᵀ``
    with the taper kernel of node offsets (mixed between vertical levels by
    ``level_weights``). Each distinct entry of the symmetric matrix is one field;
    the ``(m + 1)(m + 2)/2 - 1`` fields are convolved together, ``O(n_nodes log n_nodes)``
    per field instead of ``O(n_locations * k)`` for the gathered sums.

    Rounding differs from the gathered sums: every entry carries an absolute error of
    about ``eps * log2(n_nodes)`` times the largest sums on the lattice, instead of
    ``eps`` times its own terms. Locations with no observation in reach get exactly 0.

    Parameters
    ----------
    augmented : Tensor, shape (n_obs, m + 1)
        ``[Y|d]`` of every observation (whitened; inflated if inflating).
    lattice : LatticeGeometry
        From the localisation plan.
    block_elements : int
        Bound on the numbers held per block of fields (memory).

    Returns
    -------
    Tensor, shape (n_locations, m + 1, m + 1)
        Symmetric; the ``(m, m)`` entry is 0 (not needed).
    """
    dtype, device = augmented.dtype, augmented.device
    width = augmented.shape[1]
    # Distinct entries (i <= j) of the symmetric Gram matrix, less d·d (the last one).
    rows, cols = torch.triu_indices(width, width, device=device)
    n_fields = rows.numel() - 1
    shape = lattice.shape
    dims = tuple(range(-len(shape), 0))
    n_nodes = lattice.n_nodes
    n_loc_levels, n_obs_levels = lattice.level_weights.shape
    # The kernel's spectrum in float64, then rounded once to the working precision.
    spectrum = torch.fft.rfftn(lattice.kernel.to(device), dim=dims).real.to(dtype)
    level_weights = lattice.level_weights.to(device=device, dtype=dtype)
    obs_slot = (lattice.obs_level * n_nodes + lattice.obs_node).to(device)
    location_slot = (lattice.location_level * n_nodes + lattice.location_node).to(device)
    n_locations, n_obs = location_slot.numel(), augmented.shape[0]

    # Field-major layout throughout: row i of augmented_t is member (or d) i over all obs,
    # so every product and scatter below runs along contiguous rows.
    augmented_t = augmented.T.contiguous()                                   # (m + 1, n_obs)
    packed = augmented.new_empty(n_fields, n_locations)
    per_block = max(width, block_elements // max(n_obs, (n_obs_levels + n_loc_levels) * n_nodes))
    products = augmented.new_empty(min(per_block, n_fields), n_obs)
    first_row, field = 0, 0
    while first_row < width - 1:           # row i holds entries (i, i..m); row m is d·d only
        stop_row, count = first_row, 0
        while stop_row < width - 1 and (count == 0 or count + width - stop_row <= per_block):
            torch.mul(augmented_t[stop_row:stop_row + 1], augmented_t[stop_row:],
                      out=products[count:count + width - stop_row])
            count += width - stop_row
            stop_row += 1
        fields = augmented.new_zeros(count, n_obs_levels * n_nodes)
        fields.index_add_(1, obs_slot, products[:count])
        fields = fields.view(count, n_obs_levels, n_nodes)
        if n_obs_levels > 1 or n_loc_levels > 1:
            fields = torch.einsum("lv,bvn->bln", level_weights, fields)
        fields = fields.reshape(count, n_loc_levels, *shape)
        convolved = torch.fft.irfftn(torch.fft.rfftn(fields, dim=dims) * spectrum, s=shape,
                                     dim=dims)
        torch.index_select(convolved.reshape(count, n_loc_levels * n_nodes), 1, location_slot,
                           out=packed[field:field + count])
        first_row, field = stop_row, field + count

    # Unpack: entry (i, j) of every matrix is packed row symmetric[i, j]; the unused d·d
    # entry reads an extra row of zeros.
    symmetric = torch.full((width, width), n_fields, dtype=torch.long, device=device)
    order = torch.arange(n_fields, device=device)
    symmetric[rows[:-1], cols[:-1]] = order
    symmetric[cols[:-1], rows[:-1]] = order
    packed = torch.cat([packed, packed.new_zeros(1, n_locations)])
    gram = packed[symmetric.reshape(-1)].T.reshape(n_locations, width, width)
    if not lattice.all_observed:
        gram = gram * lattice.observed.to(device=device, dtype=dtype)[:, None, None]
    return gram


def nerger_weights(taper: Tensor, obs_variance: Tensor) -> Tensor:
    """Nerger et al.'s regulated R-localisation weights on whitened observations.

    The weight ``w`` on ``R⁻¹`` is chosen so that, for a single observation, the Kalman
    gain equals ``taper`` times the unlocalised gain:
    ``w = rho / (1 + (1 - rho) v)``, with ``v = HPHᵀ / R`` the observation's ensemble
    variance over its error variance. ``w = rho`` where ``rho`` is 0 or 1.

    Parameters
    ----------
    taper : Tensor
        Taper weights ``rho`` in [0, 1].
    obs_variance : Tensor, broadcastable with ``taper``
        ``v >= 0`` (dimensionless).

    Returns
    -------
    Tensor
    """
    return taper / (1.0 + (1.0 - taper) * obs_variance)


def cross_validated_transforms(obs_anomalies: Tensor, innovations: Tensor, taper: Tensor,
                               n_groups: int, regularization: str) -> Tensor:
    """Transforms of the LETKF with cross-validated perturbations (sqgturb's ``lgetkf``).

    The mean is the LETKF's: ``w̄ = C⁻¹ Yᵀ diag(w) d`` with the full ensemble. Members are
    split into ``n_groups`` contiguous groups; each group ``J`` is updated with the gain
    of the ensemble *without* it (members ``K``, ``m' = m - |J|``, anomalies still about
    the full mean, never re-centred), in the gain form of the square-root filter:

        A_J = Y_Kᵀ diag(w_J) Y_K / (m' - 1),   B_J = Y_Kᵀ diag(w_J) Y_J / (m' - 1)
        X_J <- X_J - X_K f(A_J) B_J,            f(γ) = (1 - (1 + γ)^{-1/2}) / γ

    and the updated anomalies are re-centred. ``f(γ) = 1 / (s (s + 1))`` with
    ``s = sqrt(1 + γ)`` is evaluated in that cancellation-free form. With
    ``regularization="nerger"`` the weights are :func:`nerger_weights` of the taper with
    the variance of the ensemble at hand (all members for the mean, ``K`` for group
    ``J``, each with its ``n - 1`` denominator); otherwise ``w = rho``.

    Parameters
    ----------
    obs_anomalies : Tensor, shape (n_loc, k, m)
        Whitened observation anomalies ``Y`` of each location's local observations.
    innovations : Tensor, shape (n_loc, k)
        Whitened innovations ``d``.
    taper : Tensor, shape (n_loc, k)
        Localisation weights in [0, 1] (0 for padding).
    n_groups : int
        Number of groups; ``m`` (leave-one-out) is sqgturb's default. Must divide ``m``
        and leave at least 2 members.
    regularization : {"none", "nerger"}

    Returns
    -------
    Tensor, shape (n_loc, m, m)
        Member ``j`` of the analysis at a point with forecast anomalies ``a`` is
        ``mean + a @ T[:, j]``, as for :func:`transforms_from_gram`.
    """
    n_loc, _, n_members = obs_anomalies.shape
    size = n_members // n_groups
    kept = n_members - size
    device, dtype = obs_anomalies.device, obs_anomalies.dtype
    withheld = torch.arange(n_members, device=device).reshape(n_groups, size)     # (G, g)
    mask = torch.ones(n_groups, n_members, dtype=torch.bool, device=device)
    mask[torch.arange(n_groups, device=device)[:, None], withheld] = False
    others = torch.arange(n_members, device=device).expand(n_groups, -1)[mask]
    others = others.reshape(n_groups, kept)                                        # (G, m')

    squares = obs_anomalies.square()
    total = squares.sum(-1)                                                        # (n_loc, k)
    weight = (nerger_weights(taper, total / (n_members - 1))
              if regularization == "nerger" else taper)
    weighted = obs_anomalies * weight[..., None]
    gram = weighted.transpose(1, 2) @ obs_anomalies                             # (n_loc, m, m)
    precision = gram.clone()
    precision.diagonal(dim1=-2, dim2=-1).add_(n_members - 1)
    rhs = weighted.transpose(1, 2) @ innovations[..., None]                     # (n_loc, m, 1)
    mean_weights = torch.cholesky_solve(rhs, torch.linalg.cholesky(precision))

    group = torch.arange(n_groups, device=device)[:, None, None]
    if regularization == "nerger":
        held = squares[..., withheld].sum(-1)                                   # (n_loc, k, G)
        group_weights = nerger_weights(taper[..., None], (total[..., None] - held) / (kept - 1))
        grams = torch.stack([(obs_anomalies * group_weights[..., g, None]).transpose(1, 2)
                             @ obs_anomalies for g in range(n_groups)], dim=1)  # (n_loc,G,m,m)
        a = grams[:, group, others[:, :, None], others[:, None, :]]
        b = grams[:, group, others[:, :, None], withheld[:, None, :]]
    else:
        a = gram[:, others[:, :, None], others[:, None, :]]                   # (n_loc,G,m',m')
        b = gram[:, others[:, :, None], withheld[:, None, :]]                 # (n_loc,G,m',g)
    a = a.reshape(-1, kept, kept) / (kept - 1)
    b = b.reshape(-1, kept, size) / (kept - 1)
    gamma, vectors = batched_eigh(a)
    root = torch.sqrt(1.0 + gamma.clamp(min=0.0))
    factor = 1.0 / (root * (root + 1.0))
    update = -(vectors * factor[:, None, :]) @ (vectors.transpose(1, 2) @ b)   # (n_loc*G,m',g)

    transforms = torch.eye(n_members, dtype=dtype, device=device).repeat(n_loc, 1, 1)
    rows = others[:, :, None].expand(n_groups, kept, size)
    cols = withheld[:, None, :].expand(n_groups, kept, size)
    transforms[:, rows, cols] = update.reshape(n_loc, n_groups, kept, size)
    transforms = transforms - transforms.mean(dim=2, keepdim=True)      # re-centre members
    return transforms + mean_weights
