"""Observation operators: shapes, analytic scores vs autograd, composition, locations."""

from __future__ import annotations

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.obs.operators import (
    Arctan,
    Composed,
    DifferentiableObs,
    Identity,
    Subset,
    compose,
    likelihood_score,
    without_missing,
)

SHAPES = [(12,), (2, 4, 4)]


def _state(shape, batch=(3,), seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(*batch, *shape, generator=g, dtype=torch.float64)).to(device)


def _autograd_score(op, x, y, sigma):
    """Reference: autograd of the Gaussian log-likelihood through op's forward map."""
    x = x.detach().requires_grad_(True)
    inv_var = 1.0 / sigma ** 2
    log_l = -0.5 * ((op(x) - y) ** 2 * inv_var).sum()
    (g,) = torch.autograd.grad(log_l, x)
    return g


def _operators(shape, gen):
    return [
        Identity(shape),
        Arctan(shape, scale=0.7),
        Subset.random(shape, 5, gen),
        Subset.random(shape, 5, gen) @ Arctan(shape, scale=1.3),
        Arctan((5,), scale=2.0) @ Subset.random(shape, 5, gen),
        compose(Subset((5,), [0, 2, 4]), Arctan((5,)), Subset.random(shape, 5, gen)),
    ]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("index", range(6))
def test_analytic_score_matches_autograd(shape, index, device):
    gen = torch.Generator().manual_seed(index)
    op = _operators(shape, gen)[index]
    x = _state(shape, seed=1, device=device)
    y = torch.randn(op.n_obs, generator=gen, dtype=torch.float64).to(device)
    assert op(x).shape == (3, op.n_obs)
    for sigma in (0.3, torch.linspace(0.2, 0.9, op.n_obs, dtype=torch.float64)):
        sigma_dev = sigma.to(device) if isinstance(sigma, torch.Tensor) else sigma
        score = op.likelihood_score(x, y, sigma_dev)
        assert score.shape == x.shape
        torch.testing.assert_close(score, _autograd_score(op, x, y, sigma_dev))


@pytest.mark.parametrize("op_cls", [Identity, Arctan])
def test_elementwise_score_with_out_and_work_buffers(op_cls):
    shape = (2, 4, 4)
    op = op_cls(shape)
    x = _state(shape)
    y = torch.randn(op.n_obs, dtype=torch.float64)
    out, work = torch.empty_like(x), torch.empty_like(x)
    result = op.likelihood_score(x, y, 0.5, out=out, work=work)
    assert result is out
    torch.testing.assert_close(out, _autograd_score(op, x, y, 0.5))


def test_autograd_fallback_for_user_callable():
    def fn(x):
        return x[..., ::2] ** 2 + torch.sin(x[..., 1::2])
    op = DifferentiableObs(fn, (8,), 4)
    x = _state((8,))
    y = torch.zeros(4, dtype=torch.float64)
    expected = _autograd_score(op, x, y, 0.4)
    torch.testing.assert_close(op.likelihood_score(x, y, 0.4), expected)
    torch.testing.assert_close(likelihood_score(fn, x, y, 0.4), expected)   # bare callable
    # The same callable composed with a subset chains autograd with the analytic vjp.
    composed = Subset((4,), [1, 3]) @ op
    torch.testing.assert_close(composed.likelihood_score(x, y[:2], 0.4),
                               _autograd_score(composed, x, y[:2], 0.4))


def test_identity_score_closed_form():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    y = torch.tensor([0.0, 2.0, 5.0])
    torch.testing.assert_close(Identity((3,)).likelihood_score(x, y, 0.5),
                               torch.tensor([[-4.0, 0.0, 8.0]]))


def test_subset_values_and_locations():
    op = Subset((2, 3, 4), [0, 5, 23])
    x = torch.arange(24.0).reshape(1, 2, 3, 4)
    assert op(x).tolist() == [[0.0, 5.0, 23.0]]
    assert op.locations.tolist() == [[0, 0, 0], [0, 1, 1], [1, 2, 3]]
    spaced = Subset((2, 3, 4), [5], grid_spacing=(10.0, 2.0, 1.0))
    assert spaced.locations.tolist() == [[0.0, 2.0, 1.0]]
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, 2, 3] = True
    assert Subset.from_mask(mask).indices.tolist() == [23]


def test_composed_locations():
    sub = Subset((10,), [2, 7, 9])
    assert torch.equal((sub @ Arctan((10,))).locations, sub.locations)
    assert torch.equal((Arctan((3,)) @ sub).locations, sub.locations)
    assert Identity((4,)).locations.tolist() == [[0.0], [1.0], [2.0], [3.0]]
    inner = Subset((2, 4, 4), [3, 17, 30])
    picked = Subset((3,), [0, 2]) @ inner
    assert picked.locations.tolist() == [inner.locations[0].tolist(), inner.locations[2].tolist()]


