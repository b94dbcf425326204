"""The ViT surrogate: shapes, parameter counts, FLOPs, validation, determinism, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from turbda_kit.errors import InputError
from turbda_kit.surrogate.config import ViTConfig, available_vit_configs, load_vit_config
from turbda_kit.surrogate.flops import (
    achieved_tflops,
    count_parameters,
    forward_flops,
    parameter_breakdown,
    training_flops,
)
from turbda_kit.surrogate.seed_checkpoint import seed_parameter_shapes
from turbda_kit.surrogate.vit import (
    ViT,
    lead_time_input,
    patchify,
    sincos_pos_embed_2d,
    unpatchify,
)

SMALL_CONFIGS = {
    "tiny": dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4),
    "one_var_linear_head": dict(img_size=16, patch_size=2, embed_dim=32, depth=1, num_heads=2,
                                variables=("theta",), decoder_depth=0),
    "three_vars_odd_mlp": dict(img_size=24, patch_size=8, embed_dim=48, depth=3, num_heads=3,
                               variables=("a", "b", "c"), mlp_ratio=3.5, decoder_depth=1),
    "patch_one": dict(img_size=8, patch_size=1, embed_dim=16, depth=2, num_heads=4),
    "seed_style": dict(img_size=16, patch_size=2, embed_dim=32, depth=2, num_heads=4,
                       pos_embed="learned", lead_time_convention="seed"),
}

# The paper code's architectures (github jqyin/sqg_vit, configs/<name>.yaml, model.net
# init_args), transcribed by hand. Every one also has variables [sqg_0, sqg_10000],
# decoder_depth 2, drop_rate 0.1, drop_path 0.1, and (SQG_ViT in src/sqg/model/arch.py) a
# learned positional embedding and timm Blocks with qkv_bias and attn_drop 0.
SEED_ARCHITECTURES = {
    "sqg_64": dict(img_size=64, patch_size=4, embed_dim=1024, depth=12, num_heads=8,
                   mlp_ratio=4),
    "sqg_64_coupled": dict(img_size=64, patch_size=2, embed_dim=1024, depth=8, num_heads=16,
                           mlp_ratio=4),
    "sqg_128": dict(img_size=128, patch_size=4, embed_dim=2048, depth=24, num_heads=16,
                    mlp_ratio=4),
    "sqg_256": dict(img_size=256, patch_size=4, embed_dim=2048, depth=48, num_heads=8,
                    mlp_ratio=4),
}


def seed_parameter_count(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                         n_vars=2, decoder_depth=2):
    """Parameters of the seed's SQG_ViT, module by module (its arch.py, timm and torch).

    num_heads changes no shape; it is an argument only to mirror the config.
    """
    d, p, v = embed_dim, patch_size, n_vars
    tokens = (img_size // p) ** 2
    hidden = int(d * mlp_ratio)                   # timm Mlp: int(dim * mlp_ratio)
    token_embeds = v * (d * p * p + d)            # V timm PatchEmbed: Conv2d(1, D, p, p) + bias
    var_embed = v * d                             # nn.Parameter (1, V, D)
    var_query = d                                 # nn.Parameter (1, 1, D)
    var_agg = 3 * d * d + 3 * d + d * d + d       # nn.MultiheadAttention: in_proj + out_proj
    pos_embed = tokens * d                        # nn.Parameter (1, L, D), learned
    lead_time_embed = d + d                       # nn.Linear(1, D)
    block = (2 * d                                # norm1
             + 3 * d * d + 3 * d                  # attn.qkv (qkv_bias=True)
             + d * d + d                          # attn.proj
             + 2 * d                              # norm2
             + d * hidden + hidden                # mlp.fc1
             + hidden * d + d)                    # mlp.fc2
    norm = 2 * d
    head = decoder_depth * (d * d + d) + d * v * p * p + v * p * p
    return (token_embeds + var_embed + var_query + var_agg + pos_embed + lead_time_embed
            + depth * block + norm + head)


# Exact counts, from seed_parameter_count on SEED_ARCHITECTURES (checked below) and equal to
# `python -m turbda_kit.surrogate.flops`. The kit's earlier presets differed: sqg_64 had a
# fixed positional embedding (157,527,072, -0.17%), sqg_64_coupled mlp_ratio 3.5 (98.7M,
# -8.7%) and sqg_256 patch 8 (4x fewer tokens, 4.9x fewer FLOPs per sample).
SEED_PARAMETERS = {
    "sqg_64": 157_789_216,
    "sqg_64_coupled": 108_141_576,
    "sqg_128": 1_236_023_328,
    "sqg_256": 2_450_913_312,
}


@pytest.fixture(params=sorted(SMALL_CONFIGS))
def small_config(request) -> ViTConfig:
    return ViTConfig(name=request.param, **SMALL_CONFIGS[request.param])


def _inputs(cfg: ViTConfig, batch: int, device="cpu", seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    fields = torch.randn(batch, cfg.n_vars, cfg.img_size, cfg.img_size, generator=gen)
    lead = torch.rand(batch, generator=gen) * 24.0
    return fields.to(device), lead.to(device)


def test_output_shape_dtype_and_device(small_config, device):
    model = ViT(small_config).to(device)
    fields, lead = _inputs(small_config, 3, device)
    out = model(fields, lead)
    assert out.shape == fields.shape
    assert out.dtype == fields.dtype and out.device == fields.device
    assert torch.isfinite(out).all()
    # A scalar lead time is broadcast to the batch.
    model.eval()
    torch.testing.assert_close(model(fields, 6.0), model(fields, torch.full((3,), 6.0,
                                                                           device=device)))


def test_analytic_parameter_count_equals_module(small_config):
    model = ViT(small_config)
    assert count_parameters(small_config) == sum(p.numel() for p in model.parameters())
    breakdown = parameter_breakdown(small_config)
    assert breakdown.blocks == sum(p.numel() for p in model.blocks.parameters())
    assert breakdown.head == sum(p.numel() for p in model.head.parameters())
    assert breakdown.var_agg == sum(p.numel() for p in model.var_agg.parameters())


@pytest.mark.parametrize("name", sorted(SEED_ARCHITECTURES))
def test_presets_are_the_seed_architectures(name):
    cfg = load_vit_config(name)
    for field, value in SEED_ARCHITECTURES[name].items():
        assert getattr(cfg, field) == value, (name, field)
    assert cfg.variables == ("sqg_0", "sqg_10000") and cfg.decoder_depth == 2
    assert (cfg.drop_rate, cfg.attn_drop_rate, cfg.drop_path_rate) == (0.1, 0.0, 0.1)
    assert cfg.pos_embed == "learned" and cfg.lead_time_convention == "seed"
    assert cfg.residual is False


@pytest.mark.parametrize("name", sorted(SEED_PARAMETERS))
def test_preset_parameter_counts_equal_the_seeds(name):
    expected = SEED_PARAMETERS[name]
    assert seed_parameter_count(**SEED_ARCHITECTURES[name]) == expected
    cfg = load_vit_config(name)
    assert count_parameters(cfg) == expected
    # The seed layout the checkpoint loader checks against has the same total.
    assert sum(math.prod(s) for s in seed_parameter_shapes(cfg).values()) == expected
    # And the module itself, built on the meta device (nothing allocated).
    with torch.device("meta"):
        model = ViT(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == expected


def test_sqg_256_has_the_seeds_tokens_and_flops():
    cfg = load_vit_config("sqg_256")
    assert cfg.n_tokens == 4096
    patch_8 = cfg.replace(patch_size=8)          # the kit's earlier choice
    assert patch_8.n_tokens * 4 == cfg.n_tokens
    assert forward_flops(cfg) / forward_flops(patch_8) == pytest.approx(4.91, abs=0.01)


def test_all_presets_load_and_validate():
    names = available_vit_configs()
    assert {"tiny", "sqg_64", "sqg_128", "sqg_256", "sqg_64_coupled"} <= set(names)
    for name in names:
        cfg = load_vit_config(name)
        assert cfg.name == name
        assert ViTConfig.from_dict(cfg.to_dict()) == cfg


def test_forward_flops_equal_torch_flop_counter(small_config):
    # MATH backend: attention decomposes into bmm, which the counter sees; batch 1 so the
    # once-per-forward query projection is per sample.
    model = ViT(small_config)
    fields, lead = _inputs(small_config, 1)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(fields, lead)
    assert counter.get_total_flops() == forward_flops(small_config)


def test_training_flops_are_three_forwards():
    cfg = ViTConfig(**SMALL_CONFIGS["tiny"])
    model = ViT(cfg)
    fields, lead = _inputs(cfg, 2)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(fields, lead).square().mean().backward()
    measured_per_sample = counter.get_total_flops() / 2
    # Not exactly 3: the first convolution needs no input gradient.
    assert measured_per_sample / forward_flops(cfg) == pytest.approx(3.0, rel=0.02)
    assert training_flops(cfg) == 3 * forward_flops(cfg)


def test_flops_scale_as_closed_form():
    base = ViTConfig(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4)
    deeper = base.replace(depth=4)
    d, length = base.embed_dim, base.n_tokens
    per_block = 24 * length * d * d + 4 * length * length * d  # mlp_ratio 4
    assert forward_flops(deeper) - forward_flops(base) == 2 * per_block
    # Per-device achieved TFLOPS: model FLOPs x throughput / devices.
    assert achieved_tflops(base, 1e6, 4) == pytest.approx(training_flops(base) * 1e6 / 4 / 1e12)


@pytest.mark.parametrize("changes, words", [
    (dict(img_size=30, patch_size=4), ["img_size=30", "patch_size=4"]),
    (dict(embed_dim=64, num_heads=3), ["num_heads=3", "embed_dim=64"]),
    (dict(drop_path_rate=1.0), ["drop_path_rate"]),
    (dict(depth=-1), ["depth"]),
    (dict(variables=("a", "a")), ["duplicates"]),
    (dict(variables=()), ["variables"]),
    (dict(mlp_ratio=0), ["mlp_ratio"]),
    (dict(patch_size=2.0), ["patch_size"]),
])
def test_bad_config_raises_input_error(changes, words):
    values = {**SMALL_CONFIGS["tiny"], **changes}
    with pytest.raises(InputError) as info:
        ViTConfig(**values)
    for word in words:
        assert word in str(info.value)


def test_bad_names_and_keys():
    with pytest.raises(InputError, match="no ViT config named"):
        load_vit_config("sqg_1024")
    with pytest.raises(InputError, match="unknown ViT config keys"):
        ViTConfig.from_dict({"img_size": 32, "patchsize": 4})
    with pytest.raises(InputError, match="expected"):
        cfg = ViTConfig(**SMALL_CONFIGS["tiny"])
        ViT(cfg)(torch.zeros(1, 2, 16, 16), 1.0)


def test_same_seed_same_model_and_output():
    cfg = ViTConfig(**SMALL_CONFIGS["tiny"], drop_rate=0.1, drop_path_rate=0.1)
    a = ViT(cfg, generator=torch.Generator().manual_seed(7))
    b = ViT(cfg, generator=torch.Generator().manual_seed(7))
    c = ViT(cfg, generator=torch.Generator().manual_seed(8))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.ndim > 1:
            assert not torch.equal(pa, pc), name
    fields, lead = _inputs(cfg, 2)
    a.eval(), b.eval()
    assert torch.equal(a(fields, lead), b(fields, lead))
    # Dropout/drop-path active only in training: eval is deterministic, train is not.
    a.train()
    torch.manual_seed(0)
    first = a(fields, lead)
    torch.manual_seed(0)
    assert torch.equal(first, a(fields, lead))
    assert not torch.equal(first, a(fields, lead))


def test_batched_equals_looped():
    cfg = ViTConfig(**SMALL_CONFIGS["tiny"])
    model = ViT(cfg).eval()
    fields, lead = _inputs(cfg, 4)
    batched = model(fields, lead)
    looped = torch.cat([model(fields[i:i + 1], lead[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)


def test_gradient_reaches_every_parameter(small_config):
    model = ViT(small_config)
    fields, lead = _inputs(small_config, 2)
    model(fields, lead).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_same_gradients():
    cfg = ViTConfig(**SMALL_CONFIGS["tiny"])
    fields, lead = _inputs(cfg, 2)
    grads = []
    for checkpointing in (False, True):
        model = ViT(cfg)
        model.activation_checkpointing = checkpointing
        model(fields, lead).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)


def test_patchify_round_trip_and_layout():
    fields = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tokens = patchify(fields, 4)
    assert tokens.shape == (2, 4, 3 * 16)
    # Token 1 is the top-right patch; its first value is variable 0 at (row 0, col 4).
    assert tokens[0, 1, 0] == fields[0, 0, 0, 4]
    assert torch.equal(unpatchify(tokens, 3, 4), fields)


def test_sincos_positional_embedding():
    pos = sincos_pos_embed_2d(4, 16)
    assert pos.shape == (16, 16)
    assert pos.abs().max() <= 1.0
    # sin^2 + cos^2 = 1 per frequency and axis: each row has squared norm D/2.
    torch.testing.assert_close(pos.square().sum(1), torch.full((16,), 8.0))
    assert torch.unique(pos, dim=0).shape[0] == 16
    with pytest.raises(InputError):
        sincos_pos_embed_2d(4, 18)


# --- residual (increment-predicting) option ----------------------------------------------

def test_untrained_residual_model_is_exactly_persistence(small_config):
    cfg = small_config.replace(residual=True)
    model = ViT(cfg)
    fields, lead = _inputs(cfg, 3)
    for mode in (model.eval, model.train):
        mode()
        assert torch.equal(model(fields, lead), fields)
    # The zeroing comes after the draws: every other weight equals the plain model's.
    plain = dict(ViT(small_config).named_parameters())
    for name, param in model.named_parameters():
        if not name.startswith(f"head.{len(model.head) - 1}."):
            assert torch.equal(param, plain[name]), name


def test_residual_model_learns_and_gradients_flow():
    cfg = ViTConfig(**SMALL_CONFIGS["tiny"], residual=True)
    model = ViT(cfg)
    fields, lead = _inputs(cfg, 2)
    target = fields.roll(1, -1)
    last = f"head.{len(model.head) - 1}."
    loss0 = (model(fields, lead) - target).square().mean()
    loss0.backward()
    # At zero init only the output layer has a gradient (its input activations are nonzero) ...
    for name, param in model.named_parameters():
        if name.startswith(last):
            assert param.grad.abs().sum() > 0, name
    # ... and once it has moved, the gradient reaches every parameter.
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    optimiser.step()
    optimiser.zero_grad()
    loss1 = (model(fields, lead) - target).square().mean()
    loss1.backward()
    assert loss1 < loss0
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_residual_output_is_input_plus_plain_head():
    # Same weights in both models: residual output minus input == the plain model's output.
    cfg = ViTConfig(**SMALL_CONFIGS["tiny"])
    plain = ViT(cfg).eval()
    residual = ViT(cfg.replace(residual=True)).eval()
    residual.load_state_dict(plain.state_dict())
    fields, lead = _inputs(cfg, 2)
    torch.testing.assert_close(residual(fields, lead) - fields, plain(fields, lead))


def test_residual_flag_survives_export_and_load(tmp_path):
    from turbda_kit.surrogate.export import load_surrogate, save_surrogate

    cfg = ViTConfig(**SMALL_CONFIGS["tiny"], residual=True)
    model = ViT(cfg)
    with torch.no_grad():   # move off zero init so the round trip checks real weights
        model.head[-1].weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(3))
    path = save_surrogate(cfg, model.state_dict(), tmp_path / "vit.pt", {"step": 1})
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["residual"] is True
    loaded, meta = load_surrogate(path)
    assert loaded.config.residual and loaded.config == cfg and meta == {"step": 1}
    fields, lead = _inputs(cfg, 2)
    torch.testing.assert_close(loaded(fields, lead), model.eval()(fields, lead))
    # Exports written before the option existed (no "residual" key) load as non-residual.
    old = {**payload, "config": {k: v for k, v in payload["config"].items() if k != "residual"}}
    torch.save(old, tmp_path / "old.pt")
    assert load_surrogate(tmp_path / "old.pt")[0].config.residual is False


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_residual_must_be_a_bool(value):
    with pytest.raises(InputError, match="residual"):
        ViTConfig(**SMALL_CONFIGS["tiny"], residual=value)
    with pytest.raises(InputError, match="residual"):
        ViTConfig.from_dict({**SMALL_CONFIGS["tiny"], "residual": value})


def test_cpu_preset_is_residual_and_paper_presets_are_not():
    from turbda_kit.surrogate.training import load_train_config

    cpu = load_vit_config("sqg_64_cpu")
    assert cpu.residual is True and cpu.n_tokens == 256
    assert count_parameters(cpu) == 1_298_080
    assert load_train_config("sqg_64_cpu").strategy == "none"
    for name in ("tiny", "sqg_64", "sqg_64_coupled", "sqg_128", "sqg_256"):
        assert load_vit_config(name).residual is False, name


# --- learned positional embedding and the seed's lead-time convention ----------------------

def test_cpu_presets_keep_the_fixed_table_and_the_kits_lead_time():
    for name in ("tiny", "sqg_64_cpu"):
        cfg = load_vit_config(name)
        assert (cfg.pos_embed, cfg.lead_time_convention) == ("sincos", "kit"), name
        # A buffer, not a parameter: state dicts and exports keep their keys.
        assert "pos_embed" not in ViT(cfg).state_dict()
    defaults = ViTConfig()
    assert (defaults.pos_embed, defaults.lead_time_convention) == ("sincos", "kit")
    # Configs written before the options existed load with the old behaviour.
    old = {k: v for k, v in load_vit_config("tiny").to_dict().items()
           if k not in ("pos_embed", "lead_time_convention")}
    assert ViTConfig.from_dict(old) == load_vit_config("tiny")


def test_learned_pos_embed_starts_as_the_table_and_trains():
    cfg = ViTConfig(**SMALL_CONFIGS["tiny"])
    learned_cfg = cfg.replace(pos_embed="learned")
    fixed, learned = ViT(cfg), ViT(learned_cfg)
    assert isinstance(learned.pos_embed, torch.nn.Parameter)
    assert learned.pos_embed.shape == (1, cfg.n_tokens, cfg.embed_dim)
    assert torch.equal(learned.pos_embed.detach(), fixed.pos_embed)
    # No draws for the table: every other weight equals the fixed model's.
    fixed_params = dict(fixed.named_parameters())
    for name, param in learned.named_parameters():
        if name != "pos_embed":
            assert torch.equal(param, fixed_params[name]), name
    assert (count_parameters(learned_cfg) - count_parameters(cfg)
            == cfg.n_tokens * cfg.embed_dim == parameter_breakdown(learned_cfg).pos_embed)
    assert forward_flops(learned_cfg) == forward_flops(cfg)
    # So the untrained models compute the same function, bit for bit.
    fields, lead = _inputs(cfg, 2)
    assert torch.equal(learned.eval()(fields, lead), fixed.eval()(fields, lead))
    learned(fields, lead).square().mean().backward()
    assert learned.pos_embed.grad.abs().sum() > 0
    assert "pos_embed" in learned.state_dict()


def test_learned_pos_embed_on_the_meta_device():
    cfg = ViTConfig(**SMALL_CONFIGS["tiny"], pos_embed="learned")
    with torch.device("meta"):
        model = ViT(cfg)
    assert model.pos_embed.is_meta and model.pos_embed.shape == (1, 64, 64)


def test_seed_lead_time_is_data_steps_over_100():
    cfg = ViTConfig(**SMALL_CONFIGS["tiny"], lead_time_convention="seed")
    hours = torch.tensor([12.0, 24.0, 36.0])
    # The seed (src/sqg/model/dataset.py, Forecast): hrs_each_step * predict_ranges / 100
    # with hrs_each_step = 1 and integer predict_ranges (data steps, here of 12 h).
    seed = (1 * torch.tensor([1, 2, 3])) / 100
    assert torch.equal(lead_time_input(hours, cfg), seed)
    kit = cfg.replace(lead_time_convention="kit")
    assert torch.equal(lead_time_input(hours, kit), hours / 12.0)
    # Same weights: the seed convention with scale 12 h is the kit's with scale 1200 h (both
    # round the same real number).
    seed_model = ViT(cfg).eval()
    kit_model = ViT(kit.replace(lead_time_scale_hours=1200.0)).eval()
    kit_model.load_state_dict(seed_model.state_dict())
    fields, _ = _inputs(cfg, 3)
    assert torch.equal(seed_model(fields, hours), kit_model(fields, hours))
    assert not torch.equal(seed_model(fields, hours), ViT(kit).eval()(fields, hours))


@pytest.mark.parametrize("changes, words", [
    (dict(pos_embed="fixed"), ["pos_embed='fixed'", "sincos", "learned"]),
    (dict(pos_embed=None), ["pos_embed"]),
    (dict(lead_time_convention="hours"), ["lead_time_convention='hours'", "kit", "seed"]),
])
def test_bad_option_values_raise_input_error(changes, words):
    with pytest.raises(InputError) as info:
        ViTConfig(**SMALL_CONFIGS["tiny"], **changes)
    for word in words:
        assert word in str(info.value)
