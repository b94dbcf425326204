"""The seed-style ViT baseline: the paper code's model, equal to the kit's ViT by mapping.

Three implementations meet here: :class:`SeedViT` (modules, as the seed builds them), the
kit's :class:`ViT` loaded through ``seed_to_kit_state_dict``, and the functional seed
forward of ``tests/surrogate/test_seed_checkpoint.py`` (written from the seed's code
independently of both).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.surrogate.test_seed_checkpoint import seed_forward
from turbda_kit.baselines import SeedViT, seed_mse, seed_vit_from_config
from turbda_kit.baselines.seed_vit import sincos_embed_1d
from turbda_kit.errors import InputError
from turbda_kit.surrogate.config import ViTConfig, load_vit_config
from turbda_kit.surrogate.flops import count_parameters
from turbda_kit.surrogate.seed_checkpoint import seed_parameter_shapes, seed_to_kit_state_dict
from turbda_kit.surrogate.vit import ViT, sincos_pos_embed_2d

SEED_STYLE = dict(pos_embed="learned", lead_time_convention="seed")
CONFIGS = {
    "two_vars_patch_2": ViTConfig(img_size=16, patch_size=2, embed_dim=32, depth=3, num_heads=4,
                                  **SEED_STYLE),
    "three_vars_patch_4_linear_head": ViTConfig(
        img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, decoder_depth=0,
        mlp_ratio=3.5, variables=("a", "b", "c"), **SEED_STYLE),
    "dropout": ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2,
                         drop_rate=0.2, drop_path_rate=0.3, **SEED_STYLE),
}
PAPER_PRESETS = ("sqg_64", "sqg_64_coupled", "sqg_128", "sqg_256")


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """O(0.3) weights everywhere (the seed's init is small enough to hide layout errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.3)


def _pair(cfg: ViTConfig, dtype=torch.float64, parallel: bool = False, fused: bool = True):
    seed = seed_vit_from_config(cfg, parallel_patch_embed=parallel, fused_attn=fused).to(dtype)
    _randomise(seed)
    kit = ViT(cfg).to(dtype)
    kit.load_state_dict(seed_to_kit_state_dict(seed.state_dict(), cfg))
    return seed, kit


def _inputs(cfg: ViTConfig, batch: int = 3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(7)
    fields = torch.randn(batch, cfg.n_vars, cfg.img_size, cfg.img_size, generator=gen,
                         dtype=dtype)
    steps = torch.arange(1, batch + 1, dtype=dtype)
    # The kit takes hours; the seed its loader's data steps / 100 (12-h steps here).
    return fields, steps * cfg.lead_time_scale_hours, steps / 100


@pytest.mark.parametrize("parallel", [False, True], ids=["per_variable", "parallel"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_has_the_seeds_names_and_shapes(name, parallel):
    cfg = CONFIGS[name]
    model = seed_vit_from_config(cfg, parallel_patch_embed=parallel)
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    assert shapes == seed_parameter_shapes(cfg, parallel_patch_embed=parallel)


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_parameter_count_equals_the_kits_at_the_paper_configs(name):
    cfg = load_vit_config(name)
    with torch.device("meta"):
        seed = seed_vit_from_config(cfg)
        kit = ViT(cfg)
    seed_count = sum(p.numel() for p in seed.parameters())
    assert seed_count == count_parameters(cfg) == sum(p.numel() for p in kit.parameters())
    assert {k: tuple(t.shape) for k, t in seed.state_dict().items()} == seed_parameter_shapes(cfg)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count_equals_the_kits_at_small_configs(name):
    cfg = CONFIGS[name]
    assert (sum(p.numel() for p in seed_vit_from_config(cfg).parameters())
            == count_parameters(cfg) == sum(p.numel() for p in ViT(cfg).parameters()))


@pytest.mark.parametrize("fused", [True, False], ids=["fused_attn", "explicit_attn"])
@pytest.mark.parametrize("parallel", [False, True], ids=["per_variable", "parallel"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mapped_kit_vit_computes_the_same_function(name, parallel, fused):
    cfg = CONFIGS[name]
    seed, kit = _pair(cfg, parallel=parallel, fused=fused)
    seed.eval()
    kit.eval()
    fields, hours, seed_leads = _inputs(cfg)
    expected = seed(fields, seed_leads)
    assert expected.abs().max() > 0.1                       # not a vacuous comparison
    # float64 on both sides: layout errors would show far above round-off.
    torch.testing.assert_close(kit(fields, hours), expected, rtol=1e-10, atol=1e-10)
    # And the functional seed forward written independently from the seed's code.
    state = {k: t.detach() for k, t in seed.state_dict().items()}
    torch.testing.assert_close(seed_forward(state, cfg, fields, seed_leads), expected,
                               rtol=1e-10, atol=1e-10)


def test_float32_outputs_agree_to_round_off():
    cfg = CONFIGS["two_vars_patch_2"]
    seed, kit = _pair(cfg, dtype=torch.float32)
    fields, hours, seed_leads = _inputs(cfg, dtype=torch.float32)
    expected = seed.eval()(fields, seed_leads)
    torch.testing.assert_close(kit.eval()(fields, hours), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["dropout", "two_vars_patch_2"])
def test_training_mode_gives_the_same_outputs_and_gradients(name):
    # Dropout and stochastic depth draw from torch's default generator in the same order in
    # both models (position dropout, then per block: projection dropout, drop path, MLP
    # dropouts, drop path), so the same generator state gives the same masks.
    cfg = CONFIGS[name]
    seed, kit = _pair(cfg)
    # The one documented difference: the seed's drop-path rates are float32 linspace
    # values (0.30000001...), the kit's Python floats (0.3); give the kit the seed's.
    for kit_block, seed_block in zip(kit.blocks, seed.blocks):
        kit_block.drop_path.drop_prob = getattr(seed_block.drop_path1, "drop_prob", 0.0)
    fields, hours, seed_leads = _inputs(cfg)
    target = torch.randn(fields.shape, generator=torch.Generator().manual_seed(3),
                         dtype=fields.dtype)
    losses = []
    for model, leads in ((seed, seed_leads), (kit, hours)):
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            out = model(fields, leads)
        loss = F.mse_loss(out, target)
        loss.backward()
        losses.append((out.detach(), loss.detach()))
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=1e-10, atol=1e-10)
    if cfg.drop_rate:
        # Some values were dropped: the training output is not the evaluation output.
        with torch.no_grad():
            assert not torch.allclose(seed.eval()(fields, seed_leads), losses[0][0])
    # Gradients map like the weights (the mapping only re-indexes).
    seed_grads = seed_to_kit_state_dict(
        {k: p.grad for k, p in seed.named_parameters()}, cfg)
    for key, param in kit.named_parameters():
        torch.testing.assert_close(param.grad, seed_grads[key], rtol=1e-9, atol=1e-12,
                                   msg=key)


def test_initialisation_follows_the_seed():
    cfg = CONFIGS["two_vars_patch_2"]
    model = seed_vit_from_config(cfg, generator=torch.Generator().manual_seed(1))
    table = sincos_pos_embed_2d(cfg.grid_patches, cfg.embed_dim)
    torch.testing.assert_close(model.pos_embed[0], table, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.var_embed[0].detach().numpy(),
                               sincos_embed_1d(np.arange(2), cfg.embed_dim), atol=0)
    assert torch.equal(model.var_embed[0, 0, : cfg.embed_dim // 2], torch.zeros(16))  # sin 0
    assert torch.equal(model.var_query, torch.zeros(1, 1, cfg.embed_dim))
    weight = model.blocks[0].attn.qkv.weight
    assert weight.std().item() == pytest.approx(0.02, rel=0.1) and weight.abs().max() < 0.2
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.zeros(3 * cfg.embed_dim))
    assert torch.equal(model.norm.weight, torch.ones(cfg.embed_dim))
    # Patch-embedding biases keep torch's default U(-1/p, 1/p) (fan-in p*p).
    bias = model.token_embeds[0].proj.bias
    assert bias.abs().max() <= 1 / cfg.patch_size and bias.abs().max() > 0.25 / cfg.patch_size
    # The aggregation's packed projection keeps its Xavier-uniform initialisation.
    bound = (6 / (4 * cfg.embed_dim)) ** 0.5
    assert model.var_agg.in_proj_weight.abs().max() <= bound
    # The seed's float32 linspace of drop-path rates (no DropPath where the rate is 0).
    rates = CONFIGS["dropout"]
    blocks = seed_vit_from_config(rates).blocks
    assert isinstance(blocks[0].drop_path1, torch.nn.Identity)
    assert blocks[2].drop_path2.drop_prob == torch.linspace(0, 0.3, 3)[2].item()


def test_weights_come_from_the_generator_only():
    cfg = CONFIGS["three_vars_patch_4_linear_head"]

    def build(seed):
        return seed_vit_from_config(cfg, generator=torch.Generator().manual_seed(seed))

    first, again, other = build(4).state_dict(), build(4).state_dict(), build(5).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["blocks.0.mlp.fc1.weight"], other["blocks.0.mlp.fc1.weight"])


def test_seed_mse_is_the_mean_squared_error():
    gen = torch.Generator().manual_seed(2)
    pred, target = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
    pred.requires_grad_(True)
    out = seed_mse(pred, target, ("a", "b", "c"))
    torch.testing.assert_close(out["loss"], F.mse_loss(pred, target))
    torch.testing.assert_close(out["b"], F.mse_loss(pred[:, 1], target[:, 1]))
    assert out["loss"].requires_grad and not out["a"].requires_grad


def test_bad_inputs_are_refused():
    cfg = CONFIGS["two_vars_patch_2"]
    model = seed_vit_from_config(cfg)
    with pytest.raises(InputError, match="expected"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1))
    with pytest.raises(InputError, match="ViTConfig"):
        seed_vit_from_config({"img_size": 16})
    with pytest.raises(InputError, match="divisible"):
        SeedViT(("a",), img_size=10, patch_size=4, embed_dim=8, num_heads=2)
    with pytest.raises(InputError, match="empty"):
        SeedViT((), img_size=8, patch_size=4, embed_dim=8, num_heads=2)
