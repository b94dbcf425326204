"""The LETKF's lattice path: Gram matrices by FFT convolution, and the thread-split eigh.

The convolution path must equal the gathered sums up to rounding (float64, 1e-12), keep
unobserved points, and in float32 stay within a stated tolerance of a float64
per-point reference (written here from Hunt et al.'s formulas, independent of the kit).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.filters.ensemble_space import batched_eigh, lattice_gram
from turbda_kit.filters.letkf import LETKF, LETKFConfig, letkf_analysis, uses_convolution
from turbda_kit.filters.localization import (
    gaspari_cohn,
    grid_positions,
    lattice_geometry,
    plan_localization,
    sqg_positions,
)

F64 = torch.float64


def per_point_letkf(forecast, hx, y, std, state_pos, obs_pos, lengths, radius,
                    vertical_radius=None):
    """Hunt et al. (2007) one state point at a time in NumPy float64 (Kalman form in
    observation space, so not the kit's ensemble-space algebra)."""
    m = forecast.shape[0]
    x_mean, x_anom = forecast.mean(0), forecast - forecast.mean(0)
    hx_mean, hx_anom = hx.mean(0), hx - hx.mean(0)
    out = forecast.copy()
    n_h = len(lengths)
    for i in range(forecast.shape[1]):
        diff = np.abs(obs_pos[:, :n_h] - state_pos[i, :n_h])
        diff = np.minimum(diff, np.asarray(lengths) - diff)
        distance = np.sqrt((diff ** 2).sum(1))
        weight = gaspari_cohn(torch.from_numpy(distance), radius).numpy()
        if vertical_radius is not None:
            dz = np.abs(obs_pos[:, n_h] - state_pos[i, n_h])
            weight = weight * gaspari_cohn(torch.from_numpy(dz), vertical_radius).numpy()
        local = weight > 0
        if not local.any():
            continue
        h = hx_anom[:, local]
        r_loc = np.diag(std[local] ** 2 / weight[local])       # R-localisation: R / rho
        gain = (x_anom[:, i] @ h / (m - 1)) @ np.linalg.inv(h.T @ h / (m - 1) + r_loc)
        mean = x_mean[i] + gain @ (y[local] - hx_mean[local])
        # Symmetric square root of the ensemble-space analysis covariance.
        s = h / std[local] * np.sqrt(weight[local])
        evals, evecs = np.linalg.eigh(s @ s.T + (m - 1) * np.eye(m))
        root = (evecs * np.sqrt((m - 1) / evals)) @ evecs.T
        out[:, i] = mean + x_anom[:, i] @ root
    return out


def grid_problem(seed=0, shape=(6, 8), lengths=(6.0, 12.0), m=7, levels=2, picks=None,
                 dtype=F64, spread=1.0):
    """Forecast on a 2-level periodic grid; observations at grid points (all or ``picks``)."""
    gen = torch.Generator().manual_seed(seed)
    yx = grid_positions(shape, lengths, dtype=F64)
    xy = yx.flip(-1)
    z = torch.arange(levels, dtype=F64)[:, None, None, None].expand(levels, *shape, 1)
    positions = torch.cat([xy.expand(levels, *shape, 2), z], dim=-1)      # (lev, ny, nx, 3)
    n_state = positions[..., 0].numel()
    forecast = spread * torch.randn(m, levels, *shape, generator=gen, dtype=F64)
    flat = forecast.reshape(m, -1)
    index = torch.arange(n_state) if picks is None else picks
    hx = flat[:, index] + 0.1 * flat[:, index] ** 2
    y = torch.randn(index.numel(), generator=gen, dtype=F64)
    std = 0.5 + torch.rand(index.numel(), generator=gen, dtype=F64)
    obs_pos = positions.reshape(-1, 3)[index]
    to = dict(dtype=dtype)
    return dict(forecast=forecast.to(**to), hx=hx.to(**to), y=y.to(**to), std=std.to(**to),
                positions=positions.to(**to), obs_pos=obs_pos.to(**to),
                lengths=(lengths[1], lengths[0]))   # columns are (x, y)


def analyse(prob, config, **kwargs):
    return letkf_analysis(prob["forecast"], prob["hx"], prob["y"], prob["std"], config=config,
                          state_positions=prob["positions"], obs_positions=prob["obs_pos"],
                          domain_lengths=prob["lengths"], **kwargs)


# --------------------------------------------------------------------------------------
# Lattice detection
# --------------------------------------------------------------------------------------

def test_lattice_found_for_grids_and_grid_point_observations():
    prob = grid_problem()
    plan = plan_localization(prob["positions"], prob["obs_pos"], prob["lengths"],
                             LETKFConfig(localization_radius=2.0))
    lattice = plan.lattice
    assert lattice is not None and lattice.shape == (8, 6) and lattice.spacing == (1.5, 1.0)
    assert lattice.level_weights.shape == (1, 1) and bool(lattice.observed.all())
    # The kernel is the taper of the minimum-image offset.
    assert lattice.kernel[0, 0] == 1.0
    expected = gaspari_cohn(torch.tensor([math.hypot(1.5, 2.0)], dtype=F64), 2.0)
    torch.testing.assert_close(lattice.kernel[7, 2], expected[0], rtol=0, atol=1e-15)
    # Lorenz-96 (1-D) and SQG positions in float32 (rounded coordinates) have one too.
    pos = grid_positions((40,), (40.0,))
    assert plan_localization(pos, pos, (40.0,), LETKFConfig(localization_radius=7.28)
                             ).lattice.shape == (40,)
    sqg = sqg_positions(16, 2.0e7, 1.0e4, dtype=torch.float32)
    assert plan_localization(sqg, sqg.reshape(-1, 3), (2.0e7, 2.0e7),
                             LETKFConfig(localization_radius=2.0e6)).lattice.shape == (16, 16)


def test_lattice_sees_a_wrapped_coordinate_just_below_the_period_as_node_zero():
    pos = grid_positions((10,), (10.0,))
    obs = torch.tensor([[0.0], [10.0 - 1e-13], [3.0]], dtype=F64)
    lattice = plan_localization(pos, obs, (10.0,), LETKFConfig(localization_radius=1.0)).lattice
    assert lattice is not None and lattice.shape == (10,)
    assert lattice.obs_node.tolist() == [0, 0, 3]


def test_no_lattice_off_grid_bounded_or_global():
    prob = grid_problem()
    shifted = prob["obs_pos"].clone()
    shifted[3, 0] += 0.37
    config = LETKFConfig(localization_radius=2.0)
    assert plan_localization(prob["positions"], shifted, prob["lengths"], config).lattice is None
    bounded = (prob["lengths"][0], math.inf)
    assert plan_localization(prob["positions"], prob["obs_pos"], bounded,
                             config).lattice is None
    assert plan_localization(prob["positions"], prob["obs_pos"], prob["lengths"],
                             LETKFConfig()).lattice is None
    # Observations half-way between grid points make a finer lattice, which is fine.
    half = prob["obs_pos"].clone()
    half[:, 0] += 0.75
    lattice = plan_localization(prob["positions"], half, prob["lengths"], config).lattice
    assert lattice is not None and lattice.shape == (16, 6)


def test_lattice_levels_and_reach():
    prob = grid_problem(picks=torch.tensor([0, 5, 60]))
    lattice = lattice_geometry(prob["positions"].reshape(-1, 3), prob["obs_pos"],
                               prob["lengths"], 1.0, 0.6)
    assert lattice.level_weights.shape == (2, 2)
    torch.testing.assert_close(lattice.level_weights[0, 1],
                               gaspari_cohn(torch.tensor(1.0, dtype=F64), 0.6))
    # Reach = some observation strictly inside the horizontal and vertical cut-offs.
    state = prob["positions"].reshape(-1, 3)
    d = state[:, None, :2] - prob["obs_pos"][None, :, :2]
    lengths = torch.tensor(prob["lengths"], dtype=F64)
    d = torch.minimum(d.abs(), lengths - d.abs())
    near = ((d ** 2).sum(-1) < 4.0) & ((state[:, None, 2] - prob["obs_pos"][None, :, 2]).abs()
                                       < 1.2)
    torch.testing.assert_close(lattice.observed, near.any(1))


# --------------------------------------------------------------------------------------
# Convolution equals gathered sums
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["all", "subset", "duplicates", "vertical", "inflation"])
def test_convolution_equals_gather_in_float64(case):
    picks = {"subset": torch.tensor([0, 3, 17, 40, 41, 77, 90]),
             "duplicates": torch.tensor([5, 5, 5, 20, 68, 68])}.get(case)
    prob = grid_problem(seed=1, picks=picks)
    extra = {"vertical": dict(vertical_localization_radius=0.7),
             "inflation": dict(inflation="multiplicative", inflation_factor=1.1)}.get(case, {})
    gathered = analyse(prob, LETKFConfig(localization_radius=2.2, gram="gather", chunk_size=5,
                                         **extra))
    convolved = analyse(prob, LETKFConfig(localization_radius=2.2, gram="convolution", **extra))
    torch.testing.assert_close(convolved, gathered, rtol=0, atol=1e-12)
    expected = per_point_letkf(prob["forecast"].reshape(prob["forecast"].shape[0], -1).numpy(),
                               prob["hx"].numpy(), prob["y"].numpy(), prob["std"].numpy(),
                               prob["positions"].reshape(-1, 3).numpy(), prob["obs_pos"].numpy(),
                               prob["lengths"], 2.2, extra.get("vertical_localization_radius"))
    if case != "inflation":
        np.testing.assert_allclose(convolved.reshape(expected.shape).numpy(), expected,
                                   rtol=0, atol=1e-11)


