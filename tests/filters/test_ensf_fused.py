"""The fused EnSF step: its arctangent, C == torch bits, threads, fallbacks, slabs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from turbda_kit import native
from turbda_kit.filters.ensf import EnSFConfig, ensf_analysis
from turbda_kit.filters.ensf_fused import atan_float32, fused_step_
from turbda_kit.obs.operators import Arctan, Identity
from turbda_kit.random_streams import counter_words

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler here")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_atan_float32_error_bound():
    z = torch.cat([torch.linspace(-30, 30, 2_000_001), torch.logspace(-8, 8, 100_001),
                   -torch.logspace(-8, 8, 100_001), torch.tensor([0.0, 1.0, -1.0])])
    error = (atan_float32(z).double() - torch.atan(z.double())).abs()
    assert float(error.max()) <= 2.4e-7
    assert torch.equal(atan_float32(torch.tensor([0.0])), torch.tensor([0.0]))


def _problem(members, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 8 + 3 * torch.randn(members, n, generator=g)
    prior = x + torch.randn(members, n, generator=g)
    obs = torch.atan(8 + 3 * torch.randn(n, generator=g))
    return x, prior, obs


@needs_native
@pytest.mark.parametrize("operator", ["arctan", "identity"])
@pytest.mark.parametrize("members", [5, 6])
@pytest.mark.parametrize("per_value", [False, True])
def test_c_kernel_gives_the_torch_step_bits(operator, members, per_value):
    n = 1000
    x, prior, obs = _problem(members, n)
    inv_var = torch.linspace(100, 400, n) if per_value else torch.tensor([400.0])
    words = counter_words((9, 3))
    coefficients = (0.97, 0.02, 0.003, 0.05, 1.3)
    expected = x.clone()
    fused_step_(expected, prior, obs, inv_var, torch.tensor([*words, 777], dtype=torch.int32),
                torch.tensor(coefficients), operator)
    for threads in (1, 2):
        got = x.clone()
        assert native.ensf_step_f32(got, prior, obs, inv_var, words, 777, coefficients,
                                    operator, threads=threads)
        assert torch.equal(got, expected), threads
    # Strided rows (a slab of a wider array) work in place too.
    wide = torch.zeros(members, n + 10)
    wide[:, 3:n + 3] = x
    assert native.ensf_step_f32(wide[:, 3:n + 3], prior, obs, inv_var, words, 777,
                                coefficients, operator)
    assert torch.equal(wide[:, 3:n + 3], expected)


def test_analysis_without_the_c_kernel_is_the_same(monkeypatch):
    members, n = 6, 3000
    _, prior, obs = _problem(members, n, seed=1)
    config = EnSFConfig(n_steps=20)
    fast = ensf_analysis(prior, obs, Arctan((n,)), 0.1, 5, config)
    monkeypatch.setitem(native._state, "lib", None)
    assert torch.equal(ensf_analysis(prior, obs, Arctan((n,)), 0.1, 5, config), fast)


@pytest.mark.parametrize("operator", [Identity, Arctan])
def test_fused_step_is_the_tiled_step_up_to_the_arctangent(operator):
    """Same noise and update; only the arctangent differs (<= 2.4e-7): tiny differences."""
    members, n = 5, 2000
    _, prior, obs = _problem(members, n, seed=2)
    sigma = 0.1
    if operator is Identity:
        obs, sigma = torch.tan(obs), 1.0         # a stable explicit step
    config = EnSFConfig(n_steps=30)
    fused = ensf_analysis(prior, obs, operator((n,)), sigma, 8, config)
    tiled = ensf_analysis(prior, obs, operator((n,)), sigma, 8,
                          dataclasses.replace(config, fused=False))
    assert float((fused - tiled).abs().max()) < 1e-3
    if operator is Identity:          # no arctangent involved: rounding-level agreement
        assert float((fused - tiled).abs().max()) < 1e-4


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_slabs_equal_the_full_analysis_on_any_cut(threads):
    torch.set_num_threads(threads)
    members, n = 7, 5001
    _, prior, obs = _problem(members, n, seed=3)
    config = EnSFConfig(n_steps=10)
    full = ensf_analysis(prior, obs, Arctan((n,)), 0.1, 4, config)
    for a, b in [(0, 1), (1, 4097), (4097, n), (123, 124)]:
        part = ensf_analysis(prior[:, a:b], obs[a:b], Arctan((b - a,)), 0.1, 4, config,
                             global_offset=a, global_size=n)
        assert torch.equal(part, full[:, a:b]), (a, b)


def test_blocks_noise_is_still_available():
    members, n = 4, 500
    _, prior, obs = _problem(members, n, seed=4)
    old = ensf_analysis(prior, obs, Arctan((n,)), 0.1, 6, EnSFConfig(n_steps=10, noise="blocks"))
    new = ensf_analysis(prior, obs, Arctan((n,)), 0.1, 6, EnSFConfig(n_steps=10))
    assert old.shape == new.shape and not torch.equal(old, new)
    assert float((old.mean(0) - new.mean(0)).abs().mean()) < 0.5


def test_step_by_step_equals_all_steps_at_once():
    """Early stopping tests every step, so it runs the fused step one step at a time."""
    members, n = 5, 3000
    _, prior, obs = _problem(members, n, seed=5)
    config = EnSFConfig(n_steps=15)
    at_once = ensf_analysis(prior, obs, Arctan((n,)), 0.1, 2, config)
    stepwise = ensf_analysis(prior, obs, Arctan((n,)), 0.1, 2,
                             dataclasses.replace(config, early_stop_tol=1e-30))
    assert torch.equal(at_once, stepwise)


def test_fused_analysis_on_every_device_matches_cpu(device):
    """On a GPU the torch step runs (no C kernel): same maths; CPU bits up to rounding."""
    members, n = 4, 2000
    _, prior, obs = _problem(members, n, seed=6)
    config = EnSFConfig(n_steps=10)
    cpu = ensf_analysis(prior, obs, Arctan((n,)), 0.1, 3, config)
    here = ensf_analysis(prior.to(device), obs.to(device), Arctan((n,)), 0.1, 3, config)
    assert here.device.type == torch.device(device).type
    torch.testing.assert_close(here.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_without_a_compiler_the_torch_step_runs_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TURBDA_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(native, "_state", {})
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert not native.available()
    members, n = 4, 700
    _, prior, obs = _problem(members, n, seed=7)
    analysis = ensf_analysis(prior, obs, Arctan((n,)), 0.1, 1, EnSFConfig(n_steps=5))
    assert torch.isfinite(analysis).all()
