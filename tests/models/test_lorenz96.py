"""Lorenz-96: fixed point, energy budget, slab/halo equivalence, RK4 order, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.models.lorenz96 import (
    HALO_LEFT,
    HALO_RIGHT,
    L96Workspace,
    Lorenz96,
    l96_tendency,
    l96_tendency_slab,
    periodic_halo_,
    rk4_stage_,
)


def _random_state(shape, seed=0, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (8.0 + 2.0 * torch.randn(shape, generator=gen, dtype=dtype)).to(device)


def test_forcing_is_a_fixed_point(device):
    model = Lorenz96(37, forcing=8.0, dt=0.01)
    x = torch.full((2, 37), 8.0, dtype=torch.float64, device=device)
    assert torch.equal(l96_tendency(x, 8.0), torch.zeros_like(x))
    assert torch.equal(model.advance(x, 10), x)


def test_tendency_matches_textbook_formula():
    x = _random_state((3, 11))
    reference = (x.roll(-1, -1) - x.roll(2, -1)) * x.roll(1, -1) - x + 8.0
    torch.testing.assert_close(l96_tendency(x, 8.0), reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [4, 5, 40, 1001])
def test_energy_budget_identity(n):
    # d/dt (|x|^2 / 2) = x . f(x) = -|x|^2 + F sum(x): the advection term conserves energy.
    forcing = 8.0
    x = _random_state((4, n), seed=n)
    power = (x * l96_tendency(x, forcing)).sum(-1)
    budget = -(x * x).sum(-1) + forcing * x.sum(-1)
    scale = (x * x).sum(-1)
    assert torch.all((power - budget).abs() <= 1e-13 * scale)


def test_slab_tendency_equals_ring_tendency():
    n, a, b = 30, 7, 19
    x = _random_state((2, n), seed=3)
    idx = torch.arange(a - HALO_LEFT, b + HALO_RIGHT) % n
    slab = l96_tendency_slab(x[..., idx], 8.0)
    torch.testing.assert_close(slab, l96_tendency(x, 8.0)[..., a:b], rtol=0, atol=0)


def test_slab_at_the_wrap_uses_modular_halo():
    n = 12
    x = _random_state((n,), seed=4)
    idx = torch.arange(n - 3 - HALO_LEFT, n + 2 + HALO_RIGHT) % n   # slab wraps the ring end
    full = l96_tendency(x, 8.0)
    torch.testing.assert_close(l96_tendency_slab(x[idx], 8.0), full[torch.arange(n - 3, n + 2) % n],
                               rtol=0, atol=0)


def test_decomposed_rk4_with_halo_exchange_equals_full_ring():
    """Slabs advanced stage by stage with a halo exchange == the full-ring step, bitwise."""
    n, dt, forcing = 50, 0.01, 8.0
    bounds = [0, 13, 14, 31, 50]       # uneven slabs, one of width 1
    x_full = _random_state((3, n), seed=5)
    model = Lorenz96(n, forcing=forcing, dt=dt)
    expected = model.advance(x_full, 3)

    slabs = [x_full[..., a:b].clone() for a, b in zip(bounds[:-1], bounds[1:])]
    works = [L96Workspace.like(s, "rk4") for s in slabs]

    def exchange():
        # Each slab's halo comes from its neighbours' stage interiors (what MPI would send).
        interiors = torch.cat([w.interior for w in works], dim=-1)
        for (a, b), w in zip(zip(bounds[:-1], bounds[1:]), works):
            w.padded[..., :HALO_LEFT].copy_(interiors[..., torch.arange(a - 2, a) % n])
            w.padded[..., -HALO_RIGHT:].copy_(interiors[..., torch.arange(b, b + 1) % n])

    for _ in range(3):
        for s, w in zip(slabs, works):
            w.interior.copy_(s)
        for stage in range(4):
            exchange()
            for s, w in zip(slabs, works):
                rk4_stage_(s, w, stage, dt, forcing)
    assert torch.equal(torch.cat(slabs, dim=-1), expected)


def test_periodic_halo_fill():
    x = torch.arange(6.0)
    padded = torch.zeros(9)
    padded[2:8] = x
    periodic_halo_(padded)
    assert padded.tolist() == [4.0, 5.0, 0, 1, 2, 3, 4, 5, 0.0]


def _integrate(x0, dt, t_end, scheme):
    steps = round(t_end / dt)
    return Lorenz96(x0.shape[-1], dt=dt, scheme=scheme).advance(x0, steps)


@pytest.mark.parametrize(("scheme", "order"), [("rk4", 4), ("euler", 1)])
def test_convergence_order_from_log_error_slope(scheme, order):
    x0 = _random_state((2, 40), seed=6)
    t_end = 0.2
    reference = _integrate(x0, 0.2 / 1280, t_end, "rk4")
    dts = [0.02, 0.01, 0.005, 0.0025] if scheme == "rk4" else [0.004, 0.002, 0.001, 0.0005]
    errors = [float((_integrate(x0, dt, t_end, scheme) - reference).abs().max()) for dt in dts]
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.15, (slope, errors)


def test_batched_equals_looped():
    model = Lorenz96(23, dt=0.01)
    x = _random_state((2, 3, 23), seed=7)
    batched = model.advance(x, 7)
    for i in range(2):
        for j in range(3):
            assert torch.equal(batched[i, j], model.advance(x[i, j], 7))


def test_float32_works_and_tracks_float64():
    model = Lorenz96(40, dt=0.01)
    x64 = _random_state((2, 40), seed=8)
    out32 = model.advance(x64.float(), 20)
    out64 = model.advance(x64, 20)
    assert out32.dtype == torch.float32
    assert float((out32.double() - out64).abs().max()) < 1e-3


def test_advance_does_not_modify_input_but_advance_inplace_does():
    model = Lorenz96(10)
    x = _random_state((10,), seed=9)
    before = x.clone()
    y = model.advance(x, 2)
    assert torch.equal(x, before)
    work = L96Workspace.like(x, "rk4")
    out = model.advance_(x, 2, work=work)
    assert out is x and torch.equal(x, y)


def test_chaotic_attractor_statistics():
    # Long-run mean ~2.3 and std ~3.6 for F=8 (classic values for n=40).
    model = Lorenz96(40, dt=0.05)
    x = _random_state((40,), seed=10)
    x = model.advance(x, 200)
    samples = []
    for _ in range(400):
        x = model.advance(x, 1)
        samples.append(x)
    data = torch.stack(samples)
    assert 2.0 < float(data.mean()) < 2.7
    assert 3.3 < float(data.std()) < 3.9


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n": 3}, "n >= 4"),
    ({"n": 10, "dt": 0.0}, "dt"),
    ({"n": 10, "dt": -0.1}, "dt"),
    ({"n": 10, "dt": math.nan}, "dt"),
    ({"n": 10, "scheme": "rk3"}, "scheme"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        Lorenz96(**kwargs)


def test_state_validation():
    model = Lorenz96(10)
    with pytest.raises(InputError, match="shape"):
        model.step(torch.zeros(3, 11))
    bad = torch.zeros(2, 10)
    bad[1, 4] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.step(bad)
    with pytest.raises(InputError, match="n_steps"):
        model.advance(torch.zeros(10), -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1000,), (6, 4099), (2, 3, 517)])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_pass_c_stage_gives_the_torch_bits(monkeypatch, shape, threads, dtype):
    """The C kernel of an RK4 stage (turbda_kit.native) is the torch code's exact
    transcription: same bits over many steps, at a forcing and step not exact in binary."""
    from turbda_kit import native
    from turbda_kit.models.lorenz96 import L96Workspace, rk4_step_

    if not native.available():
        pytest.skip("no C compiler: the torch code runs")
    x0 = 8.17 + torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    fast, slow = x0.clone(), x0.clone()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    work = L96Workspace.like(fast)
    for _ in range(25):
        rk4_step_(fast, work, 0.0123, 8.17)
    assert work.spare is not None           # the kernel ran (double-buffered stages)
    monkeypatch.setitem(native._state, "lib", None)   # now the torch code
    slow_work = L96Workspace.like(slow)
    for _ in range(25):
        rk4_step_(slow, slow_work, 0.0123, 8.17)
    assert slow_work.spare is None
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(40,), (7, 40), (2, 3, 517), (3, 70000)])
@pytest.mark.parametrize("threads", [1, 2])
def test_whole_steps_in_c_give_the_torch_bits(monkeypatch, shape, threads, dtype):
    """Lorenz96.advance runs whole RK4 steps of full rings in one C call
    (native.l96_rk4_ring): the same bits as stepping with the torch code."""
    from turbda_kit import native
    from turbda_kit.models.lorenz96 import L96Workspace, rk4_step_

    if not native.available():
        pytest.skip("no C compiler: the torch code runs")
    model = Lorenz96(shape[-1], forcing=8.17, dt=0.0123)
    x0 = 8.17 + torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    calls = []
    ring = native.l96_rk4_ring
    monkeypatch.setattr(native, "l96_rk4_ring", lambda *a, **k: calls.append(1) or ring(*a, **k))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    fast = model.advance(x0, 13)
    assert calls == [1]
    monkeypatch.setitem(native._state, "lib", None)   # now the torch code
    slow, work = x0.clone(), L96Workspace.like(x0)
    for _ in range(13):
        rk4_step_(slow, work, 0.0123, 8.17)
    assert torch.equal(fast, slow)
    assert torch.equal(model.advance(x0, 13), slow)   # the fallback, same bits
    assert torch.equal(model.advance(x0, 0), x0)
