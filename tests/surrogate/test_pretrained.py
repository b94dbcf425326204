"""Shipped surrogates: bundles with hashes, a held-out sample and stored scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from turbda_kit.data.normaliser import Normaliser
from turbda_kit.errors import InputError
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.export import export_surrogate
from turbda_kit.surrogate.forecast_model import SurrogateModel
from turbda_kit.surrogate.pretrained import (
    available_pretrained,
    load_heldout,
    load_pretrained,
    main,
    package_pretrained,
    pretrained_info,
    score_heldout,
)
from turbda_kit.surrogate.vit import ViT
from turbda_kit.testing import synthetic_nature_run

NORMALISER = Normaliser(("sqg_0", "sqg_10000"), np.array([0.0, 0.0]), np.array([1.0, 1.0]))


@pytest.fixture
def export(tmp_path):
    vit = ViT(load_vit_config("tiny", img_size=16), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "surrogate.pt"
    export_surrogate(vit, path, normaliser=NORMALISER, lead_time_hours=12.0, hours_per_step=12.0,
                     metadata={"data_root": "/some/machine/path", "step": 7})
    return path


@pytest.fixture
def heldout():
    theta = synthetic_nature_run(n_days=4, steps_per_day=2, grid=16)["theta"].values
    return torch.from_numpy(np.asarray(theta, dtype=np.float32))


def test_a_bundle_round_trips_with_its_scores_and_no_machine_paths(export, heldout, tmp_path):
    dest = tmp_path / "bundles"
    folder = package_pretrained(export, "demo", heldout, 12.0, 3, dest=dest,
                                training={"command": "turbda pipeline paper"})
    assert available_pretrained(dest) == ["demo"]
    info = pretrained_info("demo", dest)
    assert set(info["files"]) == {"surrogate.pt", "heldout.npz"}
    assert info["heldout"]["states"] == 8 and info["training"]["command"] == "turbda pipeline paper"
    model = load_pretrained("demo", root=dest)
    trajectory, hours = load_heldout("demo", dest)
    assert torch.equal(trajectory, heldout) and hours == 12.0
    assert score_heldout(model, trajectory, hours, 3) == info["heldout"]["rmse_K"]
    assert set(info["heldout"]["rmse_K"]) == {"12", "24", "36", "persistence_12",
                                              "persistence_24", "persistence_36"}
    # int8 weights by default, scored beside the export's float32 weights
    assert info["weights"] == "int8"
    float32 = score_heldout(SurrogateModel.from_export(export), trajectory, hours, 3)
    assert info["heldout"]["rmse_K_float32"] == float32
    assert float32 != info["heldout"]["rmse_K"]
    assert float32["persistence_12"] == info["heldout"]["rmse_K"]["persistence_12"]
    plain = package_pretrained(export, "plain", heldout, 12.0, 3, dest=dest, weights="float32")
    plain_info = pretrained_info("plain", dest)
    assert plain_info["heldout"]["rmse_K"] == float32 and "rmse_K_float32" not in plain_info["heldout"]
    assert (folder / "surrogate.pt").stat().st_size < (plain / "surrogate.pt").stat().st_size
    stored = (folder / "surrogate.pt").read_bytes()
    assert b"/some/machine/path" not in stored and b"data_root" not in stored
    assert json.dumps(info).find("/some/") < 0


def test_a_damaged_or_replaced_file_is_refused(export, heldout, tmp_path):
    folder = package_pretrained(export, "demo", heldout, 12.0, 2, dest=tmp_path)
    data = bytearray((folder / "surrogate.pt").read_bytes())
    data[-100] ^= 0xFF
    (folder / "surrogate.pt").write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256.*damaged or was replaced"):
        load_pretrained("demo", root=tmp_path)
    (folder / "manifest.json").write_text("{oops")
    with pytest.raises(InputError, match="not a pretrained-bundle manifest"):
        load_pretrained("demo", root=tmp_path)


def test_unknown_names_and_bad_input(export, heldout, tmp_path):
    with pytest.raises(InputError, match="no pretrained surrogate 'nope'"):
        load_pretrained("nope", root=tmp_path)
    with pytest.raises(InputError, match="T > n_steps"):
        package_pretrained(export, "demo", heldout[:3], 12.0, 3, dest=tmp_path)
    with pytest.raises(InputError, match="plain folder name"):
        package_pretrained(export, "../x", heldout, 12.0, 2, dest=tmp_path)
    assert main(["package", "--export", str(tmp_path / "missing.pt"), "--shards",
                 str(tmp_path), "--name", "x", "--dest", str(tmp_path)]) == 2


@pytest.mark.parametrize("name", available_pretrained())
def test_shipped_bundle_reproduces_its_stored_heldout_scores(name, one_thread):
    """Each shipped model, re-scored on its committed held-out sample, gives its manifest's
    numbers (to float32 round-off across platforms)."""
    info = pretrained_info(name)
    model = load_pretrained(name)
    trajectory, hours = load_heldout(name)
    scores = score_heldout(model, trajectory, hours, info["heldout"]["n_steps"])
    assert scores.keys() == info["heldout"]["rmse_K"].keys()
    for lead, value in info["heldout"]["rmse_K"].items():
        assert scores[lead] == pytest.approx(value, rel=1e-5), lead
    assert info["parameters"] == sum(p.numel() for p in model.vit.parameters())
