"""Observation noise: Gaussian statistics and the shock process."""

from __future__ import annotations

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.obs.noise import ShockProcess, ShockRecord, gaussian_noise, observe
from turbda_kit.obs.operators import Identity


def test_gaussian_noise_statistics_and_reproducibility():
    noise = gaussian_noise((200_000,), 0.05, torch.Generator().manual_seed(0), torch.float64)
    assert abs(float(noise.mean())) < 5 * 0.05 / 200_000 ** 0.5
    assert abs(float(noise.std()) / 0.05 - 1) < 0.01
    again = gaussian_noise((200_000,), 0.05, torch.Generator().manual_seed(0), torch.float64)
    assert torch.equal(noise, again)
    per_obs = gaussian_noise((50_000, 2), torch.tensor([1.0, 3.0]), torch.Generator())
    torch.testing.assert_close(per_obs.std(0), torch.tensor([1.0, 3.0]), rtol=0.02, atol=0)


def test_observe_adds_noise_to_the_operator_output():
    truth = torch.linspace(-1, 1, 10, dtype=torch.float64)
    y = observe(Identity((10,)), truth, 1e-3, torch.Generator().manual_seed(1))
    assert y.shape == (10,) and float((y - truth).abs().max()) < 5e-3


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_noise_validation(bad):
    with pytest.raises(InputError, match="obs_error_std"):
        gaussian_noise((3,), bad, torch.Generator())


def test_shock_process_frequencies_and_strengths():
    process = ShockProcess(torch.Generator().manual_seed(0))
    records = [process.draw() for _ in range(20_000)]
    occurred = [r for r in records if r.occurred]
    assert abs(len(occurred) / len(records) - 0.5) < 0.015
    for std, weight in zip((4.6, 3.7, 2.8, 1.8), (0.1, 0.2, 0.3, 0.4)):
        share = sum(r.std == std for r in occurred) / len(occurred)
        assert abs(share - weight) < 0.02
    assert all(r.std == 0.0 for r in records if not r.occurred)


def test_shock_apply_perturbs_with_the_recorded_std():
    process = ShockProcess(torch.Generator().manual_seed(1), probability=1.0, stds=(2.0,),
                           weights=(1.0,))
    truth = torch.zeros(2, 64, 64, dtype=torch.float64)
    perturbed, record = process.apply(truth)
    assert record == ShockRecord(True, 2.0)
    assert abs(float(perturbed.std()) - 2.0) < 0.05
    calm = ShockProcess(torch.Generator(), probability=0.0)
    same, record = calm.apply(truth)
    assert same is truth and record == ShockRecord(False, 0.0)


def test_shock_process_is_reproducible():
    def run(seed):
        p = ShockProcess(torch.Generator().manual_seed(seed))
        return [p.apply(torch.zeros(5))for _ in range(10)]
    a, b = run(7), run(7)
    assert [r for _, r in a] == [r for _, r in b]
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"probability": 1.5}, "probability"),
    ({"stds": (1.0, -1.0), "weights": (0.5, 0.5)}, "std"),
    ({"stds": (1.0,), "weights": (0.5, 0.5)}, "equal length"),
    ({"weights": (0.0, 0.0, 0.0, 0.0)}, "weights"),
])
def test_shock_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        ShockProcess(torch.Generator(), **kwargs)