def test_convolution_keeps_unobserved_points_and_serves_lorenz96():
    gen = torch.Generator().manual_seed(6)
    forecast = torch.randn(5, 40, generator=gen, dtype=torch.float32)
    obs_idx = torch.tensor([0, 1, 39])
    pos = grid_positions((40,), (40.0,))
    config = LETKFConfig(localization_radius=2.0)
    xa = letkf_analysis(forecast, forecast[:, obs_idx], torch.zeros(3), 1.0, config=config,
                        state_positions=pos, obs_positions=pos[obs_idx], domain_lengths=(40.0,))
    plan = plan_localization(pos, pos[obs_idx], (40.0,), config)
    assert uses_convolution(config, plan, torch.float32)
    # Gram exactly 0 there (not FFT round-off), so the transform is the identity up to
    # the rounding of eigh and of mean + anomalies.
    far = slice(6, 34)
    torch.testing.assert_close(xa[:, far], forecast[:, far], rtol=0, atol=1e-6)
    gathered = letkf_analysis(forecast, forecast[:, obs_idx], torch.zeros(3), 1.0,
                              config=LETKFConfig(localization_radius=2.0, gram="gather"),
                              state_positions=pos, obs_positions=pos[obs_idx],
                              domain_lengths=(40.0,))
    torch.testing.assert_close(xa, gathered, rtol=0, atol=2e-6)


