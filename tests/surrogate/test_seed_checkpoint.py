"""Loading the paper code's (jqyin/sqg_vit) Lightning checkpoints into the kit's ViT.

The seed-layout state dicts and the seed's forward pass are written here from the seed's
modules (src/sqg/model/arch.py: SQG_ViT with timm PatchEmbed and Block,
nn.MultiheadAttention variable aggregation, a learned pos_embed, a Linear lead-time
embedding, an MLP head and an ``nhwpqc->nchpwq`` unpatchify), independently of
:mod:`turbda_kit.surrogate.seed_checkpoint`.
"""

from __future__ import annotations

import sys
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from turbda_kit.errors import InputError
from turbda_kit.surrogate.config import ViTConfig, load_vit_config
from turbda_kit.surrogate.seed_checkpoint import (
    LIGHTNING_DICT_NAMES,
    load_seed_checkpoint,
    read_seed_state_dict,
    seed_to_kit_state_dict,
)
from turbda_kit.surrogate.vit import ViT

SEED_STYLE = dict(pos_embed="learned", lead_time_convention="seed", lead_time_scale_hours=12.0)
CONFIGS = {
    "two_vars_patch_2": ViTConfig(img_size=8, patch_size=2, embed_dim=16, depth=2, num_heads=4,
                                  **SEED_STYLE),
    "three_vars_patch_4_linear_head": ViTConfig(
        img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=3, decoder_depth=0,
        mlp_ratio=3.5, variables=("a", "b", "c"), **SEED_STYLE),
}


def seed_layout_state(cfg: ViTConfig, seed: int = 0, parallel_patch_embed: bool = False,
                      meta: bool = False) -> OrderedDict[str, torch.Tensor]:
    """Random weights in the seed's SQG_ViT names and shapes (module registration order);
    with ``meta``, shapes only (meta tensors, nothing allocated)."""
    gen = torch.Generator().manual_seed(seed)
    d, v, p, hidden = cfg.embed_dim, cfg.n_vars, cfg.patch_size, int(cfg.embed_dim * cfg.mlp_ratio)

    def rand(*shape, scale=0.3, offset=0.0):
        if meta:
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=gen) * scale + offset

    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    if parallel_patch_embed:     # ParallelVarPatchEmbed
        state["token_embeds.proj_weights"] = rand(v, d, 1, p, p)
        state["token_embeds.proj_biases"] = rand(v, d)
    else:                        # ModuleList of timm PatchEmbed(img, p, in_chans=1, D)
        for i in range(v):
            state[f"token_embeds.{i}.proj.weight"] = rand(d, 1, p, p)
            state[f"token_embeds.{i}.proj.bias"] = rand(d)
    state["var_embed"] = rand(1, v, d)
    state["var_query"] = rand(1, 1, d)
    state["var_agg.in_proj_weight"] = rand(3 * d, d)
    state["var_agg.in_proj_bias"] = rand(3 * d)
    state["var_agg.out_proj.weight"] = rand(d, d)
    state["var_agg.out_proj.bias"] = rand(d)
    state["pos_embed"] = rand(1, cfg.n_tokens, d)
    state["lead_time_embed.weight"] = rand(d, 1, scale=3.0)
    state["lead_time_embed.bias"] = rand(d)
    for k in range(cfg.depth):
        b = f"blocks.{k}."
        state[b + "norm1.weight"] = rand(d, scale=0.1, offset=1.0)
        state[b + "norm1.bias"] = rand(d, scale=0.1)
        state[b + "attn.qkv.weight"] = rand(3 * d, d)
        state[b + "attn.qkv.bias"] = rand(3 * d)
        state[b + "attn.proj.weight"] = rand(d, d)
        state[b + "attn.proj.bias"] = rand(d)
        state[b + "norm2.weight"] = rand(d, scale=0.1, offset=1.0)
        state[b + "norm2.bias"] = rand(d, scale=0.1)
        state[b + "mlp.fc1.weight"] = rand(hidden, d)
        state[b + "mlp.fc1.bias"] = rand(hidden)
        state[b + "mlp.fc2.weight"] = rand(d, hidden)
        state[b + "mlp.fc2.bias"] = rand(d)
    state["norm.weight"] = rand(d, scale=0.1, offset=1.0)
    state["norm.bias"] = rand(d, scale=0.1)
    for j in range(cfg.decoder_depth):
        state[f"head.{2 * j}.weight"] = rand(d, d)
        state[f"head.{2 * j}.bias"] = rand(d)
    state[f"head.{2 * cfg.decoder_depth}.weight"] = rand(v * p * p, d)
    state[f"head.{2 * cfg.decoder_depth}.bias"] = rand(v * p * p)
    return state


