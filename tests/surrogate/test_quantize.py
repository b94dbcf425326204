"""Weight-only int8 storage: the error bound, the round trip through an export, refusals."""

from __future__ import annotations

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.export import read_surrogate, save_surrogate
from turbda_kit.surrogate.quantize import (
    dequantize_int8,
    dequantize_state_dict,
    quantize_int8,
    quantize_state_dict,
)
from turbda_kit.surrogate.vit import ViT


def test_every_weight_is_within_half_its_group_scale():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=gen) * torch.logspace(-3, 1, 96)[:, None]
    weight[5] = 0.0                                             # an all-zero group
    codes, scale = quantize_int8(weight, 32)
    assert codes.dtype == torch.int8 and codes.shape == weight.shape
    assert scale.dtype == torch.float16 and scale.shape == (96 * 64 // 32,)
    back = dequantize_int8(codes, scale, 32)
    bound = scale.float().repeat_interleave(32).reshape(weight.shape) / 2
    assert ((back - weight).abs() <= bound * (1 + 1e-6) + 1e-12).all()
    assert torch.equal(back[5], torch.zeros(64))
    assert int(codes.abs().max()) == 127                      # the scale is max|w| / 127
    # relative error of a group is ~1/254 of its largest value, whatever the row's size
    rel = (back - weight).abs().amax(1) / weight.abs().amax(1).clamp_min(1e-30)
    assert float(rel[torch.arange(96) != 5].max()) < 1 / 254 * 1.01 + 2e-3


def test_small_tensors_stay_float32_and_the_dict_round_trips():
    state = {"big": torch.randn(128, 64), "bias": torch.randn(128), "odd": torch.randn(4097)}
    stored, entry = quantize_state_dict(state, group=32)
    assert stored["big"].dtype == torch.int8 and set(entry["scales"]) == {"big"}
    assert torch.equal(stored["bias"], state["bias"]) and stored["odd"].dtype == torch.float32
    back = dequantize_state_dict(stored, entry)
    assert torch.equal(back["bias"], state["bias"])
    assert float((back["big"] - state["big"]).abs().max()) <= float(
        entry["scales"]["big"].float().max()) / 2 * (1 + 1e-6)


def test_an_int8_export_loads_as_float32_and_is_four_times_smaller(tmp_path):
    vit = ViT(load_vit_config("tiny", img_size=16), generator=torch.Generator().manual_seed(0))
    full = save_surrogate(vit.config, vit.state_dict(), tmp_path / "f32.pt")
    small = save_surrogate(vit.config, vit.state_dict(), tmp_path / "i8.pt", weights="int8")
    assert torch.load(small, weights_only=True)["int8"]["group"] == 32
    model = read_surrogate(small).model
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lead = torch.full((2,), 12.0)
        exact, approx = vit.eval()(x, lead), model(x, lead)
    assert model.state_dict()["head.0.weight"].dtype == torch.float32
    assert 0 < float((approx - exact).abs().max()) < 0.02 * float(exact.abs().max())
    big = sum(v.numel() for v in vit.state_dict().values() if v.numel() >= 4096)
    total = sum(v.numel() for v in vit.state_dict().values())
    # int8 + a float16 scale per 32 values instead of float32 for the large tensors
    expected_saving = big * (4 - 1 - 2 / 32)
    saving = full.stat().st_size - small.stat().st_size
    assert saving == pytest.approx(expected_saving, rel=0.05), (big, total)


def test_refusals():
    with pytest.raises(InputError, match="groups of 32"):
        quantize_int8(torch.zeros(40), 32)
    codes, scale = quantize_int8(torch.ones(64), 32)
    with pytest.raises(InputError, match="do not match"):
        dequantize_int8(codes, scale[:1], 32)
    with pytest.raises(InputError, match="lacks"):
        dequantize_state_dict({}, {"group": 32, "scales": {"w": scale}})
    with pytest.raises(InputError, match="malformed"):
        dequantize_state_dict({}, {"scales": {}})
    vit = ViT(load_vit_config("tiny", img_size=16))
    with pytest.raises(InputError, match="weights='int4'"):
        save_surrogate(vit.config, vit.state_dict(), "/nonexistent/x.pt", weights="int4")
