"""sqgturb's SQG algorithm, one member at a time in NumPy: the kit's reference and speed baseline.

:class:`SqgturbModel` reproduces, step for step, the time step of ``sqgturb.sqg.SQG``
(J. Whitaker, https://github.com/jswhit/sqgturb, ``sqgturb/sqg.py``), the model the SC24
paper's nature runs were made with. It is our own code written from a reading of that
file, and it keeps every convention of it, including the three in which sqgturb differs
from :class:`turbda_kit.models.sqg.SQGModel`'s default physics:

1. **The dealiased Jacobian is 2.25x too large.** Spectral arrays are unnormalised
   (``numpy.fft`` default: a coefficient is ``N**2`` times the mode's amplitude). Before
   the inverse transform onto the 3/2-padded grid (``M = 3N/2``) the coefficients are
   multiplied by ``(M/N)**2 = 2.25``, which makes the padded grid fields right; but the
   forward transform of the Jacobian on that grid is ``M**2``-scaled and is truncated
   back to the ``N`` grid *without* dividing by 2.25. With ``dealias=True`` (sqgturb's
   default) advection is therefore 2.25 times too strong; with ``dealias=False`` it is
   right.
2. **Nyquist modes.** The padded fields keep the ``l = -N/2`` row of the ``N``-grid
   spectrum and carry the ``k = N/2`` column, complex-conjugated, into the padded column
   ``k = +N/2``; the truncated Jacobian keeps the ``l = -N/2`` row (``|l| <= N/2``,
   ``0 <= k < N/2``). On the model grid the derivative of the Nyquist column uses
   ``k = -N/2`` (``N * fftfreq(N)``), of the Nyquist row ``l = -N/2``; neither is zeroed.
3. **Time stepping.** A plain RK4 step of the advection/relaxation/Ekman tendency, then
   one multiplication by the hyperdiffusion factor ``exp(-nu dt)``:
   ``q <- E (q + (k1 + 2 k2 + 2 k3 + k4) / 6)`` with ``k_i = dt F(.)``.

Everything else is the same physics as the kit: inversion ``psi_0 = (H/mu)(q_1/sinh mu -
q_0/tanh mu)``, ``psi_1 = (H/mu)(q_1/tanh mu - q_0/sinh mu)`` with ``mu`` clipped at
machine epsilon (so the undetermined mean streamfunction is large but never enters:
its derivatives and ``K**2`` factor are zero); Jacobian ``psi_x q_y - psi_y q_x``;
relaxation ``(q_eq - q) / tdiab`` toward the same equilibrium jet; Ekman damping
``+r K**2 psi_0`` (and ``-r K**2 psi_1`` for the symmetric jet), on when ``r >= 1e-10``;
hyperdiffusion rate ``(|K| / (pi N / L))**diff_order / diff_efold``.

Arithmetic is in the working precision, as in sqgturb: ``dtype=np.float32`` is its
``precision="single"`` (constants, wavenumbers and spectra in float32/complex64),
``np.float64`` its ``"double"``. One deliberate difference: in double precision sqgturb stores
the derivative factors ``i k``, ``i l`` as complex64 (wavenumbers rounded to float32,
relative error up to 3e-8); here they are kept in the working precision by default,
because that rounding is an accident of precision, not part of the algorithm
(``round_wavenumbers=True`` restores it).

Like sqgturb (one ``SQG`` instance per ensemble member), the model steps one member at a
time; :meth:`SqgturbModel.advance_members` loops over an ensemble. Transforms are
``numpy.fft`` (pocketfft, one thread; sqgturb falls back to it without pyfftw), four
inverse transforms of both levels and one forward per tendency, as sqgturb calls them.

Examples
--------
>>> import numpy as np
>>> from turbda_kit.models.sqg import SQGParams
>>> model = SqgturbModel(SQGParams(N=32, dt=2400.0), dtype=np.float64)
>>> pv = np.zeros((2, 32, 32))
>>> model.advance(pv, 2).shape
(2, 32, 32)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from ..models.sqg import SQGTURB_DEALIAS_FACTOR, SQGParams

__all__ = ["SqgturbModel"]

# sqgturb switches Ekman damping off below this rate (1/s).
_EKMAN_MIN_RATE = 1.0e-10


class SqgturbModel:
    """Per-member NumPy SQG model with sqgturb's algorithm (see the module docstring).

    Parameters
    ----------
    params : SQGParams
        Physical and numerical parameters (the ``sqgturb_compat`` field is ignored: this
        model is always sqgturb's algorithm). With ``dealias=True``, ``N`` must be a
        multiple of 4 (sqgturb's padded grid ``3N/2`` must be even).
    dtype : numpy dtype
        ``np.float32`` (sqgturb's ``precision="single"``, its default) or ``np.float64``.
    round_wavenumbers : bool
        Store the derivative factors ``i k``, ``i l`` as complex64 in double precision
        too, as sqgturb does (then float64 results equal sqgturb's to the last bits;
        default False: wavenumbers in the working precision).

    Attributes
    ----------
    params : SQGParams
    dtype, cdtype : numpy dtypes
        Working real and complex types.
    state_shape : tuple of int
        ``(2, N, N)``.
    dt : float
        Time step, s.

    Notes
    -----
    Spectral arrays are sqgturb's: ``numpy.fft.rfft2`` layout ``(2, N, N//2+1)``,
    unnormalised (``N**2`` times the mode amplitudes of the kit's ``norm="forward"``
    spectra).
    """

    def __init__(self, params: SQGParams, dtype: Any = np.float32,
                 round_wavenumbers: bool = False):
        if not isinstance(params, SQGParams):
            raise InputError(f"params must be an SQGParams, got {type(params).__name__}")
        real = np.dtype(dtype)
        if real not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise InputError(f"dtype = {dtype!r}: use np.float32 (sqgturb's 'single') or "
                             "np.float64 ('double')")
        n = params.N
        if params.dealias and n % 4:
            raise InputError(f"SQGParams.N = {n}: sqgturb's dealiased Jacobian needs N "
                             "divisible by 4 (its 3N/2 padded grid must be even)")
        self.params = params
        self.dtype = real
        self.cdtype = np.result_type(real, np.complex64)
        self.n = n
        self.state_shape = (2, n, n)
        self.dt = float(params.dt)
        self.dealias = params.dealias
        self.m = 3 * n // 2 if params.dealias else n
        if not isinstance(round_wavenumbers, bool):
            raise InputError(f"round_wavenumbers = {round_wavenumbers!r}: must be True or False")
        # sqgturb's derivative factors are complex64 whatever the precision
        self._derivative_dtype = np.dtype(np.complex64) if round_wavenumbers else self.cdtype
        self._build(params)

    def _build(self, p: SQGParams) -> None:
        """Wavenumbers, inversion and damping factors, all in the working precision."""
        real, n = self.dtype.type, self.n
        length = real(p.L)
        two_pi = real(2.0) * real(np.pi)
        # sqgturb's k for the stored Nyquist column is -N/2 (N * fftfreq(N)[:N//2+1])
        k_index = (n * np.fft.fftfreq(n))[: n // 2 + 1]
        l_index = n * np.fft.fftfreq(n)
        kk, ll = np.meshgrid(k_index.astype(real), l_index.astype(real))
        kx, ky = two_pi * kk / length, two_pi * ll / length
        ksq = kx**2 + ky**2
        cplx = self._derivative_dtype
        self.ik, self.il = (1j * kx).astype(cplx), (1j * ky).astype(cplx)
        self.ksq = ksq
        if self.dealias:
            m = self.m
            kp = (m * np.fft.fftfreq(m))[: m // 2 + 1].astype(real)
            lp = (m * np.fft.fftfreq(m)).astype(real)
            kkp, llp = np.meshgrid(kp, lp)
            self.ik_pad = (1j * (two_pi * kkp / length)).astype(cplx)
            self.il_pad = (1j * (two_pi * llp / length)).astype(cplx)
        # inversion: mu = |K| N_b H / f, clipped at epsilon (the K = 0 mode)
        height = real(p.H)
        mu = np.sqrt(ksq) * np.sqrt(real(p.nsq)) * height / real(p.f)
        mu = mu.clip(np.finfo(real).eps)
        self.h_over_mu = height / mu
        mu64 = mu.astype(np.float64)  # sinh overflows in float32 at large mu
        self.tanh_mu = np.tanh(mu64).astype(real)
        self.sinh_mu = np.sinh(mu64).astype(real)
        # hyperdiffusion factor applied once per step
        ktot = np.sqrt(ksq)
        kcut = real(np.pi) * real(n) / length
        self.hyperdiff = np.exp((-real(p.dt) / real(p.diff_efold))
                                * (ktot / kcut) ** real(p.diff_order)).astype(real)
        self.relax = real(1.0) / real(p.tdiab)  # 0 for tdiab = inf
        self.ekman = p.r >= _EKMAN_MIN_RATE
        self.r_ksq = (real(p.r) * ksq).astype(real)
        self.symmetric = p.symmetric
        self.pv_eq_spec = np.fft.rfft2(self._equilibrium_pv(p))
        self.dt_w = real(p.dt)

    def _equilibrium_pv(self, p: SQGParams) -> np.ndarray:
        """Grid PV of the equilibrium jet, ``(2, N, N)``, in the working precision."""
        real, n = self.dtype.type, self.n
        y = (np.arange(n) * real(p.L / n)).astype(real)
        wn = real(2.0) * real(np.pi) / real(p.L)
        profile = np.cos(wn * y)
        # as in sqgturb: wavenumber and wavenumber * H in the working precision, mu and
        # the amplitude in float64, the product rounded to the working precision
        mu = float(wn) * math.sqrt(p.nsq) * p.H / p.f
        wn_h = float(wn * real(p.H))
        if p.symmetric:
            amp = -(mu * 0.5 * p.U / wn_h) * math.cosh(0.5 * mu)
            surface = (amp * profile.astype(np.float64) / math.sinh(0.5 * mu)).astype(real)
            lid = surface
        else:
            amp = -(mu * p.U / wn_h)
            surface = (amp * profile.astype(np.float64) / math.sinh(mu)).astype(real)
            lid = (surface.astype(np.float64) * math.cosh(mu)).astype(real)
        return np.repeat(np.stack([surface, lid])[:, :, None], n, axis=2)

    # ----- transforms -----------------------------------------------------------------

    def to_spectral(self, pv: np.ndarray) -> np.ndarray:
        """Grid PV ``(2, N, N)`` -> unnormalised ``rfft2`` coefficients ``(2, N, N//2+1)``."""
        return np.fft.rfft2(np.asarray(pv, dtype=self.dtype))

    def to_grid(self, pv_spec: np.ndarray) -> np.ndarray:
        """Unnormalised coefficients ``(2, N, N//2+1)`` -> grid PV ``(2, N, N)``."""
        return np.fft.irfft2(pv_spec, s=(self.n, self.n))

    def _pad(self, spec: np.ndarray) -> np.ndarray:
        """Coefficients on the 3/2 grid, times 2.25, Nyquist row and column carried over."""
        n, h, m = self.n, self.n // 2, self.m
        out = np.zeros((2, m, m // 2 + 1), spec.dtype)
        scaled = SQGTURB_DEALIAS_FACTOR * spec
        out[:, :h, :h] = scaled[:, :h, :h]
        out[:, m - h:, :h] = scaled[:, n - h:, :h]  # includes l = -N/2
        # the Nyquist column k = N/2 (stored with k = -N/2) goes to padded k = +N/2
        out[:, :h, h] = np.conjugate(scaled[:, :h, h])
        out[:, m - h:, h] = np.conjugate(scaled[:, n - h:, h])
        return out

    def _truncate(self, spec: np.ndarray) -> np.ndarray:
        """Padded-grid coefficients back onto the ``N`` grid: ``|l| <= N/2``, ``k < N/2``.

        Not divided by 2.25: this is sqgturb's bug 1 (see the module docstring).
        """
        n, h, m = self.n, self.n // 2, self.m
        out = np.zeros((2, n, n // 2 + 1), spec.dtype)
        out[:, :h, :h] = spec[:, :h, :h]
        out[:, n - h:, :h] = spec[:, m - h:, :h]
        return out

    def _derivatives(self, spec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid ``d/dx`` and ``d/dy`` of a spectral field, on the Jacobian's grid."""
        if self.dealias:
            padded = self._pad(spec)
            return np.fft.irfft2(self.ik_pad * padded), np.fft.irfft2(self.il_pad * padded)
        return np.fft.irfft2(self.ik * spec), np.fft.irfft2(self.il * spec)

    # ----- dynamics -------------------------------------------------------------------

    def invert(self, pv_spec: np.ndarray) -> np.ndarray:
        """Streamfunction coefficients ``(2, N, N//2+1)`` (m^2/s, unnormalised)."""
        psi = np.empty_like(pv_spec)
        psi[0] = self.h_over_mu * (pv_spec[1] / self.sinh_mu - pv_spec[0] / self.tanh_mu)
        psi[1] = self.h_over_mu * (pv_spec[1] / self.tanh_mu - pv_spec[0] / self.sinh_mu)
        return psi

    def tendency(self, pv_spec: np.ndarray) -> np.ndarray:
        """dq/dt coefficients: Jacobian, relaxation, Ekman (no hyperdiffusion).

        Parameters
        ----------
        pv_spec : ndarray, complex, shape ``(2, N, N//2+1)``
            Unnormalised PV coefficients (m/s times ``N**2``).

        Returns
        -------
        ndarray, same shape and dtype, m/s per s (times ``N**2``).
        """
        psi = self.invert(pv_spec)
        psi_x, psi_y = self._derivatives(psi)
        pv_x, pv_y = self._derivatives(pv_spec)
        jacobian = np.fft.rfft2(psi_x * pv_y - psi_y * pv_x)
        if self.dealias:
            jacobian = self._truncate(jacobian)
        out = self.relax * (self.pv_eq_spec - pv_spec) - jacobian
        if self.ekman:
            out[0] += self.r_ksq * psi[0]
            if self.symmetric:  # the asymmetric jet has no Ekman layer at the lid
                out[1] -= self.r_ksq * psi[1]
        return out

    def step_spectral(self, pv_spec: np.ndarray) -> np.ndarray:
        """One time step: plain RK4, then the hyperdiffusion factor once."""
        dt = self.dt_w
        k1 = dt * self.tendency(pv_spec)
        k2 = dt * self.tendency(pv_spec + 0.5 * k1)
        k3 = dt * self.tendency(pv_spec + 0.5 * k2)
        k4 = dt * self.tendency(pv_spec + k3)
        return self.hyperdiff * (pv_spec + (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0)

    def advance(self, pv: np.ndarray, n_steps: int) -> np.ndarray:
        """Grid PV ``(2, N, N)`` (m/s) of one member advanced by ``n_steps`` steps."""
        _check_member(pv, self.state_shape)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise InputError(f"n_steps = {n_steps!r}: must be an integer >= 0")
        spec = self.to_spectral(pv)
        for _ in range(n_steps):
            spec = self.step_spectral(spec)
        return self.to_grid(spec)

    def advance_members(self, ensemble: np.ndarray, n_steps: int) -> np.ndarray:
        """Ensemble ``(member, 2, N, N)`` advanced member by member (as sqgturb runs)."""
        ensemble = np.asarray(ensemble)
        if ensemble.ndim != 4:
            raise InputError(f"ensemble has shape {ensemble.shape}; expected (member, "
                             f"{', '.join(map(str, self.state_shape))})")
        return np.stack([self.advance(member, n_steps) for member in ensemble])


def _check_member(pv: Any, state_shape: tuple[int, ...]) -> None:
    shape = getattr(pv, "shape", None)
    if shape is None or tuple(shape) != state_shape:
        raise InputError(f"pv has shape {shape}; expected {state_shape} (one member: "
                         "levels, y, x)")
    if not np.isfinite(np.asarray(pv)).all():
        raise InputError("pv contains NaN/inf: pass a finite state")

