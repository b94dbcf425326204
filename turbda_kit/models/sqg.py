"""Surface quasi-geostrophic (SQG) turbulence between two rigid boundaries, in torch.

The f-plane model of Tulloch & Smith (2009, section 3) in a doubly periodic square
``[0, L)^2`` with a flat surface (``z = 0``) and a rigid lid (``z = H``), uniform
stratification ``N_b = sqrt(nsq)`` and zero interior PV. The state is the boundary
potential temperature expressed as PV (m/s) at both boundaries; temperature in K is
``theta = pv * scalefact`` with ``scalefact = f * theta0 / g`` (see :func:`pv_to_theta`).
Parameter conventions follow J. Whitaker's ``sqgturb``; the code is our own.

Per member, the tendency of the boundary PV ``q_j`` (``j = 0`` surface, ``1`` lid) is::

    dq_j/dt = -J(psi_j, q_j) + (q_eq_j - q_j) / tdiab  [+ Ekman]  - hyperdiffusion

* Inversion (per Fourier mode, ``mu = |K| N_b H / f``)::

      psi_0 = (H/mu) (q_1 / sinh mu - q_0 / tanh mu)
      psi_1 = (H/mu) (q_1 / tanh mu - q_0 / sinh mu)

* The Jacobian ``u dq/dx + v dq/dy`` (``u = -dpsi/dy``, ``v = dpsi/dx``) is computed
  pseudo-spectrally on a 3/2-padded grid (2/3-rule dealiasing; Nyquist modes excluded)
  or, with ``dealias=False``, on the model grid.
* Thermal relaxation toward a baroclinic equilibrium jet (``cos(2 pi y / L)``, symmetric
  or with zero surface wind) with time scale ``tdiab``.
* Optional Ekman damping ``r`` at the surface (and, for the symmetric jet, at the lid,
  as in sqgturb): ``+ r K^2 psi_0`` and ``- r K^2 psi_1`` in spectral space.
* Hyperdiffusion ``(|K| / K_c)^diff_order / diff_efold`` with ``K_c = pi N / L`` (the
  smallest resolved scale), integrated exactly through an integrating factor.
* Time stepping: classic 4th-order Runge-Kutta on the integrating-factor form (Lawson's
  IF-RK4), which is 4th order for the full equation.

``SQGParams(sqgturb_compat=True)`` switches to sqgturb's algorithm instead: dealiased
advection 2.25x too strong (equivalently ``H``, ``f`` and ``U`` all 2.25x larger), the
Nyquist row and column carried into the Jacobian, and a plain RK4 step followed by one
multiplication by the hyperdiffusion factor (see :class:`SQGParams` and
:mod:`turbda_kit.baselines.sqgturb`).

Tensors are ``(*batch, 2, N, N)`` (levels, y, x) in float32 or float64 on any device;
the input decides the device and dtype. Operators are built once per (device, dtype)
and cached on the model; per-batch-size work buffers are reused between steps so a
step allocates almost nothing. On a CPU the work goes by cache-sized blocks (members,
member-levels, grid rows) and, with several torch threads, member blocks are stepped
concurrently; none of this changes a bit of the result (see :meth:`SQGModel._blocks`).

Examples
--------
>>> import torch
>>> from turbda_kit.models.sqg import SQGModel, SQGParams, random_initial_state
>>> params = SQGParams(N=32, dt=2400.0)
>>> model = SQGModel(params)
>>> pv = random_initial_state(params, torch.Generator().manual_seed(0), batch_shape=(3,))
>>> model.advance(pv, 4).shape
torch.Size([3, 2, 32, 32])
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import native
from ..errors import DivergenceError, InputError
from .base import check_state
from .spectral import (
    dealias_rows,
    half_plane_weights,
    shell_index,
    to_grid,
    to_spectral,
    wavenumbers,
)

__all__ = [
    "SQGParams",
    "SQGTURB_DEALIAS_FACTOR",
    "SQGPreset",
    "SQG_PRESETS",
    "sqg_preset",
    "bao2024_sqg64",
    "bao2024_at_resolution",
    "vit_scaling_sqg128",
    "vit_scaling_sqg256",
    "SQGModel",
    "make_stepper",
    "pv_to_theta",
    "theta_to_pv",
    "equilibrium_pv",
    "random_initial_state",
]

DAY_SECONDS = 86400.0
_STATE_UNITS = ("pv", "K")
#: Factor by which sqgturb's dealiased advection exceeds the true one: ``(3/2)**2``, the
#: padded grid's FFT normalisation it leaves on the truncated Jacobian.
SQGTURB_DEALIAS_FACTOR = 2.25
# Target working sets on a CPU: a block of members (spectral arrays, see SQGModel._blocks),
# a chunk of member-levels in the Jacobian (_jacobian_chunk) and a block of grid rows
# between its y and x transforms (_row_block).
_CPU_BLOCK_BYTES = 2 * 2**20
_CPU_JACOBIAN_BYTES = 2 * 2**20
_CPU_ROW_BLOCK_BYTES = 4 * 2**20


# --------------------------------------------------------------------------------------
# Parameters and presets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SQGParams:
    """Physical and numerical parameters of the SQG model (SI units).

    Attributes
    ----------
    N : int
        Grid points per side (even, >= 8); the state is ``(2, N, N)``.
    dt : float
        Time step, s.
    L : float
        Side of the doubly periodic square domain, m.
    H : float
        Height of the lid above the surface, m.
    U : float
        Speed scale of the equilibrium jet, m/s (lid-minus-surface wind difference for the
        symmetric jet; lid wind for the asymmetric one).
    nsq : float
        Squared buoyancy (Brunt-Vaisala) frequency ``N_b**2``, 1/s^2.
    f : float
        Coriolis parameter, 1/s.
    g : float
        Gravity, m/s^2.
    theta0 : float
        Reference potential temperature, K.
    tdiab : float
        Thermal relaxation time scale toward the equilibrium jet, s (``inf``: none).
    r : float
        Ekman damping rate, 1/s (0: none).
    diff_order : int
        Order of the hyperdiffusion (power of ``|K|``; even, >= 2).
    diff_efold : float
        E-folding time of the hyperdiffusion at the smallest resolved scale, s (``inf``:
        none).
    symmetric : bool
        Symmetric equilibrium jet (same forcing at both boundaries) or the asymmetric
        variant with no equilibrium wind at the surface.
    dealias : bool
        Compute the Jacobian on a 3/2-padded grid (2/3 rule).
    sqgturb_compat : bool
        Reproduce J. Whitaker's ``sqgturb`` algorithm instead of the corrected physics
        (default False): with ``dealias=True`` advection 2.25x too strong (sqgturb's
        padded-grid normalisation), the Nyquist row and column carried into the
        Jacobian as sqgturb does, and plain RK4 followed by one hyperdiffusion factor
        per step instead of integrating-factor RK4. The SC24 nature runs were made with
        these dynamics; ``docs/models.md`` explains the three differences.
        ``turbda_kit.baselines.sqgturb.SqgturbModel`` is the per-member NumPy reference.
        With ``dealias=True``, ``N`` must be a multiple of 4.

    Examples
    --------
    >>> p = SQGParams(N=64, dt=1200.0)
    >>> round(p.scalefact, 6), p.rossby_radius
    (0.003061, 1000000.0)
    """

    N: int = 64
    dt: float = 1200.0
    L: float = 20.0e6
    H: float = 10.0e3
    U: float = 30.0
    nsq: float = 1.0e-4
    f: float = 1.0e-4
    g: float = 9.8
    theta0: float = 300.0
    tdiab: float = 10.0 * DAY_SECONDS
    r: float = 0.0
    diff_order: int = 8
    diff_efold: float = DAY_SECONDS
    symmetric: bool = True
    dealias: bool = True
    sqgturb_compat: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.N, bool) or not isinstance(self.N, int) or self.N < 8 or self.N % 2:
            raise InputError(f"SQGParams.N = {self.N!r}: must be an even integer >= 8 "
                             "(grid points per side; powers of 2 are fastest)")
        for name in ("dt", "L", "H", "nsq", "f", "g", "theta0"):
            _require_positive_finite(name, getattr(self, name))
        for name in ("tdiab", "diff_efold"):
            value = getattr(self, name)
            if not _is_real(value) or not value > 0:
                raise InputError(f"SQGParams.{name} = {value!r}: must be > 0 seconds "
                                 "(float('inf') switches the term off)")
        if not _is_real(self.U) or not math.isfinite(self.U):
            raise InputError(f"SQGParams.U = {self.U!r}: must be a finite speed in m/s")
        if not _is_real(self.r) or not math.isfinite(self.r) or self.r < 0:
            raise InputError(f"SQGParams.r = {self.r!r}: Ekman damping rate must be finite "
                             "and >= 0 (1/s; 0 switches it off)")
        if (isinstance(self.diff_order, bool) or not isinstance(self.diff_order, int)
                or self.diff_order < 2 or self.diff_order % 2):
            raise InputError(f"SQGParams.diff_order = {self.diff_order!r}: must be an even "
                             "integer >= 2 (8 is usual)")
        for name in ("symmetric", "dealias", "sqgturb_compat"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"SQGParams.{name} = {getattr(self, name)!r}: must be True "
                                 "or False")
        if self.sqgturb_compat and self.dealias and self.N % 4:
            raise InputError(f"SQGParams.N = {self.N} with sqgturb_compat=True and "
                             "dealias=True: N must be a multiple of 4 (sqgturb's 3N/2 "
                             "padded grid must be even)")

    @property
    def scalefact(self) -> float:
        """``f * theta0 / g`` in K s/m: temperature (K) = PV (m/s) * scalefact."""
        return self.f * self.theta0 / self.g

    @property
    def buoyancy_frequency(self) -> float:
        """``N_b = sqrt(nsq)``, 1/s."""
        return math.sqrt(self.nsq)

    @property
    def rossby_radius(self) -> float:
        """Deformation radius ``N_b H / f``, m."""
        return self.buoyancy_frequency * self.H / self.f

    @property
    def dx(self) -> float:
        """Grid spacing ``L / N``, m."""
        return self.L / self.N

    def replace(self, **changes: Any) -> SQGParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Field values as a plain dict (JSON/netCDF friendly)."""
        return dataclasses.asdict(self)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_positive_finite(name: str, value: Any) -> None:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise InputError(f"SQGParams.{name} = {value!r}: must be finite and > 0 "
                         f"({_UNITS[name]})")


