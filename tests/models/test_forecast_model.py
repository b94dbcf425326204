"""One forecast-model protocol: every model fits it; SQG steps K exactly as PV converted."""

from __future__ import annotations

import pytest
import torch

from turbda_kit.errors import DivergenceError, InputError
from turbda_kit.models import (
    LORENZ96_TIME_UNIT_SECONDS,
    ForecastModel,
    Lorenz96,
    SQGModel,
    bao2024_at_resolution,
    pv_to_theta,
    random_initial_state,
    theta_to_pv,
)

PARAMS = bao2024_at_resolution(16)


@pytest.mark.parametrize("model, seconds_per_step", [
    (SQGModel(PARAMS), PARAMS.dt),
    (SQGModel(PARAMS, state_units="K"), PARAMS.dt),
    (Lorenz96(40, dt=0.05), 0.05 * 5 * 86400.0),
])
def test_every_model_is_a_forecast_model_with_a_time_unit(model, seconds_per_step):
    assert isinstance(model, ForecastModel)
    assert model.dt * model.time_unit_seconds == pytest.approx(seconds_per_step)
    assert LORENZ96_TIME_UNIT_SECONDS == 432000.0  # Lorenz (1996): one MTU is about 5 days


def test_sqg_in_kelvin_is_the_pv_model_with_conversions_at_entry_and_exit():
    pv = random_initial_state(PARAMS, torch.Generator().manual_seed(1), batch_shape=(3,))
    theta = pv_to_theta(pv, PARAMS) + 290.0
    kelvin, plain = SQGModel(PARAMS, state_units="K"), SQGModel(PARAMS)
    for n_steps in (0, 1, 7):
        expected = pv_to_theta(plain.advance(theta_to_pv(theta, PARAMS), n_steps), PARAMS)
        assert torch.equal(kelvin.advance(theta, n_steps), expected)
    assert torch.equal(kelvin.step(theta[0]), kelvin.advance(theta[0], 1))
    assert "state_units='K'" in repr(kelvin) and "state_units" not in repr(plain)
    with pytest.raises(InputError, match="state_units"):
        SQGModel(PARAMS, state_units="kelvin")


def test_sqg_in_kelvin_reports_the_last_good_state_in_kelvin():
    model = SQGModel(PARAMS.replace(dt=PARAMS.dt * 40), cfl_check_every=1, state_units="K")
    pv = random_initial_state(PARAMS, torch.Generator().manual_seed(2)) * 30.0
    theta = pv_to_theta(pv, PARAMS)
    with pytest.raises(DivergenceError, match="CFL number .* at step 0") as err:
        model.advance(theta, 5)
    # the state before step 0 is the input, in K (in PV it would be ~300 times larger)
    assert err.value.last_good_step == 0
    torch.testing.assert_close(err.value.last_good_state, theta, rtol=1e-12, atol=1e-12)
