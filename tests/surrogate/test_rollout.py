"""Rollouts of the surrogate: closed forms, equivalences, baselines, truth from shards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from turbda_kit.data.normaliser import Normaliser
from turbda_kit.errors import InputError
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.rollout import (
    iter_rollout,
    rmse_per_variable,
    rollout,
    rollout_rmse,
    split_trajectory,
    trajectory_windows,
)
from turbda_kit.surrogate.vit import ViT
from turbda_kit.testing import assert_cf_complete

NORMALISER = Normaliser(("sqg_0", "sqg_10000"), np.array([290.0, 285.0]), np.array([4.0, 2.0]))


class ShiftModel:
    """x -> a * roll(x, 1 along x): an exactly known linear 'surrogate'."""

    def __init__(self, factor: float = 1.0):
        self.factor = factor
        self.calls = []

    def __call__(self, fields, lead):
        self.calls.append(lead.clone())
        return self.factor * torch.roll(fields, 1, dims=-1)


def random_fields(shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_rollout_of_a_linear_map_matches_its_closed_form():
    factor = 0.9
    physical = 290.0 + 3.0 * random_fields((3, 2, 8, 8))
    out = rollout(ShiftModel(factor), physical, 4, 12.0, NORMALISER)
    assert out.shape == (4, 3, 2, 8, 8) and out.dtype == torch.float64
    z0 = NORMALISER.normalise(physical)
    for k in range(4):
        expected = NORMALISER.denormalise(factor ** (k + 1) * torch.roll(z0, k + 1, dims=-1))
        torch.testing.assert_close(out[k], expected, rtol=0, atol=1e-10)


def test_lead_time_is_passed_at_every_step_and_normalised_input_gives_the_same_forecast():
    physical = 290.0 + random_fields((2, 2, 8, 8), seed=1)
    model = ShiftModel(0.5)
    from_physical = rollout(model, physical, 3, 6.0, NORMALISER)
    assert len(model.calls) == 3 and all(torch.equal(c, torch.full((2,), 6.0, dtype=c.dtype))
                                         for c in model.calls)
    from_normalised = rollout(model, NORMALISER.normalise(physical), 3, 6.0, NORMALISER,
                              normalised=True)
    torch.testing.assert_close(from_physical, from_normalised, rtol=0, atol=1e-10)


def test_without_a_normaliser_the_model_works_in_the_inputs_units():
    fields = random_fields((2, 2, 8, 8), seed=2)
    out = rollout(ShiftModel(2.0), fields, 2, 12.0)
    torch.testing.assert_close(out[1], 4.0 * torch.roll(fields, 2, dims=-1))


def test_the_generator_yields_step_by_step_and_can_stop_early():
    model = ShiftModel()
    steps = iter_rollout(model, random_fields((1, 2, 8, 8)), 100, 12.0, NORMALISER)
    first = next(steps)
    assert first.shape == (1, 2, 8, 8) and len(model.calls) == 1
    next(steps)
    assert len(model.calls) == 2     # lazily: nothing beyond what was asked


def test_batched_rollout_of_a_vit_equals_one_sample_at_a_time(device):
    cfg = load_vit_config("tiny", img_size=16, drop_rate=0.2, drop_path_rate=0.2)
    model = ViT(cfg, generator=torch.Generator().manual_seed(0)).to(device).train()
    physical = (290.0 + 2.0 * random_fields((3, 2, 16, 16), seed=3, dtype=torch.float32))
    batched = rollout(model, physical, 3, 12.0, NORMALISER)
    assert batched.device.type == device.type and batched.dtype == torch.float32
    looped = torch.cat([rollout(model, physical[i:i + 1], 3, 12.0, NORMALISER)
                        for i in range(3)], dim=1)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-4)
    assert model.training          # mode restored; dropout was off during the rollout
    assert not batched.requires_grad


def test_a_float64_model_rolls_out_in_float64():
    model = ViT(load_vit_config("tiny", img_size=16), generator=torch.Generator().manual_seed(0))
    model = model.double()
    out = rollout(model, 290.0 + random_fields((1, 2, 16, 16), dtype=torch.float32), 2, 12.0,
                  NORMALISER)
    assert out.dtype == torch.float64


def test_windows_pick_the_right_truth_states():
    trajectory = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1).expand(10, 2, 3, 3)
    initial, truth = trajectory_windows(trajectory, n_steps=3, steps_per_lead=2, stride=2)
    assert initial[:, 0, 0, 0].tolist() == [0.0, 2.0]       # starts 0, 2 (window spans 6 steps)
    assert truth[:, :, 0, 0, 0].tolist() == [[2.0, 4.0], [4.0, 6.0], [6.0, 8.0]]


def test_rmse_per_variable_pools_cases_and_grid():
    forecast = torch.zeros(5, 2, 4, 4)
    truth = torch.stack([torch.full((5, 4, 4), 3.0), torch.full((5, 4, 4), -0.5)], dim=1)
    torch.testing.assert_close(rmse_per_variable(forecast, truth),
                               torch.tensor([3.0, 0.5], dtype=torch.float64))


def linear_trend(n_times=12, rate=(0.3, -0.2), seed=4):
    """x_t = x_0 + rate * t: persistence error at lag L is exactly |rate| * L everywhere."""
    base = 290.0 + random_fields((1, 2, 8, 8), seed=seed)
    t = torch.arange(n_times, dtype=torch.float64).reshape(-1, 1, 1, 1)
    return base + t * torch.tensor(rate, dtype=torch.float64).reshape(1, 2, 1, 1)


class TrendModel:
    """The exact 12-h step of :func:`linear_trend` in normalised space."""

    def __init__(self, rate, normaliser, steps_per_lead=1):
        self.increment = torch.tensor(rate, dtype=torch.float64) * steps_per_lead / \
            torch.as_tensor(normaliser.std)

    def __call__(self, fields, lead):
        return fields + self.increment.to(fields).reshape(1, -1, 1, 1)


def test_a_perfect_model_scores_zero_and_persistence_matches_its_closed_form():
    rate = (0.3, -0.2)
    trajectory = linear_trend(rate=rate)
    scores = rollout_rmse(TrendModel(rate, NORMALISER), trajectory, 4, 12.0, NORMALISER,
                          climatology=trajectory.mean(dim=0))
    assert scores.n_cases == 12 - 4 and scores.variables == NORMALISER.variables
    np.testing.assert_allclose(scores.lead_hours, [12.0, 24.0, 36.0, 48.0])
    np.testing.assert_allclose(scores.rmse, 0.0, atol=1e-9)
    lags = np.arange(1, 5)[:, None]
    np.testing.assert_allclose(scores.persistence_rmse, lags * np.abs(rate), rtol=1e-9)
    np.testing.assert_allclose(scores.skill_vs_persistence, 1.0)
    assert scores.climatology_rmse.shape == (4, 2)
    ds = scores.to_dataset()
    assert ds["rmse"].dims == ("lead", "variable") and ds.attrs["n_cases"] == 8
    assert_cf_complete(ds, require_time=False)
    assert ds["lead"].attrs["standard_name"] == "forecast_period"
    assert "lead (h)" in scores.table()


def test_scores_do_not_depend_on_the_batch_size_and_respect_the_trajectory_spacing():
    rate = (0.3, -0.2)
    trajectory = linear_trend(n_times=15, rate=rate)
    model = TrendModel(rate, NORMALISER, steps_per_lead=2)
    one = rollout_rmse(model, trajectory, 3, 24.0, NORMALISER, hours_per_step=12.0,
                       batch_size=1)
    many = rollout_rmse(model, trajectory, 3, 24.0, NORMALISER, hours_per_step=12.0,
                        batch_size=64)
    np.testing.assert_array_equal(one.persistence_rmse, many.persistence_rmse)
    np.testing.assert_allclose(one.rmse, many.rmse, atol=1e-12)
    np.testing.assert_allclose(many.persistence_rmse[:, 0], [0.6, 1.2, 1.8], rtol=1e-9)
    assert many.n_cases == 15 - 6


def test_an_imperfect_model_has_the_rmse_of_its_known_error():
    # The shift model on a constant-in-time trajectory: error at step k is the field
    # minus its k-fold roll; compare with a direct computation.
    state = 290.0 + random_fields((1, 2, 8, 8), seed=5)
    trajectory = state.expand(6, 2, 8, 8).clone()
    scores = rollout_rmse(ShiftModel(), trajectory, 2, 12.0, NORMALISER)
    for k in (1, 2):
        direct = rmse_per_variable(torch.roll(state, k, dims=-1), state)
        np.testing.assert_allclose(scores.rmse[k - 1], direct.numpy(), rtol=1e-9)
    np.testing.assert_allclose(scores.persistence_rmse, 0.0, atol=1e-12)
    assert scores.skill_vs_persistence[0] == -math.inf


@pytest.mark.parametrize("call, message", [
    (lambda: rollout(ShiftModel(), torch.zeros(2, 8, 8), 2, 12.0), "initial must have shape"),
    (lambda: rollout(ShiftModel(), torch.zeros(1, 2, 8, 8), 0, 12.0), "n_steps=0"),
    (lambda: rollout(ShiftModel(), torch.zeros(1, 2, 8, 8), 2, -1.0), "lead_time_hours=-1.0"),
    (lambda: rollout(ShiftModel(), torch.zeros(1, 2, 8, 8), 2, 12.0, normalised=True),
     "needs a normaliser"),
    (lambda: rollout(ShiftModel(), torch.zeros(1, 2, 8, 8, dtype=torch.int64), 2, 12.0),
     "floating-point"),
    (lambda: trajectory_windows(torch.zeros(3, 2, 8, 8), 3), "needs 4"),
    (lambda: rollout_rmse(ShiftModel(), torch.zeros(8, 2, 8, 8), 2, 18.0, hours_per_step=12.0),
     "whole multiple"),
    (lambda: rollout_rmse(ShiftModel(), torch.zeros(8, 2, 8, 8), 2, 12.0,
                          climatology=torch.zeros(2, 4, 4)), "climatology has shape"),
    (lambda: rollout_rmse(ShiftModel(), torch.zeros(8, 2, 8, 8), 2, 12.0, variables=["a"]),
     "names 1 channels"),
])
def test_bad_arguments_are_refused_with_a_clear_message(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_split_trajectory_joins_the_shards_of_a_split_in_time_order(tmp_path):
    from turbda_kit.data.preprocess import preprocess
    from turbda_kit.io import write_dataset
    from turbda_kit.testing import synthetic_nature_run

    nature = synthetic_nature_run(n_days=6, steps_per_day=4, grid=8, seed=1)
    write_dataset(nature, tmp_path / "nature.nc")
    preprocess(tmp_path / "nature.nc", tmp_path / "shards", 0, 3, 4, 6, steps_per_file=4,
               num_shards=2)
    trajectory, hours = split_trajectory(tmp_path / "shards", "test")
    assert hours == 6.0 and trajectory.shape == (8, 2, 8, 8)
    expected = nature["theta"].values[16:24]        # days 4 and 5, four steps a day
    np.testing.assert_array_equal(trajectory.numpy(), expected)
    train, _ = split_trajectory(tmp_path / "shards", "train", variables=["sqg_10000"])
    np.testing.assert_array_equal(train.numpy(), nature["theta"].values[:12, 1:])
    # A gap (a missing shard) is refused rather than silently joined.
    (tmp_path / "shards" / "train" / "1_0.npz").unlink()
    with pytest.raises(InputError, match="not contiguous"):
        split_trajectory(tmp_path / "shards", "train")


def test_score_test_split_scores_the_test_days_and_returns_the_first_forecast(tmp_path):
    from turbda_kit.data.preprocess import preprocess
    from turbda_kit.data.shards import open_shards
    from turbda_kit.io import write_dataset
    from turbda_kit.surrogate.rollout import score_test_split
    from turbda_kit.testing import synthetic_nature_run

    nature = synthetic_nature_run(n_days=6, steps_per_day=4, grid=8, seed=1)
    write_dataset(nature, tmp_path / "nature.nc")
    preprocess(tmp_path / "nature.nc", tmp_path / "shards", 0, 3, 4, 6, steps_per_file=4,
               num_shards=2)
    catalog = open_shards(tmp_path / "shards")

    def persistence(fields, lead):   # the surrogate that forecasts no change
        return fields

    test = score_test_split(persistence, catalog, max_steps=50, lead_steps=2)
    assert test.lead_hours == 12.0
    assert test.truth.shape == test.forecast.shape == (3, 8, 8)   # 8 test states, step 2
    expected = nature["theta"].values[16:24]
    np.testing.assert_allclose(test.forecast, np.broadcast_to(expected[0, 0], (3, 8, 8)),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(test.truth, expected[2::2][:3, 0])
    summary = test.scores.to_dict()
    np.testing.assert_allclose(summary["rmse_all_K"], summary["persistence_rmse_all_K"],
                               rtol=1e-5)
    with pytest.raises(InputError, match="must be >= 1"):
        score_test_split(persistence, catalog, max_steps=0)