_UNITS = {"dt": "s", "L": "m", "H": "m", "nsq": "1/s^2", "f": "1/s", "g": "m/s^2",
          "theta0": "K"}


@dataclass(frozen=True)
class SQGPreset:
    """A named model setting from a study, with its output interval.

    Attributes
    ----------
    name : str
        Identifier (``bao2024_sqg64``, ...).
    params : SQGParams
        Model parameters.
    output_interval_s : float
        Interval between stored states in that study's data sets, s.
    note : str
        Where the numbers come from and what was chosen here.
    """

    name: str
    params: SQGParams
    output_interval_s: float
    note: str


def _bao2024_params(n: int, dt: float, diff_efold: float) -> SQGParams:
    nsq, f, h = 1.0e-4, 1.0e-4, 10.0e3
    rossby_radius = math.sqrt(nsq) * h / f  # 1000 km
    return SQGParams(N=n, dt=dt, L=20.0 * rossby_radius, H=h, U=30.0, nsq=nsq, f=f, g=9.8,
                     theta0=300.0, tdiab=10.0 * DAY_SECONDS, r=0.0, diff_order=8,
                     diff_efold=diff_efold, symmetric=True, dealias=True)


SQG_PRESETS: dict[str, SQGPreset] = {
    "bao2024_sqg64": SQGPreset(
        "bao2024_sqg64", _bao2024_params(64, 1200.0, DAY_SECONDS), 12 * 3600.0,
        "Coupled ViT+EnSF experiment setting: N=64, dt=1200 s, U=30 m/s, L=20 Rossby "
        "radii (20,000 km), H=10 km, nsq=f=1e-4, tdiab=10 days, 8th-order hyperdiffusion "
        "with 1-day e-folding, 12-hourly output."),
    "vit_scaling_sqg128": SQGPreset(
        "vit_scaling_sqg128", _bao2024_params(128, 600.0, DAY_SECONDS / 2), 12 * 3600.0,
        "ViT-scaling setting at N=128: the bao2024 physics with dt and diff_efold scaled "
        "by 64/N (dt=600 s keeps the CFL number of the N=64 setting; the e-folding time "
        "of the smallest resolved scale shrinks with it, 12 h)."),
    "vit_scaling_sqg256": SQGPreset(
        "vit_scaling_sqg256", _bao2024_params(256, 300.0, DAY_SECONDS / 4), 12 * 3600.0,
        "ViT-scaling setting at N=256: dt=300 s and diff_efold=6 h (both scaled by 64/N; "
        "6 h is also sqgturb's choice at N=256)."),
}


