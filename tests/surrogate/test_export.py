"""The surrogate export: round trips, provenance, and files that must be refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from turbda_kit.data.normaliser import Normaliser
from turbda_kit.errors import InputError
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.export import (
    EXPORT_FORMAT,
    export_surrogate,
    load_surrogate,
    read_surrogate,
    save_surrogate,
)
from turbda_kit.surrogate.vit import ViT

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from payloads import Payload, payload_bytes  # noqa: E402

NORMALISER = Normaliser(("sqg_0", "sqg_10000"), np.array([290.0, 285.0]), np.array([4.0, 2.0]))


@pytest.fixture(scope="module")
def vit():
    return ViT(load_vit_config("tiny", img_size=16), generator=torch.Generator().manual_seed(0))


def test_an_export_holds_weights_config_normaliser_lead_and_provenance(vit, tmp_path):
    path = export_surrogate(vit, tmp_path / "surrogate.pt", normaliser=NORMALISER,
                            lead_time_hours=12.0, hours_per_step=6.0,
                            metadata={"data_root": "shards"})
    export = read_surrogate(path)
    for name, value in vit.state_dict().items():
        torch.testing.assert_close(export.model.state_dict()[name], value, rtol=0, atol=0)
    assert export.model.config == vit.config and not export.model.training
    assert export.normaliser.variables == NORMALISER.variables
    np.testing.assert_array_equal(export.normaliser.mean, NORMALISER.mean)
    np.testing.assert_array_equal(export.normaliser.std, NORMALISER.std)
    assert export.lead_time_hours == 12.0 and export.metadata["hours_per_step"] == 6.0
    assert export.metadata["data_root"] == "shards"
    assert {"turbda_kit_version", "git", "torch", "created_utc"} <= set(export.provenance)
    # Plain data only: the file loads weights-only without any allow-list.
    assert torch.load(path, weights_only=True)["format"] == EXPORT_FORMAT


def test_exporting_an_earlier_export_keeps_its_metadata(vit, tmp_path):
    first = save_surrogate(vit.config, vit.state_dict(), tmp_path / "vit_best.pt",
                           {"step": 40, "val_loss": 0.25})
    path = export_surrogate(first, tmp_path / "surrogate.pt", normaliser=NORMALISER,
                            lead_time_hours=6.0)
    model, meta = load_surrogate(path)
    assert meta["step"] == 40 and meta["source_export"] == "vit_best.pt"
    assert meta["lead_time_hours"] == 6.0


def test_bad_exports_are_refused_when_written(vit, tmp_path):
    with pytest.raises(InputError, match="differ from the model"):
        export_surrogate(vit, tmp_path / "a.pt", lead_time_hours=12.0,
                         normaliser=Normaliser(("u", "v"), NORMALISER.mean, NORMALISER.std))
    with pytest.raises(InputError, match="lead_time_hours"):
        export_surrogate(vit, tmp_path / "b.pt", normaliser=NORMALISER, lead_time_hours=0)
    with pytest.raises(InputError, match="JSON-like"):
        save_surrogate(vit.config, vit.state_dict(), tmp_path / "c.pt", {(1, 2): "tuple key"})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_export_names_the_file_what_it_should_be_and_the_fix(vit, tmp_path, damage):
    path = export_surrogate(vit, tmp_path / "surrogate.pt", normaliser=NORMALISER,
                            lead_time_hours=12.0)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "empty": b"",
                      "garbage": bytes(range(256)) * 8}[damage])
    with pytest.raises(InputError) as info:
        read_surrogate(path)
    message = str(info.value)
    assert str(path) in message
    assert "ViT surrogate export" in message                 # what it was expected to be
    assert "export it again" in message                      # how to fix it
    assert "weights_only" not in message


def test_a_malicious_export_is_refused_without_advice_to_unlock_it(tmp_path):
    marker = tmp_path / "ran"
    whole = tmp_path / "whole.pt"
    whole.write_bytes(payload_bytes(marker))
    inside = tmp_path / "inside.pt"
    torch.save({"format": EXPORT_FORMAT, "config": {}, "state_dict": {},
                "metadata": Payload(marker)}, inside)
    for path in (whole, inside):
        with pytest.raises(InputError) as info:
            load_surrogate(path)
        message = str(info.value)
        assert str(path) in message and "nothing in it ran" in message
        assert "weights_only" not in message
        assert not marker.exists()


def test_files_that_are_not_exports_are_refused(vit, tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a ViT surrogate export"):
        load_surrogate(tmp_path / "other.pt")
    state = dict(vit.state_dict())
    state.pop("head.0.weight")
    save_surrogate(vit.config, state, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="do not fit the stored config"):
        load_surrogate(tmp_path / "partial.pt")
    with pytest.raises(InputError, match="does not exist"):
        load_surrogate(tmp_path / "missing.pt")
