"""SQG model numerics: closed forms, invariants, convergence order, equivalences, errors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import xarray as xr

from turbda_kit.data.nature import sqg_nature_run
from turbda_kit.errors import DivergenceError, InputError
from turbda_kit.models.base import ForecastModel, check_state
from turbda_kit.models.spectral import to_grid, to_spectral
from turbda_kit.models.sqg import (
    SQG_PRESETS,
    SQGTURB_DEALIAS_FACTOR,
    SQGModel,
    SQGParams,
    bao2024_at_resolution,
    bao2024_sqg64,
    equilibrium_pv,
    make_stepper,
    pv_to_theta,
    random_initial_state,
    sqg_preset,
    theta_to_pv,
    vit_scaling_sqg128,
    vit_scaling_sqg256,
)

F64 = torch.float64
DAY = 86400.0


def small_params(**changes) -> SQGParams:
    """bao2024 physics on a 16x16 grid (dt scaled with N as in the presets)."""
    base = bao2024_sqg64().replace(N=16, dt=4800.0, diff_efold=4 * DAY)
    return base.replace(**changes)


def inviscid(params: SQGParams) -> SQGParams:
    """No forcing, no dissipation: pure advection of boundary PV."""
    return params.replace(tdiab=math.inf, diff_efold=math.inf, r=0.0)


def grid_xy(params: SQGParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid coordinates as angles 2 pi x / L, 2 pi y / L, shape (N, N) each (y, x)."""
    angle = torch.arange(params.N, dtype=F64) * (2 * math.pi / params.N)
    return angle[None, :].expand(params.N, params.N), angle[:, None].expand(params.N, params.N)


def smooth_state(params: SQGParams, amplitude: float = 2000.0) -> torch.Tensor:
    """A few large-scale modes at both levels (PV, m/s), shape (2, N, N)."""
    x, y = grid_xy(params)
    surface = torch.cos(x + 0.3) + 0.7 * torch.sin(2 * y - 0.4) + 0.5 * torch.cos(x + 2 * y)
    lid = 0.8 * torch.sin(2 * x + y) - 0.6 * torch.cos(y + 1.0) + 0.4 * torch.sin(x - y)
    return amplitude * torch.stack([surface, lid])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These grids are tiny: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def spun_up_32(one_thread):
    """A turbulent N=32 state after 30 days from noise, and its model (float64)."""
    params = bao2024_sqg64().replace(N=32, dt=2400.0, diff_efold=2 * DAY)
    model = SQGModel(params)
    state = random_initial_state(params, torch.Generator().manual_seed(3))
    state = model.advance(state, 30 * 36)
    return model, state


# ----- parameters, presets, conversions ------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("N", 15), ("N", 6), ("N", 64.0), ("dt", 0.0), ("dt", -5.0), ("dt", math.nan),
    ("L", -1.0), ("H", 0.0), ("nsq", 0.0), ("f", -1e-4), ("g", math.inf), ("theta0", 0.0),
    ("tdiab", 0.0), ("diff_efold", -1.0), ("r", -1e-6), ("U", math.nan),
    ("diff_order", 3), ("diff_order", 0), ("symmetric", 1), ("dealias", "yes"),
    ("sqgturb_compat", 1),
])
def test_params_reject_bad_values_naming_the_parameter(field, value):
    with pytest.raises(InputError, match=field):
        SQGParams(**{field: value})