def test_random_subsets_depend_only_on_the_generator():
    a = Subset.random((100,), 20, torch.Generator().manual_seed(3))
    b = Subset.random((100,), 20, torch.Generator().manual_seed(3))
    c = Subset.random((100,), 20, torch.Generator().manual_seed(4))
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert torch.all(a.indices[1:] > a.indices[:-1])       # sorted and distinct
    gen = torch.Generator().manual_seed(5)
    cycle1, cycle2 = Subset.random((100,), 20, gen), Subset.random((100,), 20, gen)
    assert not torch.equal(cycle1.indices, cycle2.indices)   # a fresh network per cycle


def test_nan_observations_are_refused_and_can_be_dropped():
    op = Arctan((6,))
    x = _state((6,))
    y = torch.tensor([0.1, float("nan"), 0.3, 0.4, float("nan"), 0.6], dtype=torch.float64)
    with pytest.raises(InputError, match="NaN.*without_missing"):
        op.likelihood_score(x, y, 0.1)
    reduced, y_valid = without_missing(op, y)
    assert isinstance(reduced, Composed) and reduced.n_obs == 4
    assert y_valid.tolist() == [0.1, 0.3, 0.4, 0.6]
    assert reduced.locations[:, 0].tolist() == [0.0, 2.0, 3.0, 5.0]
    score = reduced.likelihood_score(x, y_valid, 0.1)
    assert torch.all(score[:, [1, 4]] == 0)          # missing points get no pull
    torch.testing.assert_close(score, _autograd_score(reduced, x, y_valid, 0.1))
    assert without_missing(op, y_valid.new_zeros(6))[0] is op


@pytest.mark.parametrize(("call", "match"), [
    (lambda op, x: op.likelihood_score(x, torch.zeros(5), 0.1), r"shape \(\.\.\., 6\)"),
    (lambda op, x: op.likelihood_score(x, torch.zeros(6), 0.0), "obs_error_std"),
    (lambda op, x: op.likelihood_score(x, torch.zeros(6), -1.0), "obs_error_std"),
    (lambda op, x: op.likelihood_score(x, torch.zeros(6), torch.ones(5)), "obs_error_std"),
    (lambda op, x: op(torch.zeros(3, 7)), "expects"),
])
def test_validation(call, match):
    with pytest.raises(InputError, match=match):
        call(Identity((6,)), torch.zeros(3, 6))


def test_constructor_validation():
    with pytest.raises(InputError, match="indices"):
        Subset((5,), [0, 5])
    with pytest.raises(InputError, match="repeated"):
        Subset((5,), [1, 1])
    with pytest.raises(InputError, match="n_obs"):
        Subset.random((5,), 6, torch.Generator())
    with pytest.raises(InputError, match="scale"):
        Arctan((5,), scale=0.0)
    with pytest.raises(InputError, match="compose"):
        Subset((4,), [0]) @ Identity((5,))


@pytest.mark.parametrize("make", [lambda: Identity((3, 4)), lambda: Arctan((3, 4), scale=0.7),
                                  lambda: Subset((3, 4), [0, 5, 7, 11])])
def test_gauss_newton_diagonal_matches_autograd_jacobian(make):
    op = make()
    g = torch.Generator().manual_seed(3)
    state = torch.randn(3, 4, generator=g, dtype=torch.float64)
    sigma = torch.linspace(0.5, 1.5, op.n_obs, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: op(x), state).reshape(op.n_obs, -1)
    expected = (jac ** 2 / sigma[:, None] ** 2).sum(0).reshape(3, 4)
    assert op.has_gauss_newton_diagonal
    torch.testing.assert_close(op.gauss_newton_diagonal(state, sigma), expected)
    torch.testing.assert_close(op.gauss_newton_diagonal(state[None], 0.5)[0],
                               (jac ** 2 / 0.25).sum(0).reshape(3, 4))


def test_gauss_newton_diagonal_unavailable_for_composed_and_user_operators():
    op = Arctan((4,)) @ Identity((4,))
    assert not op.has_gauss_newton_diagonal
    with pytest.raises(InputError, match="Gauss-Newton"):
        op.gauss_newton_diagonal(torch.zeros(4), 1.0)


def test_operators_by_name():
    from turbda_kit.obs.operators import available_operators, make_operator, register_operator

    assert set(available_operators()) >= {"identity", "arctan"}
    state = torch.linspace(-2, 2, 12, dtype=torch.float64).reshape(2, 6)
    torch.testing.assert_close(make_operator("identity", (2, 6))(state), state.reshape(-1))
    torch.testing.assert_close(make_operator("arctan", (2, 6), scale=2.0)(state),
                               Arctan((2, 6), scale=2.0)(state))
    with pytest.raises(InputError, match="unknown observation operator 'radar'; known: arctan"):
        make_operator("radar", (2, 6))
    with pytest.raises(InputError, match="already registered"):
        register_operator("identity", Identity)
