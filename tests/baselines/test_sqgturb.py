"""sqgturb's algorithm: the NumPy baseline, the kit's compat mode against it, and how
sqgturb's dynamics relate to the kit's corrected physics (the 2.25 factor, Nyquist modes).

States are spun up with sqgturb's dynamics at its own setting scaled to N = 32 (sqgturb
runs N = 64 with dt = 900 s and a 12-h hyperdiffusion time; here dt and diff_efold are
doubled), so the comparisons run on turbulent flow with energy up to the grid scale.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from turbda_kit.baselines import SqgturbModel
from turbda_kit.errors import InputError
from turbda_kit.models.spectral import to_grid, to_spectral
from turbda_kit.models.sqg import (
    SQGTURB_DEALIAS_FACTOR,
    SQGModel,
    SQGParams,
    bao2024_at_resolution,
    random_initial_state,
)

F64 = torch.float64
DAY = 86400.0


def sqgturb_params(n: int, **changes) -> SQGParams:
    """sqgturb's N=64 setting (dt 900 s, 12-h hyperdiffusion) with dt, diff_efold ∝ 1/N."""
    base = bao2024_at_resolution(n).replace(dt=900.0 * 64 / n, diff_efold=0.5 * DAY * 64 / n,
                                            sqgturb_compat=True)
    return base.replace(**changes)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spun_up(n: int, days: float = 20.0) -> torch.Tensor:
    """Grid PV after ``days`` of sqgturb's dynamics from noise (float64, kit compat mode)."""
    p = sqgturb_params(n)
    state = random_initial_state(p, torch.Generator().manual_seed(1))
    return SQGModel(p).advance(state, int(round(days * DAY / p.dt)))


@pytest.fixture(scope="module")
def spun_up_32(one_thread) -> torch.Tensor:
    return spun_up(32)