def seed_forward(state, cfg: ViTConfig, fields: torch.Tensor, lead_times: torch.Tensor):
    """The seed's SQG_ViT.forward (eval mode) on its own state dict, with plain torch.

    ``lead_times`` are what the seed's data loader feeds: data steps / 100.
    """
    b, v, n, _ = fields.shape
    d, p, heads = cfg.embed_dim, cfg.patch_size, cfg.num_heads
    h = n // p
    if "token_embeds.proj_weights" in state:
        weight = state["token_embeds.proj_weights"].flatten(0, 1)
        x = F.conv2d(fields, weight, state["token_embeds.proj_biases"].flatten(), stride=p,
                     groups=v)
        x = x.reshape(b, v, d, h * h).transpose(2, 3)
    else:
        x = torch.stack([F.conv2d(fields[:, i:i + 1], state[f"token_embeds.{i}.proj.weight"],
                                  state[f"token_embeds.{i}.proj.bias"], stride=p)
                         .flatten(2).transpose(1, 2) for i in range(v)], dim=1)   # B, V, L, D
    x = x + state["var_embed"].unsqueeze(2)
    # aggregate_variables: one nn.MultiheadAttention query per patch over the V tokens.
    agg = nn.MultiheadAttention(d, heads, batch_first=True).to(fields.dtype)
    agg.load_state_dict({k[len("var_agg."):]: t for k, t in state.items()
                         if k.startswith("var_agg.")})
    length = x.shape[2]
    x = torch.einsum("bvld->blvd", x).flatten(0, 1)
    query = state["var_query"].repeat_interleave(x.shape[0], dim=0)
    x, _ = agg(query, x, x)
    x = x.squeeze(1).unflatten(0, (b, length))
    x = x + state["pos_embed"]
    x = x + F.linear(lead_times.unsqueeze(-1), state["lead_time_embed.weight"],
                     state["lead_time_embed.bias"]).unsqueeze(1)
    for k in range(cfg.depth):
        s = {name[len(f"blocks.{k}."):]: t for name, t in state.items()
             if name.startswith(f"blocks.{k}.")}
        y = F.layer_norm(x, (d,), s["norm1.weight"], s["norm1.bias"])
        qkv = F.linear(y, s["attn.qkv.weight"], s["attn.qkv.bias"])
        q, key, val = qkv.reshape(b, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ key.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1)
        y = (weights @ val).transpose(1, 2).reshape(b, length, d)
        x = x + F.linear(y, s["attn.proj.weight"], s["attn.proj.bias"])
        y = F.layer_norm(x, (d,), s["norm2.weight"], s["norm2.bias"])
        y = F.linear(F.gelu(F.linear(y, s["mlp.fc1.weight"], s["mlp.fc1.bias"])),
                     s["mlp.fc2.weight"], s["mlp.fc2.bias"])
        x = x + y
    x = F.layer_norm(x, (d,), state["norm.weight"], state["norm.bias"])
    for j in range(cfg.decoder_depth):
        x = F.gelu(F.linear(x, state[f"head.{2 * j}.weight"], state[f"head.{2 * j}.bias"]))
    out = 2 * cfg.decoder_depth
    x = F.linear(x, state[f"head.{out}.weight"], state[f"head.{out}.bias"])
    # SQG_ViT.unpatchify: values per patch ordered (py, px, variable).
    x = torch.einsum("nhwpqc->nchpwq", x.reshape(b, h, h, p, p, v))
    return x.reshape(b, v, h * p, h * p)