def test_convolution_on_each_device_agrees_with_float64(device):
    prob = grid_problem(seed=9, picks=torch.tensor([0, 4, 9, 33, 34, 61, 80, 95]))
    expected = analyse(prob, LETKFConfig(localization_radius=2.2, gram="gather"))
    to = dict(device=device, dtype=torch.float32)
    on_device = {k: (v.to(**to) if isinstance(v, torch.Tensor) else v) for k, v in prob.items()}
    got = analyse(on_device, LETKFConfig(localization_radius=2.2, gram="convolution"))
    assert got.device.type == device.type and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu().double(), expected, rtol=0, atol=1e-5)


def test_lattice_gram_equals_brute_force_sums():
    prob = grid_problem(seed=2, m=4, picks=torch.tensor([1, 2, 30, 31, 50, 95]))
    plan = plan_localization(prob["positions"], prob["obs_pos"], prob["lengths"],
                             LETKFConfig(localization_radius=1.6))
    gen = torch.Generator().manual_seed(3)
    augmented = torch.randn(6, 5, generator=gen, dtype=F64)
    gram = lattice_gram(augmented, plan.lattice, block_elements=50)    # several blocks
    for loc in range(plan.n_locations):
        index, weight = plan.local_observations(loc, loc + 1)
        rows = augmented[index[0]] * weight[0, :, None]
        expected = rows.T @ augmented[index[0]]
        expected[-1, -1] = 0.0                                        # not computed
        torch.testing.assert_close(gram[loc], expected, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------
# float32: the stated accuracy against float64
# --------------------------------------------------------------------------------------

def test_float32_convolution_within_stated_tolerance_of_float64_per_point_reference():
    """float32 on the lattice path: every analysis value within 2e-5 of the RMS analysis
    increment (SQG-like 2-level 16x16 grid, all points observed, ~100 local obs, spread 3
    against obs errors ~1: the regime of the kit's SQG presets).

    The benchmark's 64x64 case measured 1.7e-6 of the increment (docs/letkf.md)."""
    prob = grid_problem(seed=4, shape=(16, 16), lengths=(16.0, 16.0), m=20, spread=3.0)
    config = LETKFConfig(localization_radius=2.5)
    expected = per_point_letkf(prob["forecast"].reshape(20, -1).numpy(), prob["hx"].numpy(),
                               prob["y"].numpy(), prob["std"].numpy(),
                               prob["positions"].reshape(-1, 3).numpy(),
                               prob["obs_pos"].numpy(), prob["lengths"], 2.5)
    increment_rms = np.sqrt(((expected - prob["forecast"].reshape(20, -1).numpy()) ** 2).mean())
    to32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in prob.items()}
    plan = plan_localization(to32["positions"], to32["obs_pos"], to32["lengths"], config)
    assert uses_convolution(config, plan, torch.float32)
    got = analyse(to32, config).double().reshape(20, -1).numpy()
    error = np.abs(got - expected).max()
    assert error < 2e-5 * increment_rms, (error, increment_rms)