def test_params_units_and_derived_quantities():
    p = bao2024_sqg64()
    assert p.scalefact == pytest.approx(1e-4 * 300.0 / 9.8)
    assert p.rossby_radius == pytest.approx(1.0e6)
    assert p.buoyancy_frequency == pytest.approx(1e-2)
    assert p.dx == pytest.approx(2.0e7 / 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.N = 32  # type: ignore[misc]


def test_presets_carry_the_study_numbers():
    bao = sqg_preset("bao2024_sqg64")
    p = bao.params
    assert (p.N, p.dt, p.U, p.H, p.nsq, p.f) == (64, 1200.0, 30.0, 10.0e3, 1e-4, 1e-4)
    assert p.L == pytest.approx(20 * p.rossby_radius)
    assert (p.tdiab, p.diff_order, p.diff_efold) == (10 * DAY, 8, DAY)
    assert bao.output_interval_s == 12 * 3600.0
    assert p.dealias and p.symmetric and p.r == 0.0
    # ViT-scaling presets: dt * N constant (same CFL number), same physics otherwise
    for preset in (vit_scaling_sqg128(), vit_scaling_sqg256()):
        assert preset.dt * preset.N == p.dt * p.N
        assert preset.diff_efold * preset.N == p.diff_efold * p.N
        assert (preset.L, preset.U, preset.H, preset.tdiab) == (p.L, p.U, p.H, p.tdiab)
    assert set(SQG_PRESETS) == {"bao2024_sqg64", "vit_scaling_sqg128", "vit_scaling_sqg256"}
    for n, preset in ((64, p), (128, vit_scaling_sqg128()), (256, vit_scaling_sqg256())):
        assert bao2024_at_resolution(n) == preset
    assert bao2024_at_resolution(32).dt == 2400.0
    with pytest.raises(InputError, match="bao2024_sqg64"):
        sqg_preset("nope")


def test_pv_theta_conversion_is_scalefact():
    p = bao2024_sqg64()
    pv = torch.tensor([1000.0, -250.0], dtype=F64)
    theta = pv_to_theta(pv, p)
    torch.testing.assert_close(theta, pv * p.f * p.theta0 / p.g)
    torch.testing.assert_close(theta_to_pv(theta, p), pv)
    # a thermal-wind check of the unit: PV of the equilibrium jet is ~tens of K
    amplitude_k = float(pv_to_theta(equilibrium_pv(p).abs().max(), p))
    assert 10.0 < amplitude_k < 60.0


def test_forecast_model_protocol_and_check_state():
    model = SQGModel(small_params())
    assert isinstance(model, ForecastModel)
    assert model.state_shape == (2, 16, 16) and model.dt == 4800.0
    assert check_state(torch.zeros(2, 16, 16), (2, 16, 16)).shape == (2, 16, 16)


# ----- inversion ---------------------------------------------------------------------


def test_inversion_matches_closed_form_interior_solution():
    """For each mode, psi(z) = H/(mu sinh mu) [q1 cosh(mu z/H) - q0 cosh(mu (z-H)/H)]
    solves the interior PV equation with dpsi/dz = q at both boundaries."""
    p = small_params()
    model = SQGModel(p)
    gen = torch.Generator().manual_seed(0)
    q = to_spectral(torch.randn(3, 2, 16, 16, generator=gen, dtype=F64) * 1000)
    psi = model.invert(q)
    kx = torch.arange(9, dtype=F64)[None, :] * 2 * math.pi / p.L
    ky = torch.fft.fftfreq(16, 1 / 16, dtype=F64)[:, None] * 2 * math.pi / p.L
    mu = torch.sqrt(kx**2 + ky**2) * p.rossby_radius
    mu[0, 0] = 1.0  # mean mode: psi is set to zero
    q0, q1 = q[:, 0], q[:, 1]
    pre = p.H / (mu * torch.sinh(mu))
    psi0 = pre * (q1 - q0 * torch.cosh(mu))
    psi1 = pre * (q1 * torch.cosh(mu) - q0)
    psi0[:, 0, 0] = 0
    psi1[:, 0, 0] = 0
    torch.testing.assert_close(psi[:, 0], psi0, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(psi[:, 1], psi1, rtol=1e-12, atol=1e-9)


def test_inversion_round_trip():
    model = SQGModel(small_params())
    gen = torch.Generator().manual_seed(1)
    pv = torch.randn(4, 2, 16, 16, generator=gen, dtype=F64) * 500
    pv -= pv.mean(dim=(-2, -1), keepdim=True)
    q = to_spectral(pv)
    back = model.pv_from_streamfunction(model.invert(q))
    torch.testing.assert_close(to_grid(back, 16), pv, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(to_grid(model.to_spectral(pv), 16), pv)


def test_winds_of_a_single_mode():
    """Surface PV A cos(kx) with nothing on the lid: psi_0 = -(H/mu) coth(mu) A cos(kx),
    so v_0 = (H/mu) coth(mu) A k sin(kx) and u = 0."""
    p = small_params()
    model = SQGModel(p)
    x, _ = grid_xy(p)
    amp = 1000.0
    state = torch.stack([amp * torch.cos(3 * x), torch.zeros_like(x)])
    u, v = model.winds(state)
    k = 3 * 2 * math.pi / p.L
    mu = k * p.rossby_radius
    expected_v0 = p.H / mu / math.tanh(mu) * amp * k * torch.sin(3 * x)
    expected_v1 = p.H / mu / math.sinh(mu) * amp * k * torch.sin(3 * x)
    torch.testing.assert_close(u, torch.zeros_like(u), atol=1e-10, rtol=0)
    torch.testing.assert_close(v[0], expected_v0)
    torch.testing.assert_close(v[1], expected_v1)
    speed = torch.sqrt(u**2 + v**2).max()
    assert float(model.cfl_number(state)) == pytest.approx(float(speed) * p.dt / p.dx)


def test_ke_spectrum_sums_to_kinetic_energy(spun_up_32):
    model, state = spun_up_32
    wavenumber, spectrum = model.ke_spectrum(state)
    assert spectrum.shape == (2, wavenumber.numel())
    torch.testing.assert_close(spectrum.sum(-1), model.kinetic_energy(state))
    assert float(spectrum[:, 0].abs().max()) < 1e-9  # the mean mode carries no wind


def test_mean_temperature_in_kelvin():
    p = small_params()
    model = SQGModel(p)
    state = torch.ones(3, 2, 16, 16, dtype=F64) * torch.tensor([100.0, -50.0])[:, None, None]
    expected = torch.tensor([100.0, -50.0]) * p.scalefact
    torch.testing.assert_close(model.mean_temperature(state),
                               expected.expand(3, 2).to(F64))


# ----- dynamics: invariants and closed forms -----------------------------------------------


def test_domain_mean_and_variance_conserved_without_forcing():
    p = inviscid(small_params(dt=1200.0))
    model = SQGModel(p)
    state = random_initial_state(p, torch.Generator().manual_seed(2), noise_std=800.0)
    state = state + torch.tensor([123.0, -45.0], dtype=F64)[:, None, None]
    out = model.advance(state, 40)
    assert float((out - state).abs().max()) > 1.0  # it did evolve
    torch.testing.assert_close(out.mean(dim=(-2, -1)), state.mean(dim=(-2, -1)),
                               rtol=0, atol=1e-9)
    # boundary "enstrophy" mean(q^2) is an invariant of the exact dynamics; RK4 keeps it
    # to its truncation error
    var0, var1 = (state**2).mean(dim=(-2, -1)), (out**2).mean(dim=(-2, -1))
    torch.testing.assert_close(var1, var0, rtol=1e-6, atol=0)


def test_same_wavenumber_state_is_an_exact_steady_solution():
    """If both levels hold modes of one |K| and q_1 = a q_0, psi_j is a multiple of q_0
    and the Jacobian vanishes: the state must not move (a test of the nonlinear terms,
    which are individually large and cancel only when computed correctly)."""
    p = inviscid(small_params())
    model = SQGModel(p)
    x, y = grid_xy(p)
    # |K| = 5 cycles per domain: (5, 0), (0, 5), (3, 4), (4, -3)
    q0 = (torch.cos(5 * x) + 0.8 * torch.sin(5 * y + 0.2) + 0.6 * torch.cos(3 * x + 4 * y)
          + 0.5 * torch.sin(4 * x - 3 * y + 1.0)) * 3000.0
    state = torch.stack([q0, -0.7 * q0])
    tend = model.tendency_spectral(to_spectral(state))
    jac_scale = float(tend.abs().max())
    assert jac_scale < 1e-12 * 3000.0
    # a generic two-wavenumber state does move (the check above is not vacuous)
    other = torch.stack([q0, 3000.0 * torch.cos(2 * x + y)])
    assert float(model.tendency_spectral(to_spectral(other)).abs().max()) > 1e-6
    out = model.advance(state, 20)
    torch.testing.assert_close(out, state, rtol=0, atol=1e-8)


def test_single_mode_decays_at_the_hyperdiffusion_and_relaxation_rates():
    """The equilibrium jet mode alone: J = 0, and
    dq/dt = (q_eq - q)/tdiab - nu q  =>  q(t) = q* + (q(0) - q*) exp(-(1/tdiab + nu) t),
    q* = q_eq / (1 + nu tdiab), nu = (K / K_c)^order / diff_efold."""
    p = small_params(dt=3600.0, diff_efold=0.5 * DAY, diff_order=2)
    model = SQGModel(p)
    q_eq = equilibrium_pv(p)
    state = 3.0 * q_eq
    n = 48
    out = model.advance(state, n)
    k = 2 * math.pi / p.L
    nu = (k / (math.pi * p.N / p.L)) ** p.diff_order / p.diff_efold
    t = n * p.dt
    q_star = q_eq / (1 + nu * p.tdiab)
    expected = q_star + (state - q_star) * math.exp(-(1 / p.tdiab + nu) * t)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-6)
    # pure hyperdiffusion is integrated exactly by the integrating factor
    p2 = p.replace(tdiab=math.inf)
    x, y = grid_xy(p2)
    mode = torch.stack([torch.cos(3 * x + 2 * y), 0.5 * torch.cos(3 * x + 2 * y)]) * 1000
    nu2 = (math.sqrt(13) * k / (math.pi * p.N / p.L)) ** 2 / p.diff_efold
    out2 = SQGModel(p2).advance(mode, 10)
    torch.testing.assert_close(out2, mode * math.exp(-nu2 * 10 * p.dt), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("shift_x, shift_y", [(5, 0), (0, 3)])
def test_translation_equivariance(shift_x, shift_y):
    """Advancing a shifted state equals shifting the advanced state (the jet forcing
    depends on y only, so y shifts are checked without forcing)."""
    p = small_params(r=1e-6)
    if shift_y:
        p = p.replace(tdiab=math.inf)
    model = SQGModel(p)
    state = random_initial_state(p, torch.Generator().manual_seed(4), noise_std=1500.0)
    shifted = torch.roll(state, shifts=(shift_y, shift_x), dims=(-2, -1))
    a = torch.roll(model.advance(state, 10), shifts=(shift_y, shift_x), dims=(-2, -1))
    b = model.advance(shifted, 10)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-8)


def test_dealiasing_removes_the_aliased_modes():
    """Modes a = (5, 1) and b = (5, -2) on a 16 grid interact into b - a = (0, -3)
    (resolved) and a + b = (10, -1) (beyond N/2 = 8), which the plain product aliases onto
    (-6, -1), i.e. stored as (6, 1). The dealiased tendency must match a 64-point
    reference on the resolved modes and have nothing at (6, 1)."""
    coarse = inviscid(small_params())
    x, y = grid_xy(coarse)
    state = torch.stack([1500 * torch.cos(5 * x + y) + 1000 * torch.sin(5 * x - 2 * y),
                         torch.zeros(16, 16, dtype=F64)])
    spec = to_spectral(state)
    dealiased = SQGModel(coarse).tendency_spectral(spec)
    aliased = SQGModel(coarse.replace(dealias=False)).tendency_spectral(spec)
    fine = inviscid(small_params(N=64))
    xf, yf = grid_xy(fine)
    state_f = torch.stack([1500 * torch.cos(5 * xf + yf) + 1000 * torch.sin(5 * xf - 2 * yf),
                           torch.zeros(64, 64, dtype=F64)])
    reference = SQGModel(fine).tendency_spectral(to_spectral(state_f))
    scale = float(reference.abs().max())
    assert scale > 1e-6
    alias = (..., 1, 6)  # rfft2 layout: row l = 1, column k = 6
    assert float(aliased[alias].abs().max()) > 0.1 * scale
    assert float(dealiased[alias].abs().max()) < 1e-12 * scale
    # the resolved interaction (0, -3) is the same in all three
    resolved = (..., -3, 0)
    torch.testing.assert_close(dealiased[resolved], reference[resolved], rtol=1e-10, atol=0)
    # dealiased 16-point tendency == 64-point tendency on every mode the 16 grid keeps
    rows = list(range(0, 8)) + list(range(-7, 0))
    keep = reference[..., rows, :8]
    torch.testing.assert_close(dealiased[..., rows, :8], keep, rtol=1e-10,
                               atol=1e-12 * scale)


# ----- time stepping ---------------------------------------------------------------------


def test_rk4_converges_at_fourth_order():
    """Errors after 1 day against a tiny-dt reference, with forcing and dissipation on
    (the integrating factor keeps the whole scheme 4th order). Winds reach ~50 m/s."""
    base = small_params(r=2e-6, symmetric=False, diff_efold=DAY)
    state = smooth_state(base, amplitude=1000.0)
    total = DAY

    def run(n: int) -> torch.Tensor:
        return SQGModel(base.replace(dt=total / n), cfl_check_every=0).advance(state, n)

    reference = run(256)
    steps = [8, 16, 32, 64]
    errors = [float((run(n) - reference).abs().max()) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert errors[-1] > 1e-9 * float(state.abs().max())  # well above round-off
    assert 3.7 < slope < 4.3, (errors, slope)


def test_batched_ensemble_equals_members_stepped_alone():
    p = small_params()
    model = SQGModel(p)
    ensemble = random_initial_state(p, torch.Generator().manual_seed(5), batch_shape=(2, 3),
                                    noise_std=1500.0)
    batched = model.advance(ensemble, 6)
    for i in range(2):
        for j in range(3):
            alone = model.advance(ensemble[i, j], 6)
            torch.testing.assert_close(batched[i, j], alone, rtol=1e-12, atol=1e-9)
    # step == advance(., 1), and the spectral path agrees with the grid path
    torch.testing.assert_close(model.step(ensemble), model.advance(ensemble, 1))
    spec = model.step_spectral(to_spectral(ensemble), 6)
    torch.testing.assert_close(to_grid(spec, p.N), batched, rtol=1e-12, atol=1e-9)
    step = make_stepper(p, "cpu", F64)
    torch.testing.assert_close(step(ensemble), model.step(ensemble))
    # cache-sized member blocks (uneven: 4 + 2) step in lockstep with the same result
    blocked = SQGModel(p, block_members=4).advance(ensemble, 6)
    torch.testing.assert_close(blocked, batched, rtol=1e-12, atol=1e-9)


def test_blocks_chunks_and_threads_do_not_change_a_bit(monkeypatch):
    """Member blocks, Jacobian chunks of member-levels, grid-row blocks (uneven) and
    member threads only reorganise the same operations: results are bit-identical."""
    import turbda_kit.models.sqg as sqg_module

    p = small_params(N=32, dt=2400.0, r=1e-6)
    ensemble = random_initial_state(p, torch.Generator().manual_seed(12), batch_shape=(5,),
                                    noise_std=1500.0)
    reference = SQGModel(p).advance(ensemble, 8)
    for members in (1, 2, 5):
        assert torch.equal(SQGModel(p, block_members=members).advance(ensemble, 8), reference)
    spec = to_spectral(ensemble)
    tendency = SQGModel(p).tendency_spectral(spec)
    # one member-level per chunk, rows of the 48-point Jacobian grid in blocks of 7 (+ 6)
    monkeypatch.setattr(sqg_module, "_CPU_JACOBIAN_BYTES", 1)
    monkeypatch.setattr(sqg_module, "_row_block", lambda ops, chunk: 7)
    chunked = SQGModel(p)
    ws = chunked._blocks(chunked.operators("cpu", F64), 5)[0][0][2]
    assert ws.chunk == 1 and sorted({b - a for a, b in ws.rows}) == [6, 7]
    assert torch.equal(chunked.advance(ensemble, 8), reference)
    assert torch.equal(chunked.tendency_spectral(spec), tendency)
    monkeypatch.undo()
    one_thread = SQGModel(p).step_spectral(spec, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = SQGModel(p)
        blocks, workers = model._blocks(model.operators("cpu", F64), 5)
        assert workers == 2 and len(blocks) >= 2
        assert torch.equal(model.advance(ensemble, 8), reference)
        assert torch.get_num_threads() == 2  # restored after the member threads
        assert torch.equal(model.step_spectral(spec, 8), one_thread)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_c_transposed_copies_do_not_change_a_bit(monkeypatch, compat, dtype):
    """The Jacobian's transposed copies in C (turbda_kit.native.TransposeCopy) only move
    bits: the same forecast as torch's copies, also with uneven row blocks (7 + 6 rows
    of the 48-point grid: the kernel's scalar edges) and in sqgturb's compat mode."""
    import turbda_kit.models.sqg as sqg_module
    from turbda_kit import native

    if not native.available():
        pytest.skip("no C compiler: torch copies")
    p = small_params(N=32, dt=2400.0, sqgturb_compat=compat)
    ensemble = random_initial_state(p, torch.Generator().manual_seed(13), batch_shape=(3,),
                                    noise_std=1500.0).to(dtype)
    monkeypatch.setattr(sqg_module, "_row_block", lambda ops, chunk: 7)
    model = SQGModel(p)
    with_c = model.advance(ensemble, 6)
    ops = model.operators("cpu", dtype)
    assert ops.native_transpose
    views = model._workspace(ops, 3).chunk_views(ops, model._workspace(ops, 3).stage)
    assert all(row[6] is not None for view in views for row in view.rows)
    monkeypatch.setitem(native._state, "lib", None)   # now torch's copies
    model = SQGModel(p)
    assert not model.operators("cpu", dtype).native_transpose
    assert torch.equal(model.advance(ensemble, 6), with_c)


def test_spun_up_run_is_turbulent_with_bounded_energy(spun_up_32):
    model, state = spun_up_32
    energies = []
    for _ in range(10):  # 10 more days
        state = model.advance(state, 36)
        energies.append(model.kinetic_energy(state))
    energies = torch.stack(energies)
    assert bool(torch.isfinite(energies).all())
    assert 30.0 < float(energies.min()) and float(energies.max()) < 5000.0  # m^2/s^2
    assert float(model.cfl_number(state)) < 1.0
    # turbulent: most energy away from the equilibrium jet's scale, and it fluctuates
    _, spectrum = model.ke_spectrum(state)
    small_scale = spectrum[..., 2:].sum(-1) / spectrum.sum(-1)
    assert float(small_scale.min()) > 0.5
    assert float(energies.std(0).min() / energies.mean(0).max()) > 0.01
    # the temperature field has developed structure across the spectrum
    _, spec_init = model.ke_spectrum(random_initial_state(
        model.params, torch.Generator().manual_seed(3)))
    assert float(spectrum[..., 5:].sum()) > 0.1 * float(spectrum.sum())
    assert spec_init.shape == spectrum.shape


def test_float32_tracks_float64():
    p = small_params()
    model = SQGModel(p)
    state = random_initial_state(p, torch.Generator().manual_seed(6), noise_std=1500.0)
    out64 = model.advance(state, 12)
    out32 = model.advance(state.float(), 12)
    assert out32.dtype == torch.float32
    rel = float((out32.double() - out64).abs().max() / out64.abs().max())
    assert rel < 1e-4


@pytest.mark.gpu
def test_gpu_matches_cpu(device):
    if device.type != "cuda":
        pytest.skip("GPU-only comparison")
    p = small_params()
    state = random_initial_state(p, torch.Generator().manual_seed(7), batch_shape=(3,),
                                 noise_std=1500.0)
    model = SQGModel(p)
    cpu = model.advance(state, 6)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        dev = model.advance(state.to(device, dtype), 6)
        assert dev.device.type == device.type and dev.dtype == dtype
        assert float((dev.double().cpu() - cpu).abs().max() / cpu.abs().max()) < tol


def test_runs_on_each_available_device_in_float32(device):
    p = small_params()
    state = random_initial_state(p, torch.Generator().manual_seed(8), batch_shape=(2,),
                                 device=device, dtype=torch.float32)
    out = SQGModel(p).advance(state, 3)
    assert out.device.type == device.type and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


# ----- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 16, 17), (3, 16, 16), (16, 16), (4, 2, 8, 8)])
def test_wrong_state_shape_is_rejected(shape):
    model = SQGModel(small_params())
    with pytest.raises(InputError, match=r"\(\*batch, 2, 16, 16\)"):
        model.advance(torch.zeros(shape, dtype=F64), 1)


def test_non_finite_or_non_float_state_is_rejected():
    model = SQGModel(small_params())
    state = torch.zeros(2, 2, 16, 16, dtype=F64)
    state[1, 0, 3, 4] = math.nan
    with pytest.raises(InputError, match="NaN/inf"):
        model.step(state)
    state[1, 0, 3, 4] = math.inf
    with pytest.raises(InputError, match="NaN/inf"):
        model.advance(state, 2)
    with pytest.raises(InputError, match="dtype"):
        model.step(torch.zeros(2, 16, 16, dtype=torch.int64))
    with pytest.raises(InputError, match="n_steps"):
        model.advance(torch.zeros(2, 16, 16), -1)
    with pytest.raises(InputError, match="cfl_check_every"):
        SQGModel(small_params(), cfl_check_every=-2)
    with pytest.raises(InputError, match="block_members"):
        SQGModel(small_params(), block_members=0)


def test_cfl_above_one_stops_the_run_naming_dt():
    p = small_params(dt=40000.0)
    model = SQGModel(p, cfl_check_every=1)
    state = random_initial_state(p, torch.Generator().manual_seed(9), noise_std=20000.0)
    assert float(model.cfl_number(state)) > 1.0
    with pytest.raises(DivergenceError, match=r"dt") as info:
        model.advance(state, 5)
    message = str(info.value)
    assert "CFL" in message and "<= 1.0" in message
    torch.testing.assert_close(info.value.last_good_state, state)
    # the check can be switched off
    SQGModel(p, cfl_check_every=0).advance(state, 1)
    model.advance(state, 1, check=False)


def test_blow_up_raises_divergence_with_the_last_good_state():
    """A huge dt with the check every 2 steps: the run goes NaN/inf or CFL > 1 within a
    few steps and the error hands back a finite state from an earlier check."""
    p = small_params(dt=60000.0, diff_efold=math.inf, tdiab=math.inf)
    model = SQGModel(p, cfl_check_every=2, cfl_max=1e30)
    state = random_initial_state(p, torch.Generator().manual_seed(10), noise_std=3000.0)
    with pytest.raises(DivergenceError, match="NaN/inf|CFL") as info:
        model.advance(state, 400)
    good = info.value.last_good_state
    assert good.shape == state.shape and bool(torch.isfinite(good).all())
    assert info.value.last_good_step % 2 == 0


# ----- sqgturb compatibility (kit-side; against the NumPy baseline: tests/baselines) -------


def test_sqgturb_compat_is_off_by_default_and_validated():
    assert bao2024_sqg64().sqgturb_compat is False
    assert SQGTURB_DEALIAS_FACTOR == 2.25
    with pytest.raises(InputError, match="multiple of 4"):
        SQGParams(N=18, sqgturb_compat=True)
    SQGParams(N=18, sqgturb_compat=True, dealias=False)  # no padded grid, any even N
    assert SQGParams(N=20, sqgturb_compat=True).to_dict()["sqgturb_compat"] is True


def test_sqgturb_compat_steps_rk4_then_the_hyperdiffusion_factor():
    """The equilibrium-jet mode alone (no Jacobian): dq/dt = (q_eq - q)/tdiab, linear, so
    sqgturb's step is q <- E (q_eq + R(z) (q - q_eq)) with RK4's polynomial
    R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24, z = -dt/tdiab, and E = exp(-nu dt). The
    kit's integrating-factor RK4 is a different (also 4th-order) map."""
    p = small_params(dt=3600.0, diff_efold=0.5 * DAY, diff_order=2, sqgturb_compat=True)
    q_eq = equilibrium_pv(p)
    state = 3.0 * q_eq
    k = 2 * math.pi / p.L
    nu = (k / (math.pi * p.N / p.L)) ** p.diff_order / p.diff_efold
    efac = math.exp(-nu * p.dt)
    z = -p.dt / p.tdiab
    r = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
    expected = state.clone()
    for _ in range(24):
        expected = efac * (q_eq + r * (expected - q_eq))
    out = SQGModel(p).advance(state, 24)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-6)
    lawson = SQGModel(p.replace(sqgturb_compat=False)).advance(state, 24)
    # measured 2.2e-5 relative: far above the 1e-10 agreement with the closed form
    assert float((lawson - out).abs().max()) > 2e-6 * float(out.abs().max())


def test_nature_run_records_sqgturb_compat(tmp_path):
    p = small_params(sqgturb_compat=True)
    path = sqg_nature_run(p, days=0.5, output_interval_s=43200.0, path=tmp_path / "t.nc",
                          seed=0, spinup_days=0.5, progress=False)
    with xr.open_dataset(path) as ds:
        assert ds.attrs["sqg_sqgturb_compat"] == 1 and ds.attrs["sqg_dealias"] == 1
        assert bool(np.isfinite(ds["theta"].values).all())


def test_divergence_with_member_threads_restores_the_thread_count():
    p = small_params(dt=40000.0)
    state = random_initial_state(p, torch.Generator().manual_seed(9), batch_shape=(4,),
                                 noise_std=20000.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(DivergenceError, match="CFL") as info:
            SQGModel(p, cfl_check_every=1).advance(state, 5)
        assert torch.get_num_threads() == 2
        torch.testing.assert_close(info.value.last_good_state, state)
    finally:
        torch.set_num_threads(threads)
