"""Lorenz-96 problem generation: consistency with the model, fixed draws, IO round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbda_kit.data.lorenz96_problem import (
    Lorenz96Problem,
    generate_lorenz96_problem,
    initial_truth,
    observation_noise,
    write_lorenz96_problem,
)
from turbda_kit.errors import InputError
from turbda_kit.io import open_dataset

SMALL = Lorenz96Problem(n=40, n_cycles=6, burn_in_steps=200, operators=("arctan", "identity"),
                        seed=3)


@pytest.fixture(scope="module")
def dataset():
    return generate_lorenz96_problem(SMALL)


def test_layout(dataset):
    assert dataset.truth.dims == ("time", "i") and dataset.truth.shape == (6, 40)
    assert dataset.obs.dims == ("time", "i_obs") and dataset.obs.attrs["operator"] == "arctan"
    assert dataset.obs_identity.shape == (6, 40)
    np.testing.assert_allclose(dataset.time_mtu.values, 0.1 * np.arange(1, 7))
    np.testing.assert_allclose(dataset.time.values, dataset.time_mtu.values * 5 * 86400.0)
    assert dataset.attrs["problem_n"] == 40 and "provenance_torch" in dataset.attrs


def test_truth_follows_the_model(dataset):
    model = SMALL.model
    x = torch.from_numpy(dataset.truth_initial.values)
    for cycle in range(SMALL.n_cycles):
        x = model.advance(x, SMALL.steps_per_cycle)
        np.testing.assert_array_equal(x.numpy(), dataset.truth.values[cycle])
    # On the attractor after the burn-in: not the initial F + N(0, 1) draw any more.
    assert abs(float(dataset.truth.mean()) - 8.0) > 1.0


def test_observations_are_operator_plus_fixed_noise(dataset):
    truth = torch.from_numpy(dataset.truth.values)
    noise = dataset.obs_noise.values
    np.testing.assert_allclose(dataset.obs.values, torch.atan(truth).numpy() + 0.05 * noise,
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(dataset.obs_identity.values, truth.numpy() + 0.05 * noise,
                               rtol=0, atol=1e-12)


def test_reproducible_and_seeded(dataset):
    again = generate_lorenz96_problem(SMALL)
    np.testing.assert_array_equal(again.obs.values, dataset.obs.values)
    other = generate_lorenz96_problem(Lorenz96Problem(n=40, n_cycles=6, burn_in_steps=200,
                                                      seed=4))
    assert not np.array_equal(other.truth.values, dataset.truth.values)


def test_draws_by_global_index_are_slab_independent():
    problem = Lorenz96Problem(n=1000, n_cycles=2)
    whole = observation_noise(problem, 1)
    part = observation_noise(problem, 1, offset=300, size=250)
    assert torch.equal(part, whole[300:550])
    assert torch.equal(initial_truth(problem, offset=999, size=1), initial_truth(problem)[999:])
    big = torch.cat([observation_noise(problem, c) for c in range(2)])
    assert abs(float(big.mean())) < 0.1 and abs(float(big.std()) - 1) < 0.05


def test_float32_generation():
    ds = generate_lorenz96_problem(Lorenz96Problem(n=16, n_cycles=2, burn_in_steps=10),
                                  dtype=torch.float32)
    assert ds.truth.dtype == np.float32


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_write_round_trip(tmp_path, suffix):
    problem = Lorenz96Problem(n=12, n_cycles=3, burn_in_steps=20, operators=("identity",))
    path = write_lorenz96_problem(problem, tmp_path / f"l96{suffix}", show_progress=False)
    ds = open_dataset(path)
    assert Lorenz96Problem.from_attrs(ds.attrs) == problem
    reference = generate_lorenz96_problem(problem)
    np.testing.assert_array_equal(ds.obs.values, reference.obs.values)
    assert isinstance(problem.obs_operator(), type(problem.obs_operator("identity")))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n": 3}, "n="),
    ({"n_cycles": 0}, "n_cycles"),
    ({"dt": 0.0}, "dt"),
    ({"obs_error_std": -1.0}, "obs_error_std"),
    ({"operators": ("square",)}, "operators"),
    ({"operators": ()}, "operators"),
    ({"seed": -1}, "seed"),
])
def test_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        Lorenz96Problem(**kwargs)


def test_bad_inputs():
    with pytest.raises(InputError, match="cycle"):
        observation_noise(SMALL, 6)
    with pytest.raises(InputError, match="operator"):
        Lorenz96Problem(operators=("identity",)).obs_operator("arctan")
    with pytest.raises(InputError, match="missing"):
        Lorenz96Problem.from_attrs({})