def lightning_checkpoint(state, hyper_parameters=None) -> dict:
    """What a Lightning ModelCheckpoint writes for the seed's PLModule (model as ``net``)."""
    first = next(iter(state.values()))
    return {
        "epoch": 41,
        "global_step": 12_000,
        "pytorch-lightning_version": "2.1.3",
        "state_dict": OrderedDict((f"net.{k}", t) for k, t in state.items()),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {
            "total": {"ready": 42, "completed": 41}, "current": {"ready": 42, "completed": 41}},
            "epoch_loop.state_dict": {"_batches_that_stepped": 12_000}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'train/loss', 'mode': 'min', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}": {
                "monitor": "train/loss", "best_model_score": torch.tensor(0.0123),
                "best_model_path": "exps/checkpoints/epoch_041.ckpt",
                "best_k_models": {"exps/checkpoints/epoch_041.ckpt": torch.tensor(0.0123)},
                "dirpath": "exps/checkpoints"},
            "EarlyStopping{'monitor': 'train/loss', 'mode': 'min'}": {
                "wait_count": 0, "stopped_epoch": 0, "best_score": torch.tensor(0.0123),
                "patience": 5}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(12_000.0),
                                            "exp_avg": torch.zeros_like(first),
                                            "exp_avg_sq": torch.zeros_like(first)}},
                              "param_groups": [{"lr": 9.85e-5, "betas": (0.9, 0.99),
                                                "weight_decay": 1e-4, "params": [0]}]}],
        "lr_schedulers": [{"warmup_epochs": 100, "max_epochs": 100_000, "base_lrs": [9.85e-5],
                           "last_epoch": 41, "_last_lr": [9.85e-5]}],
        "hparams_name": "kwargs",
        "hyper_parameters": hyper_parameters if hyper_parameters is not None else {
            "pretrained_path": "", "lr": 9.85e-5, "beta_1": 0.9, "beta_2": 0.99},
    }


