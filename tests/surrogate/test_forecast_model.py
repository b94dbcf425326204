"""The ViT surrogate as a batched forecast model in K (``SurrogateModel``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbda_kit.data.normaliser import Normaliser
from turbda_kit.errors import InputError
from turbda_kit.models.base import ForecastModel
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.export import export_surrogate, save_surrogate
from turbda_kit.surrogate.forecast_model import SurrogateModel
from turbda_kit.surrogate.rollout import rollout
from turbda_kit.surrogate.vit import ViT

MEAN, STD = [1.0, -2.0], [3.0, 5.0]
NORMALISER = Normaliser(("sqg_0", "sqg_10000"), np.array(MEAN), np.array(STD))


@pytest.fixture(scope="module")
def vit():
    cfg = load_vit_config("tiny", img_size=16, residual=True)
    model = ViT(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():   # a residual model starts as the identity: make it move
        model.head[-1].weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(1))
    return model.eval()


def ensemble(members=4, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return 10 * torch.randn(members, 2, 16, 16, generator=gen, dtype=dtype)


def test_it_is_a_forecast_model_with_a_step_in_seconds(vit):
    model = SurrogateModel(vit, NORMALISER, lead_hours=6.0)
    assert isinstance(model, ForecastModel)
    assert model.state_shape == (2, 16, 16)
    assert model.dt * model.time_unit_seconds == 6.0 * 3600.0


def test_advance_is_the_rollout_of_the_network_with_the_normaliser(vit):
    model = SurrogateModel(vit, NORMALISER)
    ens = ensemble()
    expected = rollout(vit, ens, 3, 12.0, NORMALISER)[-1]
    torch.testing.assert_close(model.advance(ens, 3), expected, rtol=0, atol=0)
    torch.testing.assert_close(model.step(ens), rollout(vit, ens, 1, 12.0, NORMALISER)[0])


def test_normalisation_is_applied_around_the_network(vit):
    model = SurrogateModel(vit, NORMALISER)
    ens = ensemble(3, seed=2)
    mean = torch.tensor(MEAN).reshape(1, 2, 1, 1)
    std = torch.tensor(STD).reshape(1, 2, 1, 1)
    with torch.no_grad():
        expected = vit((ens - mean) / std, torch.full((3,), 12.0)) * std + mean
    torch.testing.assert_close(model.advance(ens, 1), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.advance(ens, 0), ens)


def test_batched_chunked_and_per_member_steps_agree(vit):
    ens = ensemble(5)
    together = SurrogateModel(vit, NORMALISER).advance(ens, 2)
    chunked = SurrogateModel(vit, NORMALISER, batch_size=2).advance(ens, 2)
    apart = torch.stack([SurrogateModel(vit, NORMALISER).advance(member, 2) for member in ens])
    torch.testing.assert_close(chunked, together, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(apart, together, rtol=1e-5, atol=1e-5)
    assert together.shape == ens.shape


def test_the_states_dtype_and_device_come_back(vit):
    ens = ensemble(2, dtype=torch.float64)
    out = SurrogateModel(vit, NORMALISER).advance(ens, 1)
    assert out.dtype == torch.float64 and out.device == ens.device


def test_means_and_stds_build_the_same_model(vit):
    ens = ensemble(2)
    torch.testing.assert_close(SurrogateModel(vit, MEAN, STD).advance(ens, 1),
                               SurrogateModel(vit, NORMALISER).advance(ens, 1))


def test_from_export_reads_the_normaliser_and_the_lead(vit, tmp_path):
    path = export_surrogate(vit, tmp_path / "s.pt", normaliser=NORMALISER, lead_time_hours=6.0)
    loaded = SurrogateModel.from_export(path)
    assert loaded.lead_hours == 6.0
    np.testing.assert_array_equal(loaded.normaliser.std, STD)
    ens = ensemble(2, seed=3)
    torch.testing.assert_close(loaded.advance(ens, 1),
                               SurrogateModel(vit, NORMALISER, lead_hours=6.0).advance(ens, 1))
    assert SurrogateModel.from_files(path).lead_hours == 6.0


def test_exports_of_earlier_versions_still_load(vit, tmp_path):
    # Before the export held the normaliser, notebook 03 wrote it into the metadata.
    legacy = {"variables": list(vit.config.variables), "normalize_mean": MEAN,
              "normalize_std": STD, "lead_time_hours": 12.0}
    path = save_surrogate(vit.config, vit.state_dict(), tmp_path / "old.pt", legacy)
    loaded = SurrogateModel.from_files(path)
    np.testing.assert_array_equal(loaded.normaliser.mean, MEAN)
    bare = save_surrogate(vit.config, vit.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(InputError, match="no normalisation"):
        SurrogateModel.from_export(bare)
    with pytest.raises(InputError, match="no normalisation"):
        SurrogateModel.from_files(bare)


def test_bad_grid_normalisation_and_steps_are_refused(vit):
    model = SurrogateModel(vit, NORMALISER)
    with pytest.raises(InputError, match="training grid"):
        model.advance(torch.zeros(2, 2, 32, 32), 1)
    with pytest.raises(InputError, match="n_steps"):
        model.advance(torch.zeros(2, 2, 16, 16), -1)
    with pytest.raises(InputError, match="std > 0"):
        SurrogateModel(vit, MEAN, [1.0, 0.0])
    with pytest.raises(InputError, match="2 variables"):
        SurrogateModel(vit, [0.0], [1.0])
    with pytest.raises(InputError, match="trained on"):
        SurrogateModel(vit, Normaliser(("u", "v"), np.array(MEAN), np.array(STD)))
