"""The ViT surrogate as a batched forecast model in K."""

from __future__ import annotations

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.experiments.surrogate_model import SurrogateModel, normalisation_metadata
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.vit import ViT, save_surrogate

MEAN, STD = [1.0, -2.0], [3.0, 5.0]


@pytest.fixture(scope="module")
def vit():
    return ViT(load_vit_config("tiny", img_size=16), generator=torch.Generator().manual_seed(0)).eval()


def test_batched_ensemble_equals_per_member_steps(vit):
    model = SurrogateModel(vit, MEAN, STD)
    ens = 10 * torch.randn(4, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    together = model.advance(ens, 2)
    apart = torch.stack([model.advance(member, 2) for member in ens])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)
    assert together.shape == ens.shape and model.dt == 43200.0


def test_normalisation_is_applied_around_the_network(vit):
    model = SurrogateModel(vit, MEAN, STD)
    ens = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor(MEAN).reshape(1, 2, 1, 1)
    std = torch.tensor(STD).reshape(1, 2, 1, 1)
    with torch.no_grad():
        expected = vit((ens - mean) / std, torch.full((3,), 12.0)) * std + mean
    torch.testing.assert_close(model.advance(ens, 1), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.advance(ens, 0), ens)


def test_from_files_reads_normalisation_metadata(vit, tmp_path):
    path = save_surrogate(vit.config, vit.state_dict(), tmp_path / "s.pt",
                          normalisation_metadata(vit.config.variables, MEAN, STD))
    loaded = SurrogateModel.from_files(path)
    ens = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded.advance(ens, 1), SurrogateModel(vit, MEAN, STD).advance(ens, 1))
    bare = save_surrogate(vit.config, vit.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(InputError, match="no normalisation"):
        SurrogateModel.from_files(bare)


def test_bad_grid_and_normalisation(vit):
    model = SurrogateModel(vit, MEAN, STD)
    with pytest.raises(InputError, match="training grid"):
        model.advance(torch.zeros(2, 2, 32, 32), 1)
    with pytest.raises(InputError, match="std must be > 0"):
        SurrogateModel(vit, MEAN, [1.0, 0.0])
    with pytest.raises(InputError, match="2 variables"):
        SurrogateModel(vit, [0.0], [1.0])