def _fields(cfg: ViTConfig, batch: int = 3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(11)
    return torch.randn(batch, cfg.n_vars, cfg.img_size, cfg.img_size, generator=gen, dtype=dtype)


@pytest.mark.parametrize("parallel", [False, True], ids=["per_variable", "parallel"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loaded_model_computes_the_seeds_forward(tmp_path, name, parallel):
    cfg = CONFIGS[name]
    state = seed_layout_state(cfg, parallel_patch_embed=parallel)
    path = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint(state), path)
    model = load_seed_checkpoint(path, cfg)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    # float64 on both sides, so any layout error shows far above rounding.
    fields = _fields(cfg)
    hours = torch.tensor([12.0, 24.0, 36.0], dtype=torch.float64)
    # The seed's lead input: hrs_each_step * predict_range / 100, here in float64.
    seed_leads = torch.tensor([1, 2, 3], dtype=torch.float64) / 100
    seed_state = {k: t.double() for k, t in state.items()}
    expected = seed_forward(seed_state, cfg, fields, seed_leads)
    got = model.double()(fields, hours)
    assert got.abs().max() > 0.1                        # not a vacuous comparison
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # And in float32 as the model is loaded (the seed's own float32 forward).
    model.float()
    expected32 = seed_forward(state, cfg, fields.float(), torch.tensor([1, 2, 3]) / 100)
    torch.testing.assert_close(model(fields.float(), hours.float()), expected32,
                               rtol=1e-4, atol=1e-5)


def test_head_rows_follow_the_seeds_unpatchify_by_hand():
    # Output layer: zero weights, bias = its own row index. The seed writes value row
    # (py * p + px) * V + v at variable v, pixel (py, px) of every patch.
    cfg = CONFIGS["three_vars_patch_4_linear_head"]
    state = seed_layout_state(cfg)
    out = f"head.{2 * cfg.decoder_depth}."
    state[out + "weight"].zero_()
    state[out + "bias"] = torch.arange(cfg.n_vars * cfg.patch_size**2, dtype=torch.float32)
    model = ViT(cfg).eval()
    model.load_state_dict(seed_to_kit_state_dict(state, cfg))
    forecast = model(_fields(cfg, 1, torch.float32), 12.0)[0]
    p, v = cfg.patch_size, cfg.n_vars
    for var in range(v):
        for y in (0, 5, 15):
            for x in (0, 2, 7, 13):
                assert forecast[var, y, x] == ((y % p) * p + x % p) * v + var
    # The patch embedding of variable 1 is the seed's per-variable convolution.
    fields = _fields(cfg, 2, torch.float32)
    embedded = model.patch_embed(fields).reshape(2, v, cfg.embed_dim, -1)[:, 1]
    seed_conv = F.conv2d(fields[:, 1:2], state["token_embeds.1.proj.weight"],
                         state["token_embeds.1.proj.bias"], stride=p).flatten(2)
    torch.testing.assert_close(embedded, seed_conv)


def test_round_trip_through_the_kits_state_dict(tmp_path):
    cfg = CONFIGS["two_vars_patch_2"]
    path = tmp_path / "seed.ckpt"
    torch.save(lightning_checkpoint(seed_layout_state(cfg, seed=3)), path)
    model = load_seed_checkpoint(path, cfg)
    torch.save(model.state_dict(), tmp_path / "kit.pt")
    reloaded = ViT(cfg)
    reloaded.load_state_dict(torch.load(tmp_path / "kit.pt", weights_only=True))
    fields = _fields(cfg, 2, torch.float32)
    assert torch.equal(reloaded.eval()(fields, 12.0), model(fields, 12.0))


def test_bare_state_dicts_with_or_without_prefix_load(tmp_path):
    cfg = CONFIGS["two_vars_patch_2"]
    state = seed_layout_state(cfg)
    torch.save(state, tmp_path / "bare.pt")
    torch.save({f"net.{k}": t for k, t in state.items()}, tmp_path / "prefixed.pt")
    fields = _fields(cfg, 1, torch.float32)
    first = load_seed_checkpoint(tmp_path / "bare.pt", cfg)(fields, 12.0)
    assert torch.equal(first, load_seed_checkpoint(tmp_path / "prefixed.pt", cfg)(fields, 12.0))


def test_half_precision_weights_load_as_float32(tmp_path):
    cfg = CONFIGS["two_vars_patch_2"]
    state = {k: t.half() for k, t in seed_layout_state(cfg).items()}
    torch.save(lightning_checkpoint(state), tmp_path / "fp16.ckpt")
    model = load_seed_checkpoint(tmp_path / "fp16.ckpt", cfg)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.pos_embed.detach(), state["pos_embed"].float())


def test_released_coupled_layout_fits_its_preset_on_meta():
    # The released checkpoint (configs/sqg_64_coupled.yaml: patch 2, 1024 wide, 8 blocks,
    # mlp_ratio 4) maps key for key and shape for shape onto the preset: 108.1M parameters.
    cfg = load_vit_config("sqg_64_coupled")
    state = seed_layout_state(cfg, meta=True)
    with torch.device("meta"):
        model = ViT(cfg)
    mapped = seed_to_kit_state_dict(state, cfg)
    kit = model.state_dict()
    assert set(mapped) == set(kit)
    assert all(mapped[k].shape == kit[k].shape for k in kit)
    assert sum(t.numel() for t in state.values()) == 108_141_576


# --- strictness -----------------------------------------------------------------------------

def test_unmapped_missing_and_misshapen_keys_are_all_listed():
    cfg = CONFIGS["two_vars_patch_2"]
    state = seed_layout_state(cfg)
    del state["blocks.1.mlp.fc2.bias"]
    state["net_extra.weight"] = torch.zeros(3)
    state["pos_embed"] = torch.zeros(1, 4, cfg.embed_dim)
    with pytest.raises(InputError) as info:
        seed_to_kit_state_dict(state, cfg)
    message = str(info.value)
    for words in ("map to nothing", "net_extra.weight", "missing", "blocks.1.mlp.fc2.bias",
                  "shapes differ", "pos_embed (1, 4, 16) (config expects (1, 16, 16))"):
        assert words in message


def test_a_checkpoint_of_another_architecture_names_what_it_looks_like(tmp_path):
    trained = CONFIGS["two_vars_patch_2"]
    path = tmp_path / "seed.ckpt"
    torch.save(lightning_checkpoint(seed_layout_state(trained)), path)
    with pytest.raises(InputError) as info:
        load_seed_checkpoint(path, trained.replace(patch_size=4, depth=3))
    message = str(info.value)
    assert "patch_size=2" in message and "depth=2" in message and "img_size=8" in message


@pytest.mark.parametrize("changes, word", [
    (dict(pos_embed="sincos"), "pos_embed"),
    (dict(lead_time_convention="kit"), "lead_time_convention"),
    (dict(residual=True), "residual"),
])
def test_configs_that_cannot_compute_the_seeds_function_are_refused(changes, word):
    cfg = CONFIGS["two_vars_patch_2"]
    with pytest.raises(InputError, match=word):
        seed_to_kit_state_dict(seed_layout_state(cfg), cfg.replace(**changes))


def test_bad_paths_and_files(tmp_path):
    cfg = CONFIGS["two_vars_patch_2"]
    with pytest.raises(InputError, match="no seed checkpoint"):
        load_seed_checkpoint(tmp_path / "absent.ckpt", cfg)
    with pytest.raises(InputError, match="directory"):
        load_seed_checkpoint(tmp_path, cfg)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a readable torch checkpoint"):
        load_seed_checkpoint(tmp_path / "text.ckpt", cfg)
    torch.save({"epoch": 3}, tmp_path / "no_state.ckpt")
    with pytest.raises(InputError, match=r"no state dict of tensors \(top-level keys \['epoch'\]"):
        load_seed_checkpoint(tmp_path / "no_state.ckpt", cfg)
    with pytest.raises(InputError, match="ViTConfig or a preset"):
        load_seed_checkpoint(tmp_path / "no_state.ckpt", 3)


# --- weights-only reading of Lightning's containers ----------------------------------------

def _fake_module(monkeypatch, dotted: str) -> types.ModuleType:
    """Register ``dotted`` and its parents in sys.modules so pickle can name a class there."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    return sys.modules[dotted]


@pytest.mark.parametrize("qualified", LIGHTNING_DICT_NAMES)
def test_lightning_attribute_dict_hyperparameters_read_as_plain_dicts(tmp_path, monkeypatch,
                                                                       qualified):
    module_name, class_name = qualified.rsplit(".", 1)
    module = _fake_module(monkeypatch, module_name)
    attribute_dict = type(class_name, (dict,), {"__module__": module_name})
    setattr(module, class_name, attribute_dict)
    cfg = CONFIGS["two_vars_patch_2"]
    state = seed_layout_state(cfg)
    hparams = attribute_dict(lr=9.85e-5, pretrained_path="", betas=[0.9, 0.99])
    path = tmp_path / "old_lightning.ckpt"
    torch.save(lightning_checkpoint(state, hyper_parameters=hparams), path)
    # Lightning is absent when the kit reads it; torch's own loader refuses the file.
    for i in range(1, len(module_name.split(".")) + 1):
        monkeypatch.delitem(sys.modules, ".".join(module_name.split(".")[:i]))
    with pytest.raises(Exception, match="AttributeDict"):
        torch.load(path, weights_only=True)
    loaded = read_seed_state_dict(path)
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # The allow-list is scoped to the read: torch's default refuses the name again after.
    with pytest.raises(Exception, match="AttributeDict"):
        torch.load(path, weights_only=True)


def test_other_objects_are_refused_without_running_them(tmp_path, monkeypatch):
    module = _fake_module(monkeypatch, "seedlib.callbacks")
    calls = []

    def make_thing(*args):
        calls.append(args)
        return "built"

    class Thing:
        def __reduce__(self):
            return (make_thing, ("payload",))

    make_thing.__module__ = Thing.__module__ = "seedlib.callbacks"
    make_thing.__qualname__ = "make_thing"
    module.make_thing, module.Thing = make_thing, Thing
    cfg = CONFIGS["two_vars_patch_2"]
    checkpoint = lightning_checkpoint(seed_layout_state(cfg))
    checkpoint["callbacks"]["Custom"] = Thing()
    path = tmp_path / "custom.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(InputError) as info:
        read_seed_state_dict(path)
    message = str(info.value)
    assert "seedlib.callbacks.make_thing" in message
    assert "weights_only=False" in message and "state_dict" in message
    assert calls == []