def band_limited(n: int, kmax: int, seed: int) -> torch.Tensor:
    """Random grid PV (2, n, n) holding only modes with |k|, |l| <= kmax (m/s, ~1000)."""
    gen = torch.Generator().manual_seed(seed)
    spec = torch.randn(2, n, n // 2 + 1, 2, generator=gen, dtype=F64)
    spec = torch.view_as_complex(spec)
    kx = torch.arange(n // 2 + 1)[None, :]
    ky = torch.fft.fftfreq(n, 1.0 / n)[:, None]
    spec = spec * ((kx <= kmax) & (ky.abs() <= kmax))
    spec[..., 0, 0] = 0
    grid = to_grid(spec, n)
    return 1000.0 * grid / grid.abs().max()


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ----- the baseline itself -----------------------------------------------------------


def test_sqgturb_dealiased_advection_is_225_times_its_plain_one_on_a_band_limited_field():
    """Modes |k|, |l| <= N/4 - 1 interact into |k|, |l| <= N/2 - 2: no aliasing, nothing
    truncated, no Nyquist content, so a correct dealiased Jacobian equals the plain one.
    sqgturb's is 2.25 times it (its padded-grid normalisation); the kit's equals it."""
    n = 32
    adv = {"tdiab": math.inf, "r": 0.0}  # advection only
    spec_np = np.fft.rfft2(band_limited(n, n // 4 - 1, seed=0).numpy())
    baseline = {d: SqgturbModel(sqgturb_params(n, dealias=d, **adv), np.float64).tendency(spec_np)
                for d in (True, False)}
    scale = np.abs(baseline[False]).max()
    assert scale > 0
    np.testing.assert_allclose(baseline[True], SQGTURB_DEALIAS_FACTOR * baseline[False],
                               rtol=0, atol=1e-12 * 2.25 * scale)
    # the kit: corrected physics has no factor, compat mode has it, as the baseline
    spec = to_spectral(band_limited(n, n // 4 - 1, seed=0))
    for compat, factor in ((False, 1.0), (True, SQGTURB_DEALIAS_FACTOR)):
        tend = {d: SQGModel(sqgturb_params(n, dealias=d, sqgturb_compat=compat, **adv))
                .tendency_spectral(spec) for d in (True, False)}
        kit_scale = float(tend[False].abs().max())
        torch.testing.assert_close(tend[True], factor * tend[False], rtol=0,
                                   atol=1e-12 * factor * kit_scale)
    # spectra: sqgturb's are unnormalised (N^2 times the kit's mode amplitudes)
    np.testing.assert_allclose(baseline[False] / n**2, tend[False].numpy(), rtol=0,
                               atol=1e-12 * scale / n**2)


def test_baseline_validates_its_inputs():
    with pytest.raises(InputError, match="divisible by 4"):
        SqgturbModel(bao2024_at_resolution(18))
    SqgturbModel(bao2024_at_resolution(18).replace(dealias=False))  # no padded grid
    with pytest.raises(InputError, match="dtype"):
        SqgturbModel(sqgturb_params(16), dtype=np.int32)
    with pytest.raises(InputError, match="params"):
        SqgturbModel({"N": 16})
    model = SqgturbModel(sqgturb_params(16))
    with pytest.raises(InputError, match=r"\(2, 16, 16\)"):
        model.advance(np.zeros((2, 16, 15), np.float32), 1)
    with pytest.raises(InputError, match="NaN"):
        model.advance(np.full((2, 16, 16), np.nan, np.float32), 1)
    with pytest.raises(InputError, match="n_steps"):
        model.advance(np.zeros((2, 16, 16), np.float32), -1)
    with pytest.raises(InputError, match="member"):
        model.advance_members(np.zeros((2, 16, 16), np.float32), 1)
    ens = np.zeros((3, 2, 16, 16), np.float32)
    out = model.advance_members(ens, 2)
    assert out.shape == ens.shape and out.dtype == np.float32


# ----- the kit's compat mode against the baseline ---------------------------------------


def _compare_over_steps(n: int, state: torch.Tensor, steps: int, **changes
                        ) -> dict[str, list[float]]:
    """Relative max differences kit compat vs baseline after 1 and ``steps`` steps, in
    float64 and float32; also the baseline's own float32-vs-float64 gap."""
    p = sqgturb_params(n, **changes)
    kit = SQGModel(p)
    out: dict[str, list[float]] = {}
    finals = {}
    for np_dtype, dtype in ((np.float64, torch.float64), (np.float32, torch.float32)):
        baseline = SqgturbModel(p, np_dtype)
        a, b = state.numpy().astype(np_dtype), state.to(dtype)
        gaps = []
        for k in (1, steps - 1):
            a, b = baseline.advance(a, k), kit.advance(b, k)
            assert b.dtype == dtype and a.dtype == np_dtype
            gaps.append(rel(b.numpy(), a))
        out[np.dtype(np_dtype).name] = gaps
        finals[np.dtype(np_dtype).name] = a
    out["baseline_f32_vs_f64"] = [rel(finals["float32"], finals["float64"])]
    out["moved"] = [rel(finals["float64"], state.numpy())]
    return out


def test_compat_mode_matches_the_baseline_over_100_steps(spun_up_32):
    """Measured: float64 4.5e-16 after 1 step, 4.8e-14 after 100; float32 2.4e-7 and
    1.7e-5, the same as the baseline's own float32-vs-float64 gap (chaotic growth of
    float32 round-off)."""
    gaps = _compare_over_steps(32, spun_up_32, 100)
    assert gaps["moved"][0] > 0.3  # 100 steps of turbulence changed the state
    assert gaps["float64"][0] < 1e-13 and gaps["float64"][1] < 1e-11, gaps
    assert gaps["float32"][0] < 2e-6, gaps
    assert gaps["float32"][1] < max(1e-4, 10 * gaps["baseline_f32_vs_f64"][0]), gaps


@pytest.mark.slow
def test_compat_mode_matches_the_baseline_over_100_steps_at_n64():
    """Measured: float64 2.2e-14 after 100 steps, float32 7.7e-6 (baseline's own 7e-6)."""
    gaps = _compare_over_steps(64, spun_up(64), 100)
    assert gaps["float64"][1] < 1e-11, gaps
    assert gaps["float32"][1] < max(1e-4, 10 * gaps["baseline_f32_vs_f64"][0]), gaps


@pytest.mark.parametrize("changes", [{"dealias": False}, {"r": 2e-6, "symmetric": False},
                                     {"r": 2e-6}])
def test_compat_mode_matches_the_baseline_in_every_variant(spun_up_32, changes):
    """No dealiasing (no 2.25 factor; Nyquist derivatives with k = -N/2), Ekman damping
    with the asymmetric and the symmetric jet: 10 steps."""
    gaps = _compare_over_steps(32, spun_up_32, 10, **changes)
    assert gaps["float64"][1] < 1e-12, gaps
    assert gaps["float32"][1] < 1e-5, gaps


def test_compat_batched_blocks_equal_the_baseline_per_member(spun_up_32):
    p = sqgturb_params(32)
    gen = torch.Generator().manual_seed(2)
    ensemble = spun_up_32 + 200.0 * torch.randn(5, 2, 32, 32, generator=gen, dtype=F64)
    kit = SQGModel(p, block_members=2).advance(ensemble, 6)
    baseline = SqgturbModel(p, np.float64).advance_members(ensemble.numpy(), 6)
    assert rel(kit.numpy(), baseline) < 1e-13


def test_default_physics_differs_from_sqgturb_at_order_one(spun_up_32):
    """Why the mode exists: the corrected physics is a different trajectory."""
    p = sqgturb_params(32)
    baseline = SqgturbModel(p, np.float64).advance(spun_up_32.numpy(), 36)
    default = SQGModel(p.replace(sqgturb_compat=False)).advance(spun_up_32, 36)
    assert rel(default.numpy(), baseline) > 0.1


# ----- sqgturb's dynamics = the corrected physics with H, f, U x 2.25 ------------------------


def test_sqgturb_tendency_equals_kit_physics_with_h_f_u_scaled_by_225(spun_up_32):
    """Multiplying H and f by 2.25 leaves mu = |K| N_b H / f and the equilibrium PV (U/H)
    unchanged and multiplies psi, hence the Jacobian, by 2.25; with U also x 2.25 the
    jet is unchanged and with r / 2.25 so is the Ekman term. So, on any state without
    Nyquist content (row l = -N/2 and column k = N/2 zero), the kit's default tendency
    with (H, f, U, r) -> (2.25 H, 2.25 f, 2.25 U, r / 2.25) equals sqgturb's (compat)
    tendency to round-off on every mode except the row l = -N/2, where sqgturb keeps
    advection and the kit (2/3 rule) has none. On the full spun-up state, whose Nyquist
    row holds a few % of the largest amplitude, the tendencies also differ elsewhere."""
    n, c = 32, SQGTURB_DEALIAS_FACTOR
    p = sqgturb_params(n, r=2e-6)
    compat = SQGModel(p)
    scaled = SQGModel(p.replace(H=c * p.H, f=c * p.f, U=c * p.U, r=p.r / c,
                                sqgturb_compat=False))
    q = to_spectral(spun_up_32)
    nyquist_free = q.clone()
    nyquist_free[..., n // 2, :] = 0
    nyquist_free[..., :, n // 2] = 0
    a, b = compat.tendency_spectral(nyquist_free), scaled.tendency_spectral(nyquist_free)
    scale = float(a.abs().max())
    rows = [i for i in range(n) if i != n // 2]
    torch.testing.assert_close(a[..., rows, :], b[..., rows, :], rtol=0, atol=1e-13 * scale)
    # no advection on the Nyquist row (what is left: round-off of the jet's relaxation)
    assert float(b[..., n // 2, :].abs().max()) < 1e-13 * scale
    assert float(a[..., n // 2, :].abs().max()) > 0.01 * scale
    # neither advects the Nyquist column (it only relaxes: ~zero here)
    assert float(a[..., :, n // 2].abs().max()) < 1e-13 * scale
    # with the Nyquist content of the spun-up state the tendencies differ everywhere
    full_a, full_b = compat.tendency_spectral(q), scaled.tendency_spectral(q)
    assert float((full_a - full_b)[..., rows, :].abs().max()) > 1e-3 * scale
    # the unscaled kit physics is far off: advection 2.25x weaker
    plain = SQGModel(p.replace(sqgturb_compat=False)).tendency_spectral(nyquist_free)
    assert float((plain - a)[..., rows, :].abs().max()) > 0.3 * scale