def bao2024_at_resolution(n: int) -> SQGParams:
    """The bao2024 physics on an ``n x n`` grid, ``dt`` and ``diff_efold`` scaled by 64/n.

    ``bao2024_at_resolution(64)``, ``(128)`` and ``(256)`` equal the three presets; other
    even ``n`` (e.g. 32 for quick demos and tests) follow the same rule, which keeps the
    CFL number of the N=64 setting.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 8 or n % 2:
        raise InputError(f"n = {n!r}: must be an even integer >= 8")
    return _bao2024_params(n, 1200.0 * 64 / n, DAY_SECONDS * 64 / n)


def sqg_preset(name: str) -> SQGPreset:
    """The preset called ``name`` (one of :data:`SQG_PRESETS`)."""
    try:
        return SQG_PRESETS[name]
    except KeyError:
        raise InputError(f"unknown SQG preset {name!r}: choose one of "
                         f"{', '.join(sorted(SQG_PRESETS))}") from None


def bao2024_sqg64() -> SQGParams:
    """Parameters of the coupled-experiment setting (N=64, dt=1200 s; output every 12 h)."""
    return SQG_PRESETS["bao2024_sqg64"].params


def vit_scaling_sqg128() -> SQGParams:
    """ViT-scaling setting at N=128 (dt=600 s, diff_efold=12 h)."""
    return SQG_PRESETS["vit_scaling_sqg128"].params


def vit_scaling_sqg256() -> SQGParams:
    """ViT-scaling setting at N=256 (dt=300 s, diff_efold=6 h)."""
    return SQG_PRESETS["vit_scaling_sqg256"].params


# --------------------------------------------------------------------------------------
# Unit conversions, equilibrium and initial states
# --------------------------------------------------------------------------------------


def pv_to_theta(pv: Any, params: SQGParams) -> Any:
    """Boundary PV (m/s) -> potential temperature anomaly (K): ``pv * scalefact``.

    Works on tensors, arrays and numbers of any shape.
    """
    return pv * params.scalefact


def theta_to_pv(theta: Any, params: SQGParams) -> Any:
    """Potential temperature anomaly (K) -> boundary PV (m/s): ``theta / scalefact``."""
    return theta / params.scalefact


def equilibrium_pv(params: SQGParams, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float64) -> Tensor:
    """Grid PV of the equilibrium jet the thermal relaxation pulls toward.

    Returns
    -------
    Tensor, shape ``(2, N, N)``, PV in m/s
        ``-A cos(2 pi y / L)`` at both levels (symmetric) or with the lid amplitude
        ``cosh(mu)`` times the surface one (asymmetric), ``mu = (2 pi / L) N_b H / f``.
    """
    n = params.N
    wavenumber = 2.0 * math.pi / params.L
    mu = wavenumber * params.rossby_radius
    y = torch.arange(n, dtype=torch.float64) * params.dx
    profile = torch.cos(wavenumber * y)
    if params.symmetric:
        amplitude = (mu * 0.5 * params.U / (wavenumber * params.H)) / math.tanh(0.5 * mu)
        levels = torch.stack([-amplitude * profile, -amplitude * profile])
    else:
        surface = -(mu * params.U / (wavenumber * params.H)) / math.sinh(mu) * profile
        levels = torch.stack([surface, surface * math.cosh(mu)])
    pv = levels[:, :, None].expand(2, n, n).contiguous()
    return pv.to(device=device, dtype=dtype)


def random_initial_state(params: SQGParams, generator: torch.Generator,
                         batch_shape: tuple[int, ...] = (), noise_std: float = 100.0,
                         blob_amplitude: float = 2000.0,
                         device: torch.device | str | None = None,
                         dtype: torch.dtype = torch.float64) -> Tensor:
    """Seeded white noise plus a localized warm blob on the lid (sqgturb's usual start).

    The noise is drawn in float64 on the CPU from ``generator``, so the same seed gives
    the same state on every device; each level then has its area mean removed.

    Parameters
    ----------
    params : SQGParams
    generator : torch.Generator
        CPU generator (e.g. ``torch.Generator().manual_seed(seed)``).
    batch_shape : tuple of int
        Leading dims (e.g. ``(members,)``).
    noise_std : float
        Standard deviation of the grid-point noise, PV units (m/s; 100 m/s ~ 0.3 K).
    blob_amplitude : float
        Peak of ``sin(x/2)**40 sin(y)**20`` (x, y in radians over the domain) on the lid.

    Returns
    -------
    Tensor, shape ``(*batch_shape, 2, N, N)``
    """
    n = params.N
    noise = torch.randn((*batch_shape, 2, n, n), generator=generator, dtype=torch.float64)
    pv = noise * noise_std
    angle = torch.arange(n, dtype=torch.float64) * (2.0 * math.pi / n)
    blob = torch.sin(angle[None, :] / 2) ** 40 * torch.sin(angle[:, None]) ** 20
    pv[..., 1, :, :] += blob_amplitude * blob
    pv -= pv.mean(dim=(-2, -1), keepdim=True)
    return pv.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------
# Precomputed operators and work buffers
# --------------------------------------------------------------------------------------


class _Operators:
    """Spectral operators of one parameter set on one (device, dtype).

    Internally the model keeps amplitudes in a transposed "kl" layout ``(..., N//2+1, N)``
    (rows: x wavenumber ``k = 0..N/2``; columns: y wavenumber ``l`` in fftfreq order), so
    that both 1-D transforms of the Jacobian run over contiguous memory and the dealiasing
    copies move contiguous blocks. All operator arrays here are ``(N//2+1, N)``.

    With ``params.sqgturb_compat`` the operators reproduce sqgturb's Jacobian: the
    Nyquist x wavenumber (row ``k = N/2``) is padded too, its derivative fields
    conjugated (``k_in`` rows), the Nyquist row ``l = -N/2`` is kept in both directions
    (``cols``), and the derivatives of ``q`` carry the factor 2.25 when dealiased.
    """

    def __init__(self, params: SQGParams, device: torch.device, dtype: torch.dtype):
        n = params.N
        self.n = n
        self.nh = n // 2 + 1
        self.dealias = params.dealias
        self.compat = params.sqgturb_compat
        # sqgturb pads the Nyquist column conjugated (see _tendency_into)
        self.conj_nyquist = self.compat and self.dealias
        # kept x wavenumbers (rows) of the Jacobian, the rows carried onto the padded grid,
        # and the padded grid size
        self.m = 3 * n // 2 if params.dealias else n
        self.k_kept = n // 2 if params.dealias else self.nh
        self.k_in = self.nh if self.conj_nyquist else self.k_kept
        self.mh = self.m // 2 + 1
        # kept y wavenumbers (columns): (model slice, padded-grid slice) pairs
        if not params.dealias:
            self.cols = ((slice(0, n), slice(0, n)),)
        elif self.compat:  # |l| <= N/2: the Nyquist row l = -N/2 too
            half = n // 2
            self.cols = ((slice(0, half), slice(0, half)),
                         (slice(half, n), slice(self.m - half, self.m)))
        else:
            self.cols = dealias_rows(n, self.m)
        self.device, self.dtype = device, dtype
        self.cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        # The Jacobian's transposed copies in C on a CPU (native.TransposeCopy; a copy, so
        # the same bits): per chunk of complex64 member-levels 1.1-4.3x faster than
        # torch's copy at N = 64-256 (benchmarks/bench_sqg_copies.py). In complex128 the
        # second copy (the advection's kept x wavenumbers) is as fast or faster in torch (0.8-1.0x):
        # C for the first only.
        self.native_transpose = device.type == "cpu" and native.available()
        self.native_transpose_adv = self.native_transpose and self.cdtype == torch.complex64
        f64 = torch.float64
        kx, ky = wavenumbers(n, params.L, device=device, dtype=f64)
        kx, ky = kx.reshape(-1, 1), ky.reshape(1, -1)  # kl layout
        ksq = kx**2 + ky**2
        ktot = torch.sqrt(ksq)

        # Inversion psi_0 = -c q_0 + s q_1, psi_1 = -s q_0 + c q_1 with c = (H/mu)/tanh(mu),
        # s = (H/mu)/sinh(mu); the K = 0 (mean) streamfunction has no dynamics: set to 0.
        mu = ktot * (params.buoyancy_frequency * params.H / params.f)
        mu_safe = torch.where(mu > 0, mu, torch.ones_like(mu))
        h_over_mu = params.H / mu_safe
        zero = mu == 0
        self.inv_c = torch.where(zero, 0.0, h_over_mu / torch.tanh(mu_safe)).to(dtype)
        self.inv_s = torch.where(zero, 0.0, h_over_mu / torch.sinh(mu_safe)).to(dtype)

        # Spectral derivatives with the Nyquist wavenumbers set to zero (a real field cannot
        # carry the derivative of a Nyquist mode). sqgturb keeps them: l = -N/2, and for
        # the stored Nyquist column k = -N/2 on the model grid (N * fftfreq(N)) but
        # k = +N/2 on the padded grid.
        kx_d, ky_d = kx.clone(), ky.clone()
        if not self.compat:
            kx_d[n // 2, 0] = 0.0
            ky_d[0, n // 2] = 0.0
        elif not self.dealias:
            kx_d[n // 2, 0] = -kx_d[n // 2, 0]
        self.ik = (1j * kx_d).to(self.cdtype)
        self.il = (1j * ky_d).to(self.cdtype)
        self.neg_il = (-1j * ky_d).to(self.cdtype)
        # derivatives of q: sqgturb's dealiased Jacobian is 2.25x too large, folded in here
        if self.conj_nyquist:
            self.ik_q = (SQGTURB_DEALIAS_FACTOR * 1j * kx_d).to(self.cdtype)
            self.il_q = (SQGTURB_DEALIAS_FACTOR * 1j * ky_d).to(self.cdtype)
        else:
            self.ik_q, self.il_q = self.ik, self.il
        # the four derivative factors (u, v, dq/dx, dq/dy) on the rows and column slices
        # that go onto the padded grid: the products are written there directly
        factors = (self.neg_il, self.ik, self.ik_q, self.il_q)
        self.pad_factors = [tuple(f.expand(self.nh, n)[:self.k_in, small].contiguous()
                                  for f in factors) for small, _ in self.cols]
        self.ksq = ksq.to(dtype)

        # Hyperdiffusion integrating factors exp(-nu dt) and exp(-nu dt / 2).
        kcut = math.pi * n / params.L
        rate = (ktot / kcut) ** params.diff_order / params.diff_efold
        self.efac = torch.exp(-rate * params.dt).to(dtype)
        self.efac_half = torch.exp(-rate * (0.5 * params.dt)).to(dtype)
        self.two_efac_half = 2.0 * self.efac_half
        self.dt_efac_half = params.dt * self.efac_half

        self.relax = 0.0 if math.isinf(params.tdiab) else 1.0 / params.tdiab
        q_eq = to_spectral(equilibrium_pv(params, device=device, dtype=f64))
        # (1, 2, Nh, N), contiguous: .to() keeps the transposed strides, with which every
        # broadcast against it is much slower
        self.q_eq = q_eq.transpose(-1, -2).to(self.cdtype).contiguous().unsqueeze(0)
        self.relax_q_eq = self.relax * self.q_eq
        self.relax_q_eq_v = torch.view_as_real(self.relax_q_eq)
        self.ekman = params.r > 0
        self.r_ksq = (params.r * ksq).to(dtype)
        self.symmetric = params.symmetric

        # Real factors act on complex amplitudes through torch.view_as_real (a trailing
        # re/im axis of 2): multiplying a complex tensor by a real one would convert the
        # real one to complex on every call.
        # The factor is repeated for re and im so the innermost axes are contiguous and
        # the products vectorise (a broadcast size-1 last axis is ~3x slower).
        def as_view(t: Tensor) -> Tensor:
            return t.unsqueeze(-1).expand(*t.shape, 2).contiguous()

        self.inv_c_v, self.inv_s_v = as_view(self.inv_c), as_view(self.inv_s)
        self.neg_inv_c_v, self.neg_inv_s_v = -self.inv_c_v, -self.inv_s_v
        self.efac_v, self.efac_half_v = as_view(self.efac), as_view(self.efac_half)
        self.two_efac_half_v = as_view(self.two_efac_half)
        self.dt_efac_half_v = as_view(self.dt_efac_half)
        self.r_ksq_v = as_view(self.r_ksq)
        self.neg_r_ksq_v = -self.r_ksq_v

    def to_kl(self, grid: Tensor) -> Tensor:
        """Grid ``(B, ..., N, N)`` -> kl-layout amplitudes ``(B, ..., Nh, N)``."""
        along_x = torch.fft.rfft(grid, dim=-1, norm="forward")
        return torch.fft.fft(along_x.transpose(-1, -2).contiguous(), dim=-1, norm="forward")

    def from_kl(self, spec: Tensor) -> Tensor:
        """kl-layout amplitudes ``(B, ..., Nh, N)`` -> grid ``(B, ..., N, N)``."""
        along_y = torch.fft.ifft(spec, dim=-1, norm="forward")
        return torch.fft.irfft(along_y.transpose(-1, -2).contiguous(), n=self.n, dim=-1,
                               norm="forward")


class _Workspace:
    """Reusable buffers for a block of ``batch`` members (allocated once, zeroed once).

    The Jacobian is formed for ``chunk`` member-levels at a time (one level of one member
    is independent of the others once the streamfunction is known), and between its y
    and x transforms in blocks of ``row_block`` grid rows, so that on a CPU the data of
    one transform is still in cache for the next. FFT outputs are not preallocated:
    torch's FFTs write ``out=`` through an extra copy, which costs more than taking their
    fresh result.
    """

    def __init__(self, ops: _Operators, batch: int, chunk: int, row_block: int):
        n, nh, m, mh, k_in, kx = ops.n, ops.nh, ops.m, ops.mh, ops.k_in, ops.k_kept
        c = {"device": ops.device, "dtype": ops.cdtype}
        chunk = max(1, min(chunk, 2 * batch))
        self.batch, self.chunk = batch, chunk
        self.stage = torch.empty((batch, 2, nh, n), **c)
        self.q_in = torch.empty_like(self.stage)  # tendency input other than a stage
        self.tend = torch.empty_like(self.stage)
        self.acc = torch.empty_like(self.stage)
        self.psi = torch.empty_like(self.stage)
        if ops.dealias:
            # spectra of u, v, dq/dx, dq/dy, kept modes zero-padded to the Jacobian grid in
            # y (kl layout), per member-level
            self.fields = torch.zeros((chunk, 4, k_in, m), **c)
        else:
            self.fields = torch.empty((chunk, 4, nh, n), **c)
        rows = max(1, min(m, row_block))
        self.rows = [(r0, min(r0 + rows, m)) for r0 in range(0, m, rows)]
        # a block after the y transform: (y, k) layout, zero-padded in k for the x transform
        self.xpad = {r: torch.zeros((chunk, 4, r, mh), **c)
                     for r in {r1 - r0 for r0, r1 in self.rows}}
        self.adv = {r: torch.empty((chunk, r, m), device=ops.device, dtype=ops.dtype)
                    for r in self.xpad}
        # the advection after the x transform, kept k only: (k, y) layout for the y transform
        self.adv_ky = torch.empty((chunk, kx, m), **c)
        # kept modes of the advection in kl layout (rest stays zero)
        self.adv_kl = torch.zeros((batch, 2, nh, n), **c)
        self._views: dict[int, list[_ChunkViews]] = {}

    def chunk_views(self, ops: _Operators, source: Tensor) -> list[_ChunkViews]:
        """The Jacobian's views of these buffers, per chunk, for input ``source``.

        ``source`` is ``stage`` or ``q_in`` (buffers of this workspace, so their address
        identifies them). Building the views once saves ~50 tensor-view operations per
        chunk and tendency, a large part of the per-operation overhead at N <= 128.
        """
        key = source.data_ptr()
        views = self._views.get(key)
        if views is None:
            views = self._views[key] = _chunk_views(ops, self, source)
        return views


class _ChunkViews:
    """Views of a workspace for the Jacobian of member-levels ``[c0, c1)`` of one input.

    Attributes
    ----------
    pad : list of (source, factor, destination)
        Derivative products written onto the padded grid.
    conj : Tensor or None
        Real parts of the padded Nyquist row (sqgturb compat mode: negated).
    fields, adv_ky : Tensor
        Padded fields ``(C, 4, k_in, M)``; advection ``(C, kx, M)`` before its y transform.
    rows : list of (r0, r1, xpad_kept, xpad, adv, adv_ky_rows, to_xpad, to_adv_ky)
        Per block of grid rows: destination of the transposed y transform, x-transform
        input, product buffer, destination of the forward x transform, and the C copies
        into the two destinations (:class:`turbda_kit.native.TransposeCopy`, or None).
    trunc : list of (destination, padded-grid column slice)
        Kept modes of the advection in kl layout.
    """

    __slots__ = ("pad", "conj", "fields", "adv_ky", "rows", "trunc")


def _chunk_views(ops: _Operators, ws: _Workspace, source: Tensor) -> list[_ChunkViews]:
    levels = 2 * ws.batch
    nh, n, k_in, kx = ops.nh, ops.n, ops.k_in, ops.k_kept
    q_ml = source.view(levels, nh, n)
    psi_ml = ws.psi.view(levels, nh, n)
    adv_ml = ws.adv_kl.view(levels, nh, n)
    out = []
    for c0 in range(0, levels, ws.chunk):
        c1 = min(c0 + ws.chunk, levels)
        c = c1 - c0
        psi, q = psi_ml[c0:c1], q_ml[c0:c1]
        v = _ChunkViews()
        v.fields = ws.fields[:c]
        if ops.dealias:
            v.pad = [(src[:, :k_in, small], factor, v.fields[:, i, :, large])
                     for (small, large), factors in zip(ops.cols, ops.pad_factors)
                     for i, (src, factor) in enumerate(zip((psi, psi, q, q), factors))]
        else:
            v.pad = [(src, factor, v.fields[:, i]) for i, (src, factor) in
                     enumerate(zip((psi, psi, q, q), (ops.neg_il, ops.ik, ops.ik_q, ops.il_q)))]
        v.conj = (torch.view_as_real(v.fields[:, :, k_in - 1, :])[..., 0]
                  if ops.conj_nyquist else None)
        v.adv_ky = ws.adv_ky[:c]
        v.rows = []
        for r0, r1 in ws.rows:
            xpad = ws.xpad[r1 - r0][:c]
            adv_ky_rows = v.adv_ky[..., r0:r1]
            to_xpad = to_adv_ky = None
            if ops.native_transpose:
                # sources of these layouts: slices of the fresh (contiguous) FFT outputs
                along_y = torch.zeros((c, 4, k_in, ops.m), dtype=ops.cdtype)[..., r0:r1]
                to_xpad = native.TransposeCopy(xpad[..., :k_in], along_y)
            if ops.native_transpose_adv:
                along_x = torch.zeros((c, r1 - r0, ops.mh), dtype=ops.cdtype)[..., :kx]
                to_adv_ky = native.TransposeCopy(adv_ky_rows, along_x)
            v.rows.append((r0, r1, xpad[..., :k_in], xpad, ws.adv[r1 - r0][:c], adv_ky_rows,
                           to_xpad, to_adv_ky))
        v.trunc = [(adv_ml[c0:c1, :kx, small], large) for small, large in ops.cols]
        out.append(v)
    return out


def _transpose_copy(copier: native.TransposeCopy | None, dst: Tensor, src: Tensor) -> None:
    """``dst.copy_(src.transpose(-1, -2))``, by the C copy where there is one for src."""
    if copier is None or not copier(src):
        dst.copy_(src.transpose(-1, -2))


def _cplx_bytes(ops: _Operators) -> int:
    return 8 if ops.dtype == torch.float32 else 16


def _bytes_per_member(ops: _Operators) -> int:
    """Spectral arrays of one member in one step: state, stage, tendency, sum, psi, advection."""
    return 2 * ops.nh * ops.n * _cplx_bytes(ops) * 6


def _jacobian_chunk(ops: _Operators) -> int:
    """Member-levels per Jacobian pass: about ``_CPU_JACOBIAN_BYTES`` of padded fields,
    their y transform and the advection before and after its y transform."""
    if ops.device.type != "cpu":
        return 2**30  # the whole block at once
    per_level = (2 * 4 * ops.k_in * ops.m + 2 * ops.k_kept * ops.m) * _cplx_bytes(ops)
    return max(1, _CPU_JACOBIAN_BYTES // per_level)


def _row_block(ops: _Operators, chunk: int) -> int:
    """Grid rows per block between the transforms (all of them off the CPU).

    About ``_CPU_ROW_BLOCK_BYTES`` of x-transform input and output, grids and product per
    block, in blocks of nearly equal size.
    """
    if ops.device.type != "cpu":
        return ops.m
    cplx = _cplx_bytes(ops)
    per_row = chunk * (4 * ops.mh * cplx + 4 * ops.m * cplx // 2 + ops.m * cplx // 2
                       + ops.mh * cplx)
    rows = max(1, _CPU_ROW_BLOCK_BYTES // per_row)
    n_blocks = -(-ops.m // rows)
    return -(-ops.m // n_blocks)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class SQGModel:
    """Batched SQG model: ``step``/``advance`` on ``(*batch, 2, N, N)`` PV or K tensors.

    Parameters
    ----------
    params : SQGParams
        Physical and numerical parameters.
    state_units : {"pv", "K"}
        Units of the states ``step`` and ``advance`` take and return: boundary PV in m/s
        (sqgturb's convention, the default) or potential temperature in K (the data's and
        the cycling engine's units; converted with :func:`theta_to_pv` on entry and
        :func:`pv_to_theta` on exit). The model always runs in PV; the diagnostics and the
        ``*_spectral`` methods take PV whatever this says.
    cfl_check_every : int
        During :meth:`advance`, measure the CFL number (and catch NaN/inf) every this many
        steps from winds the step computes anyway; 0 disables the check.
    cfl_max : float
        Largest CFL number (``max |u| dt / dx``, speed on the padded grid) allowed.
    block_members : int or None
        Members stepped together as one block. ``None``: the whole batch on a GPU; on a
        CPU, blocks of ~2 MB of spectral arrays (10 members at N=64, 2 at N=128 in
        float32), and at least one block per intra-op thread. All blocks advance in
        lockstep; on a CPU the result does not depend on the blocks (bit for bit on one
        thread, measured). With several intra-op threads and several blocks, the blocks
        are stepped concurrently on that many threads, each operation single-threaded,
        so the result equals the one-thread run's.

    Attributes
    ----------
    params : SQGParams
    state_shape : tuple of int
        ``(2, N, N)``: levels (surface, lid), y, x.
    dt : float
        Time step, s.
    time_unit_seconds : float
        1.0 (``dt`` is in seconds).
    state_units : str

    Notes
    -----
    Satisfies :class:`turbda_kit.models.base.ForecastModel`. The ``*_spectral`` methods
    work on rfft2 amplitudes ``(*batch, 2, N, N//2+1)`` (``norm="forward"``) and let a
    caller keep a run in spectral space.
    """

    time_unit_seconds = 1.0

    def __init__(self, params: SQGParams, cfl_check_every: int = 10, cfl_max: float = 1.0,
                 block_members: int | None = None, state_units: str = "pv"):
        if not isinstance(params, SQGParams):
            raise InputError(f"params must be an SQGParams, got {type(params).__name__}")
        if state_units not in _STATE_UNITS:
            raise InputError(f"state_units = {state_units!r}: choose 'pv' (boundary PV, m/s) "
                             "or 'K' (potential temperature)")
        if isinstance(cfl_check_every, bool) or not isinstance(cfl_check_every, int) \
                or cfl_check_every < 0:
            raise InputError(f"cfl_check_every = {cfl_check_every!r}: must be an integer >= 0 "
                             "(0 disables the check)")
        if not _is_real(cfl_max) or not cfl_max > 0:
            raise InputError(f"cfl_max = {cfl_max!r}: must be > 0 (1.0 is usual)")
        if block_members is not None and (isinstance(block_members, bool) or not isinstance(
                block_members, int) or block_members < 1):
            raise InputError(f"block_members = {block_members!r}: must be None (automatic) "
                             "or an integer >= 1")
        self.params = params
        self.state_shape: tuple[int, ...] = (2, params.N, params.N)
        self.dt: float = float(params.dt)
        self.cfl_check_every = cfl_check_every
        self.cfl_max = float(cfl_max)
        self.block_members = block_members
        self.state_units = state_units
        self._operators: dict[tuple[torch.device, torch.dtype], _Operators] = {}
        self._workspaces: dict[tuple[torch.device, torch.dtype, int], _Workspace] = {}

    def __repr__(self) -> str:
        units = "" if self.state_units == "pv" else f", state_units={self.state_units!r}"
        return f"SQGModel({self.params!r}{units})"

    # ----- caches ---------------------------------------------------------------------

    def operators(self, device: torch.device | str, dtype: torch.dtype) -> _Operators:
        """Precomputed spectral operators for ``(device, dtype)`` (built on first use)."""
        key = (torch.device(device), dtype)
        ops = self._operators.get(key)
        if ops is None:
            if dtype not in (torch.float32, torch.float64):
                raise InputError(f"dtype {dtype} not supported: use torch.float32 or float64")
            ops = _Operators(self.params, key[0], dtype)
            self._operators[key] = ops
        return ops

    def _workspace(self, ops: _Operators, batch: int, worker: int = 0) -> _Workspace:
        key = (ops.device, ops.dtype, batch, worker)
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) >= 8:  # bound the memory held by stale sizes
                self._workspaces.clear()
            chunk = min(_jacobian_chunk(ops), 2 * batch)
            ws = _Workspace(ops, batch, chunk, _row_block(ops, chunk))
            self._workspaces[key] = ws
        return ws

    def _blocks(self, ops: _Operators, batch: int
                ) -> tuple[list[tuple[int, int, _Workspace]], int]:
        """Member blocks ``(start, stop, workspace)`` and the number of threads stepping them.

        On a CPU the members are stepped in blocks of about ``_CPU_BLOCK_BYTES`` of
        spectral arrays (the Jacobian inside a step goes by smaller chunks, see
        :class:`_Workspace`), all blocks in lockstep so every step covers all members.
        With several intra-op threads the batch is split into at least that many
        blocks, stepped concurrently, one thread each (block ``j`` on thread
        ``j % threads``, which owns its workspaces) with every operation single-threaded.
        On one thread the blocks do not change a bit of the result, so a run on any
        number of threads equals the one-thread run (a single member falls back to
        intra-op threads). On a GPU the whole batch is one block.
        """
        threads = max(1, torch.get_num_threads()) if ops.device.type == "cpu" else 1
        if self.block_members is not None:
            size = self.block_members
        elif ops.device.type == "cpu":
            size = max(1, _CPU_BLOCK_BYTES // _bytes_per_member(ops))
            size = min(size, -(-batch // threads))
        else:
            size = batch
        size = min(size, batch)
        n_blocks = -(-batch // size)
        workers = min(threads, n_blocks)
        blocks = []
        for j, start in enumerate(range(0, batch, size)):
            stop = min(start + size, batch)
            blocks.append((start, stop, self._workspace(ops, stop - start, j % workers)))
        return blocks, workers

    def _run_steps(self, ops: _Operators, q: Tensor, blocks: list[tuple[int, int, _Workspace]],
                   n_steps: int, measure_first: bool, pool: ThreadPoolExecutor | None,
                   workers: int) -> list[Tensor]:
        """Advance kl amplitudes ``q`` in place by ``n_steps`` steps, block by block.

        Returns the blocks' largest squared wind speeds before the first step when
        ``measure_first``, else an empty list.
        """
        def run(group: list[tuple[int, int, _Workspace]]) -> list[Tensor]:
            speeds = []
            for i in range(n_steps):
                for a, b, ws in group:
                    speed = self._rk4_into(ops, ws, q[a:b], measure_first and i == 0)
                    if speed is not None:
                        speeds.append(speed)
            return speeds

        if pool is None:
            return run(blocks)
        futures = [pool.submit(run, blocks[w::workers]) for w in range(workers)]
        return [speed for future in futures for speed in future.result()]

    def _flatten_spectral(self, pv_spec: Tensor, name: str) -> Tensor:
        n = self.params.N
        shape = (2, n, n // 2 + 1)
        if not isinstance(pv_spec, Tensor) or not pv_spec.is_complex():
            raise InputError(f"{name} must be a complex tensor of rfft2 amplitudes "
                             f"(*batch, {', '.join(map(str, shape))})")
        if tuple(pv_spec.shape[-3:]) != shape or pv_spec.dim() < 3:
            raise InputError(f"{name} has shape {tuple(pv_spec.shape)}; expected (*batch, "
                             f"{', '.join(map(str, shape))})")
        return pv_spec.reshape(-1, *shape)

    @staticmethod
    def _real_dtype(cdtype: torch.dtype) -> torch.dtype:
        return torch.float32 if cdtype == torch.complex64 else torch.float64

    # ----- spectral core --------------------------------------------------------------

    def to_spectral(self, state: Tensor) -> Tensor:
        """Grid PV ``(*batch, 2, N, N)`` -> amplitudes ``(*batch, 2, N, N//2+1)``."""
        check_state(state, self.state_shape, "state", finite=False)
        return to_spectral(state)

    def to_grid(self, pv_spec: Tensor) -> Tensor:
        """Amplitudes ``(*batch, 2, N, N//2+1)`` -> grid PV ``(*batch, 2, N, N)``."""
        return to_grid(pv_spec, self.params.N)

    def invert(self, pv_spec: Tensor) -> Tensor:
        """Streamfunction amplitudes (m^2/s) at both boundaries from PV amplitudes.

        Parameters
        ----------
        pv_spec : Tensor, shape ``(*batch, 2, N, N//2+1)``, complex

        Returns
        -------
        Tensor, same shape: ``psi`` with zero domain mean.
        """
        flat = self._flatten_spectral(pv_spec, "pv_spec")
        ops = self.operators(flat.device, self._real_dtype(flat.dtype))
        kl = flat.transpose(-1, -2)
        psi = torch.empty(kl.shape, dtype=kl.dtype, device=kl.device)
        self._invert_into(ops, kl, psi)
        return psi.transpose(-1, -2).reshape(pv_spec.shape)

    def pv_from_streamfunction(self, psi_spec: Tensor) -> Tensor:
        """Inverse of :meth:`invert` (the mean mode, undetermined by psi, is set to 0).

        ``q_0 = (mu/H) (psi_1/sinh mu - psi_0/tanh mu)``, ``q_1 = (mu/H) (psi_1/tanh mu -
        psi_0/sinh mu)``: the boundary values of ``dpsi/dz`` of the interior solution.
        """
        flat = self._flatten_spectral(psi_spec, "psi_spec")
        ops = self.operators(flat.device, self._real_dtype(flat.dtype))
        # [[-c, s], [-s, c]]^-1 = [[c, -s], [s, -c]] / (s^2 - c^2), in rfft2 layout
        c, s = ops.inv_c.transpose(-1, -2), ops.inv_s.transpose(-1, -2)
        det = s**2 - c**2
        det = torch.where(det == 0, torch.ones_like(det), det)
        a = torch.where(c == 0, torch.zeros_like(c), c / det)
        b = torch.where(c == 0, torch.zeros_like(s), s / det)
        q0 = a * flat[:, 0] - b * flat[:, 1]
        q1 = b * flat[:, 0] - a * flat[:, 1]
        return torch.stack([q0, q1], dim=1).reshape(psi_spec.shape)

    @staticmethod
    def _invert_into(ops: _Operators, q: Tensor, psi: Tensor) -> None:
        """psi_0 = s q_1 - c q_0, psi_1 = c q_1 - s q_0 (kl layout, B leading)."""
        qv, pv = torch.view_as_real(q), torch.view_as_real(psi)
        torch.mul(qv[:, 1], ops.inv_s_v, out=pv[:, 0])
        pv[:, 0].addcmul_(qv[:, 0], ops.neg_inv_c_v)
        torch.mul(qv[:, 1], ops.inv_c_v, out=pv[:, 1])
        pv[:, 1].addcmul_(qv[:, 0], ops.neg_inv_s_v)

    def _tendency_into(self, ops: _Operators, ws: _Workspace, q: Tensor, out: Tensor,
                       measure_speed: bool = False) -> Tensor | None:
        """Write dq/dt (without hyperdiffusion) of kl amplitudes ``q`` (B, 2, Nh, N) to out.

        Returns the largest squared wind speed on the Jacobian's grid when
        ``measure_speed`` (a 0-dim tensor), else None.
        """
        psi = ws.psi
        if q.data_ptr() != ws.stage.data_ptr():
            # the Jacobian's views are built for the workspace's own buffers
            q = ws.q_in.copy_(q)
        self._invert_into(ops, q, psi)
        # the Jacobian of each level of each member, a chunk of member-levels at a time
        speeds: list[Tensor] | None = [] if measure_speed else None
        for views in ws.chunk_views(ops, q):
            self._jacobian_into(ops, views, speeds)
        speed_sq = torch.stack(speeds).amax() if speeds is not None else None
        if ops.relax:
            # (q_eq - q) / tdiab - adv on real views, q / tdiab rounded first: the roundings
            # of torch's complex kernel with a scalar alpha, which is ~10x slower. Formed
            # as -((q / tdiab - q_eq / tdiab) + adv): round-to-nearest is symmetric, so the
            # same bits, and in-place ops avoid the slow broadcast into an aliased output.
            out_v = torch.view_as_real(out)
            torch.mul(torch.view_as_real(q), ops.relax, out=out_v)
            out_v.sub_(ops.relax_q_eq_v)
            out.add_(ws.adv_kl).neg_()
        else:
            torch.neg(ws.adv_kl, out=out)
        if ops.ekman:
            out_v, psi_v = torch.view_as_real(out), torch.view_as_real(psi)
            out_v[:, 0].addcmul_(psi_v[:, 0], ops.r_ksq_v)
            if ops.symmetric:
                out_v[:, 1].addcmul_(psi_v[:, 1], ops.neg_r_ksq_v)
        return speed_sq

    @staticmethod
    def _jacobian_into(ops: _Operators, views: _ChunkViews,
                       speeds: list[Tensor] | None) -> None:
        """Write the kept modes of ``u dq/dx + v dq/dy`` of a chunk of member-levels.

        With ``speeds`` given, the largest squared wind speed on the Jacobian's grid is
        appended to it (per block of rows).
        """
        # spectra of u = -dpsi/dy, v = dpsi/dx, dq/dx, dq/dy; dealiased: only the kept
        # modes, written straight onto the padded grid
        for source, factor, destination in views.pad:
            torch.mul(source, factor, out=destination)
        if views.conj is not None:
            # sqgturb: padded column k = +N/2 holds i k conj(X) for the stored Nyquist
            # column X, i.e. -conj of our derivative field there: negate the real part
            views.conj.neg_()
        # inverse transform: y first on the kept x wavenumbers only, then, block by block
        # of grid rows, x (real output), the product and the forward x transform
        along_y = torch.fft.ifft(views.fields, dim=-1, norm="forward")
        m, kx = ops.m, ops.k_kept
        for r0, r1, xpad_kept, xpad, adv, adv_ky_rows, to_xpad, to_adv_ky in views.rows:
            _transpose_copy(to_xpad, xpad_kept, along_y[..., r0:r1])
            u, v, dq_dx, dq_dy = torch.fft.irfft(xpad, n=m, dim=-1, norm="forward").unbind(1)
            if speeds is not None:
                torch.mul(u, u, out=adv)
                adv.addcmul_(v, v)
                speeds.append(adv.amax())
            torch.mul(u, dq_dx, out=adv)
            adv.addcmul_(v, dq_dy)
            along_x = torch.fft.rfft(adv, dim=-1, norm="forward")
            _transpose_copy(to_adv_ky, adv_ky_rows, along_x[..., :kx])
        # forward transform in y of the retained k, then keep the retained l
        spec = torch.fft.fft(views.adv_ky, dim=-1, norm="forward")
        for destination, large in views.trunc:
            destination.copy_(spec[..., large])

    def tendency_spectral(self, pv_spec: Tensor) -> Tensor:
        """dq/dt amplitudes (Jacobian, relaxation, Ekman; not hyperdiffusion).

        Parameters
        ----------
        pv_spec : Tensor, shape ``(*batch, 2, N, N//2+1)``, complex

        Returns
        -------
        Tensor, same shape, in m/s per s.
        """
        flat = self._flatten_spectral(pv_spec, "pv_spec")
        ops = self.operators(flat.device, self._real_dtype(flat.dtype))
        chunk = min(_jacobian_chunk(ops), 2 * flat.shape[0])
        ws = _Workspace(ops, flat.shape[0], chunk, _row_block(ops, chunk))
        kl = flat.transpose(-1, -2).contiguous()
        out = torch.empty_like(kl)
        with torch.no_grad():
            self._tendency_into(ops, ws, kl, out)
        return out.transpose(-1, -2).reshape(pv_spec.shape)

    def _rk4_into(self, ops: _Operators, ws: _Workspace, q: Tensor,
                  measure_speed: bool = False) -> Tensor | None:
        """Advance kl amplitudes ``q`` (B, 2, Nh, N) in place by one IF-RK4 step.

        See the module docstring; ``ws`` must be sized for ``B`` members.
        """
        if ops.compat:
            return self._rk4_sqgturb_into(ops, ws, q, measure_speed)
        stage, tend, acc = ws.stage, ws.tend, ws.acc
        # real views for the products with the real integrating factors
        qv, sv, tv, av = (torch.view_as_real(t) for t in (q, stage, tend, acc))
        dt = self.dt
        speed_sq = self._tendency_into(ops, ws, q, tend, measure_speed)  # a = F(q)
        torch.mul(tv, ops.efac_v, out=av)  # acc = E a
        torch.add(q, tend, alpha=0.5 * dt, out=stage)
        sv.mul_(ops.efac_half_v)  # q2 = Eh (q + dt/2 a)
        self._tendency_into(ops, ws, stage, tend)  # b = F(q2)
        av.addcmul_(tv, ops.two_efac_half_v)  # acc += 2 Eh b
        torch.mul(qv, ops.efac_half_v, out=sv)
        stage.add_(tend, alpha=0.5 * dt)  # q3 = Eh q + dt/2 b
        self._tendency_into(ops, ws, stage, tend)  # c = F(q3)
        av.addcmul_(tv, ops.two_efac_half_v)  # acc += 2 Eh c
        torch.mul(qv, ops.efac_v, out=sv)
        sv.addcmul_(tv, ops.dt_efac_half_v)  # q4 = E q + dt Eh c
        self._tendency_into(ops, ws, stage, tend)  # d = F(q4)
        acc.add_(tend)
        qv.mul_(ops.efac_v)
        q.add_(acc, alpha=dt / 6.0)  # E q + dt/6 (E a + 2Eh(b + c) + d)
        return speed_sq

    def _rk4_sqgturb_into(self, ops: _Operators, ws: _Workspace, q: Tensor,
                          measure_speed: bool = False) -> Tensor | None:
        """sqgturb's step of kl amplitudes ``q`` (B, 2, Nh, N), in place.

        Plain RK4 of the tendency, then the hyperdiffusion factor once:
        ``q <- E (q + dt/6 (a + 2 b + 2 c + d))``, ``a = F(q)``, ``b = F(q + dt/2 a)``,
        ``c = F(q + dt/2 b)``, ``d = F(q + dt c)``.
        """
        stage, tend, acc = ws.stage, ws.tend, ws.acc
        dt = self.dt
        speed_sq = self._tendency_into(ops, ws, q, acc, measure_speed)  # acc = a
        torch.add(q, acc, alpha=0.5 * dt, out=stage)
        self._tendency_into(ops, ws, stage, tend)  # b
        acc.add_(tend, alpha=2.0)
        torch.add(q, tend, alpha=0.5 * dt, out=stage)
        self._tendency_into(ops, ws, stage, tend)  # c
        acc.add_(tend, alpha=2.0)
        torch.add(q, tend, alpha=dt, out=stage)
        self._tendency_into(ops, ws, stage, tend)  # d
        acc.add_(tend)
        q.add_(acc, alpha=dt / 6.0)
        torch.view_as_real(q).mul_(ops.efac_v)
        return speed_sq

    @torch.no_grad()
    def step_spectral(self, pv_spec: Tensor, n_steps: int = 1) -> Tensor:
        """Advance amplitudes ``(*batch, 2, N, N//2+1)`` by ``n_steps`` (no CFL check)."""
        flat = self._flatten_spectral(pv_spec, "pv_spec")
        _check_steps(n_steps)
        ops = self.operators(flat.device, self._real_dtype(flat.dtype))
        q = flat.transpose(-1, -2).contiguous()
        blocks, workers = self._blocks(ops, q.shape[0])
        with _member_threads(workers) as pool:
            self._run_steps(ops, q, blocks, n_steps, False, pool, workers)
        return q.transpose(-1, -2).contiguous().reshape(pv_spec.shape)

    # ----- grid API (ForecastModel) ---------------------------------------------------

    def step(self, state: Tensor) -> Tensor:
        """Advance a grid state ``(*batch, 2, N, N)`` (in ``state_units``) by one step ``dt``."""
        return self.advance(state, 1)

    @torch.no_grad()
    def advance(self, state: Tensor, n_steps: int, check: bool = True) -> Tensor:
        """Advance a grid state ``(*batch, 2, N, N)`` by ``n_steps`` steps of ``dt`` seconds.

        The run stays in spectral space; one FFT pair per call, not per step.

        Parameters
        ----------
        state : Tensor, shape ``(*batch, 2, N, N)``, float32 or float64
            Boundary PV (m/s), or potential temperature (K) when ``state_units="K"``;
            must be finite.
        n_steps : int
            Number of steps (>= 0).
        check : bool
            Measure the CFL number every ``cfl_check_every`` steps and check the result
            is finite (False: no check, no host synchronisation).

        Returns
        -------
        Tensor, same shape, dtype and device as ``state``.

        Raises
        ------
        InputError
            Bad shape/dtype or NaN/inf in ``state``; bad ``n_steps``.
        DivergenceError
            The CFL number went above ``cfl_max`` or the state became NaN/inf. The error
            carries ``last_good_state`` (the grid state at the last passed check, in
            ``state_units``, same shape as ``state``) and ``last_good_step``.
        """
        check_state(state, self.state_shape, "state")
        if self.state_units == "K":
            state = theta_to_pv(state, self.params)
        _check_steps(n_steps)
        ops = self.operators(state.device, state.dtype)
        flat = state.reshape(-1, *self.state_shape)
        blocks, workers = self._blocks(ops, flat.shape[0])
        every = self.cfl_check_every if check else 0
        cfl_factor = self.dt / self.params.dx
        # with member threads the transforms in and out are single-threaded too, so the
        # result equals the one-thread run's bit for bit
        with _member_threads(workers) as pool:
            q = ops.to_kl(flat)
            good_step, good, candidate = 0, None, None
            if every:
                good, candidate = q.clone(), torch.empty_like(q)
            # segments of `every` steps; the first step of each measures the winds
            for i in range(0, n_steps, every or max(n_steps, 1)):
                count = min(every or n_steps, n_steps - i)
                if every:
                    candidate.copy_(q)
                speeds = self._run_steps(ops, q, blocks, count, bool(every), pool, workers)
                if every:
                    # the winds measured are those of the state *before* step i
                    speed = math.sqrt(float(torch.stack(speeds).amax()))
                    cfl = speed * cfl_factor
                    if not cfl <= self.cfl_max:  # also catches NaN
                        raise self._divergence(ops, good, state.shape, i, good_step, speed,
                                               cfl)
                    good, candidate = candidate, good
                    good_step = i
            out = ops.from_kl(q).reshape(state.shape)
        if every and not bool(torch.isfinite(out).all()):
            raise self._divergence(ops, good, state.shape, n_steps, good_step, float("nan"),
                                   float("nan"))
        return pv_to_theta(out, self.params) if self.state_units == "K" else out

    def _divergence(self, ops: _Operators, good: Tensor, shape: torch.Size, step: int,
                    good_step: int, speed: float, cfl: float) -> DivergenceError:
        p = self.params
        if math.isfinite(cfl):
            safe_dt = 0.8 * self.cfl_max * p.dx / speed
            message = (f"CFL number {cfl:.3g} at step {step} exceeds cfl_max = {self.cfl_max} "
                       f"(allowed range 0 < CFL <= {self.cfl_max}): max wind {speed:.3g} m/s "
                       f"with dt = {p.dt:g} s on dx = {p.dx:.4g} m. Use dt <= {safe_dt:.0f} s "
                       "(SQGParams.dt) or check the state for unphysical values.")
        else:
            message = (f"the SQG state became NaN/inf by step {step} (dt = {p.dt:g} s): the run "
                       "diverged. Reduce SQGParams.dt, strengthen the hyperdiffusion "
                       "(smaller diff_efold) or check the initial state.")
        err = DivergenceError(message)
        last_good = ops.from_kl(good).reshape(shape)
        if self.state_units == "K":
            last_good = pv_to_theta(last_good, p)
        err.last_good_state = last_good  # type: ignore[attr-defined]
        err.last_good_step = good_step  # type: ignore[attr-defined]
        return err

    # ----- diagnostics ----------------------------------------------------------------

    def winds(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """Geostrophic winds ``u = -dpsi/dy``, ``v = dpsi/dx`` (m/s) at both boundaries.

        Parameters
        ----------
        state : Tensor, shape ``(*batch, 2, N, N)``

        Returns
        -------
        u, v : Tensor, each ``(*batch, 2, N, N)``
        """
        check_state(state, self.state_shape, "state", finite=False)
        ops = self.operators(state.device, state.dtype)
        psi = self._streamfunction_kl(ops, state)
        return ops.from_kl(psi * ops.neg_il), ops.from_kl(psi * ops.ik)

    def _streamfunction_kl(self, ops: _Operators, state: Tensor) -> Tensor:
        flat = state.reshape(-1, *self.state_shape)
        q = ops.to_kl(flat)
        psi = torch.empty_like(q)
        self._invert_into(ops, q, psi)
        return psi.reshape(*state.shape[:-2], ops.nh, ops.n)

    def cfl_number(self, state: Tensor) -> Tensor:
        """``max |wind| * dt / dx`` per member over both levels, shape ``(*batch)``.

        With ``sqgturb_compat`` and dealiasing the PV is advected 2.25x faster than this
        wind; the check in :meth:`advance` still uses the wind itself (runs at the
        presets' ``dt`` stay finite with that advection; NaN/inf is caught anyway).
        """
        u, v = self.winds(state)
        speed = torch.sqrt(u**2 + v**2)
        return speed.amax(dim=(-3, -2, -1)) * (self.dt / self.params.dx)

    def mean_temperature(self, state: Tensor) -> Tensor:
        """Domain-mean potential temperature anomaly (K) per level, shape ``(*batch, 2)``."""
        check_state(state, self.state_shape, "state", finite=False)
        return pv_to_theta(state.mean(dim=(-2, -1)), self.params)

    def ke_spectrum(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """Isotropic kinetic-energy spectrum at both boundaries.

        Energy of each Fourier mode, ``0.5 |K|^2 |psi_hat|^2``, summed over shells
        ``round(|K| L / 2 pi) = j``; the shells add up to the domain-mean kinetic energy
        per unit mass, ``0.5 mean(u^2 + v^2)`` (m^2/s^2).

        Returns
        -------
        wavenumber : Tensor, shape ``(n_shells,)``
            Shell centres ``j`` in cycles per domain (``j = 0 .. ceil(N / sqrt 2)``).
        spectrum : Tensor, shape ``(*batch, 2, n_shells)``
            Kinetic energy per shell, m^2/s^2.
        """
        check_state(state, self.state_shape, "state", finite=False)
        ops = self.operators(state.device, state.dtype)
        n = self.params.N
        psi = self._streamfunction_kl(ops, state)
        weights = half_plane_weights(n, device=state.device, dtype=state.dtype).reshape(-1, 1)
        energy = 0.5 * ops.ksq * weights * psi.abs() ** 2
        shells = shell_index(n, device=state.device).transpose(0, 1).reshape(-1)
        n_shells = int(shells.max()) + 1
        flat = energy.reshape(-1, n * (n // 2 + 1))
        spectrum = torch.zeros((flat.shape[0], n_shells), device=state.device,
                               dtype=state.dtype)
        spectrum.index_add_(1, shells, flat)
        wavenumber = torch.arange(n_shells, device=state.device, dtype=state.dtype)
        return wavenumber, spectrum.reshape(*state.shape[:-2], n_shells)

    def kinetic_energy(self, state: Tensor) -> Tensor:
        """Domain-mean kinetic energy ``0.5 mean(u^2 + v^2)`` per level, ``(*batch, 2)``."""
        u, v = self.winds(state)
        return 0.5 * (u**2 + v**2).mean(dim=(-2, -1))


@contextlib.contextmanager
def _member_threads(workers: int) -> Iterator[ThreadPoolExecutor | None]:
    """A pool of ``workers`` threads with torch's operations single-threaded meanwhile.

    Each thread steps its own member blocks; torch releases the GIL inside operations.
    Intra-op threading is set to 1 for the duration (and restored), so the threads do
    not each start a team of OpenMP/MKL threads. ``workers <= 1``: no pool, no change.
    """
    if workers <= 1:
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sqg") as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def _check_steps(n_steps: Any) -> None:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise InputError(f"n_steps = {n_steps!r}: must be an integer >= 0")


def make_stepper(params: SQGParams, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float64, cfl_check_every: int = 10
                 ) -> Callable[[Tensor], Tensor]:
    """A one-step function ``state -> state`` with operators prebuilt for (device, dtype).

    Examples
    --------
    >>> step = make_stepper(SQGParams(N=16, dt=3600.0), "cpu", torch.float32)
    >>> step(torch.zeros(2, 16, 16)).shape
    torch.Size([2, 16, 16])
    """
    model = SQGModel(params, cfl_check_every=cfl_check_every)
    model.operators(device, dtype)
    return model.step