def test_auto_keeps_float64_on_the_gathered_path_bit_for_bit():
    prob = grid_problem(seed=5)
    auto = analyse(prob, LETKFConfig(localization_radius=2.0))
    gathered = analyse(prob, LETKFConfig(localization_radius=2.0, gram="gather"))
    assert torch.equal(auto, gathered)


def test_gram_option_errors():
    with pytest.raises(InputError, match="gram must be one of"):
        LETKFConfig(gram="fft")
    with pytest.raises(InputError, match="plain taper weights"):
        LETKFConfig(localization_radius=1.0, gram="convolution", regularization="nerger")
    with pytest.raises(InputError, match="plain taper weights"):
        LETKFConfig(localization_radius=1.0, gram="convolution",
                    perturbations="cross_validation")
    prob = grid_problem()
    off_grid = prob["obs_pos"] + 0.3
    with pytest.raises(InputError, match="one periodic lattice"):
        letkf_analysis(prob["forecast"], prob["hx"], prob["y"], prob["std"],
                       config=LETKFConfig(localization_radius=2.0, gram="convolution"),
                       state_positions=prob["positions"], obs_positions=off_grid,
                       domain_lengths=prob["lengths"])


def test_letkf_filter_caches_local_sets_only_for_the_gathered_path():
    prob = grid_problem(seed=7)
    n_state = prob["positions"][..., 0].numel()

    class AllPoints:
        n_obs = n_state
        locations = torch.stack(torch.unravel_index(torch.arange(n_state), (2, 6, 8)),
                                dim=1).to(F64)

        def __call__(self, state):
            return state.reshape(*state.shape[:-3], -1)

    operator = AllPoints()
    letkf = LETKF(LETKFConfig(localization_radius=2.0), prob["positions"], prob["lengths"])
    x32 = letkf(prob["forecast"].float(), prob["y"].float(), operator, 0.8, None)
    assert letkf.plan_for(operator, prob["forecast"].float()).cached_chunks is None
    x64 = letkf(prob["forecast"], prob["y"], operator, 0.8, None)
    assert letkf.plan_for(operator, prob["forecast"]).cached_chunks is not None
    expected = letkf_analysis(prob["forecast"], operator(prob["forecast"]), prob["y"], 0.8,
                              config=LETKFConfig(localization_radius=2.0),
                              state_positions=prob["positions"], obs_positions=prob["positions"]
                              .reshape(-1, 3), domain_lengths=prob["lengths"])
    assert torch.equal(x64, expected)
    torch.testing.assert_close(x32.double(), expected, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------

def test_thread_split_eigh_is_bit_identical():
    gen = torch.Generator().manual_seed(8)
    root = torch.randn(300, 9, 9, generator=gen, dtype=F64)
    matrices = root @ root.mT + torch.eye(9, dtype=F64)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        values, vectors = batched_eigh(matrices)
    finally:
        torch.set_num_threads(previous)
    expected_values, expected_vectors = torch.linalg.eigh(matrices)
    assert torch.equal(values, expected_values) and torch.equal(vectors, expected_vectors)
