"""oneDNN matmuls for the ViT's linear layers: equal to BLAS to round-off, opt-in, safe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from turbda_kit.errors import InputError
from turbda_kit.surrogate.config import ViTConfig, load_vit_config
from turbda_kit.surrogate.matmul import (
    MIN_ONEDNN_MACS,
    Linear,
    onednn_applies,
    onednn_linear,
    set_matmul_backend,
)
from turbda_kit.surrogate.vit import ViT

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="torch built without oneDNN")

# Big enough for the oneDNN path (MIN_ONEDNN_MACS multiply-adds).
ROWS, IN, OUT = 128, 96, 192


def _tensors(shape=(2, ROWS // 2, IN), bias=True, seed=0, dtype=torch.float32, n_out=OUT):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype, requires_grad=True)
    w = torch.randn(n_out, shape[-1], generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(n_out, generator=gen, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


def _onednn_calls(fn, *args) -> int:
    """How many oneDNN products ``fn(*args)`` (forward and backward) ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(*args)
    return sum(event.name == "turbda_kit::onednn_linear" for event in prof.events())


def _grads(fn, x, w, b, grad_out):
    out = fn(x, w, b)
    out.backward(grad_out)
    grads = [t.grad.clone() for t in (x, w, b) if t is not None]
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("n_in, n_out", [(IN, OUT), (OUT, IN)], ids=["widening", "narrowing"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("layout", ["2d", "3d", "transposed_input"])
def test_onednn_linear_equals_f_linear_to_round_off(layout, bias, n_in, n_out):
    # Widening and narrowing layers take the two ways of the weight gradient.
    shape = {"2d": (ROWS, n_in), "3d": (2, ROWS // 2, n_in),
             "transposed_input": (n_in, ROWS)}[layout]
    x, w, b = _tensors(shape, bias, n_out=n_out)
    if layout == "transposed_input":                      # a non-contiguous (ROWS, n_in) view
        x = x.detach().t().requires_grad_(True)
        w = torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(4),
                        requires_grad=True)
    assert onednn_applies(x, w)
    grad_out = torch.randn(*x.shape[:-1], n_out, generator=torch.Generator().manual_seed(5))
    out, grads = _grads(onednn_linear, x, w, b, grad_out)
    ref_out, ref_grads = _grads(F.linear, x, w, b, grad_out)
    assert out.shape == ref_out.shape
    # float32 round-off of ~100-term sums of O(1) products: relative ~1e-6 of the scale.
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-4)
    for got, expected in zip(grads, ref_grads):
        assert got.shape == expected.shape and got.stride() == expected.stride()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    # Not vacuous: oneDNN ran the forward and both backward products.
    assert _onednn_calls(_grads, onednn_linear, x, w, b, grad_out) == 3
    assert _onednn_calls(_grads, F.linear, x, w, b, grad_out) == 0


@pytest.mark.parametrize("case", ["float64", "autocast", "meta", "small"])
def test_falls_back_to_f_linear_where_onednn_does_not_apply(case):
    if case == "float64":
        x, w, b = _tensors(dtype=torch.float64)
    elif case == "small":
        x, w, b = _tensors(shape=(2, IN))
        assert 2 * IN * OUT < MIN_ONEDNN_MACS
    else:
        x, w, b = _tensors()
    if case == "meta":
        x, w, b = (t.detach().to("meta") for t in (x, w, b))
        assert not onednn_applies(x, w)
        assert onednn_linear(x, w, b).shape == (2, ROWS // 2, OUT)
        return
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn_applies(x, w)
            out = onednn_linear(x, w, b)
            assert out.dtype == torch.bfloat16                  # autocast's own linear
            assert torch.equal(out, F.linear(x, w, b))
        return
    assert not onednn_applies(x, w)
    assert torch.equal(onednn_linear(x, w, b), F.linear(x, w, b))
    assert _onednn_calls(onednn_linear, x, w, b) == 0


def test_linear_layer_switch_keeps_parameters_and_state_dict():
    layer = Linear(IN, OUT)
    assert isinstance(layer, torch.nn.Linear) and layer.matmul_backend == "default"
    x = torch.randn(ROWS, IN, generator=torch.Generator().manual_seed(1))
    default = layer(x)
    assert torch.equal(default, F.linear(x, layer.weight, layer.bias))
    set_matmul_backend(layer, "onednn")
    assert "matmul_backend=onednn" in repr(layer)
    assert sorted(layer.state_dict()) == ["bias", "weight"]
    torch.testing.assert_close(layer(x), default, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="not one of"):
        set_matmul_backend(layer, "mkl")


def test_vit_with_onednn_matches_the_default_backend():
    cfg = ViTConfig(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                    drop_rate=0.0)
    default, fast = ViT(cfg), set_matmul_backend(ViT(cfg), "onednn")
    linears = [m for m in fast.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, Linear) and m.matmul_backend == "onednn"
                           for m in linears)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():                                 # O(1) activations everywhere
        for p in default.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    fast.load_state_dict(default.state_dict())
    fields = torch.randn(16, 2, 32, 32, generator=gen)     # 1024 token rows
    out_default, out_fast = default(fields, 12.0), fast(fields, 12.0)
    # qkv, proj, fc1, fc2 of both blocks, the head and the aggregation's k/v and output
    # projections are big enough; the query projection and the lead-time embedding not.
    assert _onednn_calls(fast, fields, 12.0) == 4 * 2 + 3 + 2
    torch.testing.assert_close(out_fast, out_default, rtol=1e-4, atol=1e-5)
    out_default.square().mean().backward()
    out_fast.square().mean().backward()
    for (name, p_default), p_fast in zip(default.named_parameters(), fast.parameters()):
        scale = p_default.grad.abs().max()
        torch.testing.assert_close(p_fast.grad, p_default.grad, rtol=1e-4, atol=1e-5 * scale,
                                   msg=name)


def test_compiled_block_with_onednn_is_traceable():
    # Tracing (not inductor's C++ build) is what the custom op is for: inductor's own
    # lowering of mkldnn._linear_pointwise needs frozen weights. aot_eager checks that the
    # op has a fake kernel and that the autograd function traces.
    cfg = load_vit_config("tiny")
    model = set_matmul_backend(ViT(cfg), "onednn")
    eager = model.blocks[0]
    compiled = torch.compile(eager, backend="aot_eager", fullgraph=True)
    tokens = torch.randn(4, cfg.n_tokens, cfg.embed_dim,
                         generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = compiled(tokens)
    torch.testing.assert_close(out, eager(tokens), rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert tokens.grad is not None and eager.attn.qkv.weight.grad is not None


@pytest.fixture
def one_rank_group():
    """A one-rank gloo process group for the wrappers (nothing launched)."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    yield
    dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:FSDP is switching to use `NO_SHARD`")
@pytest.mark.parametrize("wrapper", ["ddp", "fsdp", "fsdp2"])
def test_onednn_runs_inside_ddp_and_fsdp(one_rank_group, wrapper):
    # One rank only (FSDP1 then runs NO_SHARD; FSDP2 still gathers DTensor shards): that
    # the wrapped layers still take the oneDNN path and train like the default backend.
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from torch.nn.parallel import DistributedDataParallel

    from turbda_kit.surrogate.vit import Block

    cfg = load_vit_config("tiny", embed_dim=128)
    gen = torch.Generator().manual_seed(0)
    fields, targets = torch.randn(8, 2, 32, 32, generator=gen), torch.randn(8, 2, 32, 32,
                                                                             generator=gen)

    def losses(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        out = []
        for _ in range(2):
            loss = F.mse_loss(model(fields, 12.0), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            out.append(loss.detach())
        return torch.stack(out)

    model = set_matmul_backend(ViT(cfg), "onednn")
    if wrapper == "ddp":
        model = DistributedDataParallel(model)
    elif wrapper == "fsdp":
        model = FullyShardedDataParallel(model, use_orig_params=True,
                                         device_id=torch.device("cpu"),
                                         auto_wrap_policy=ModuleWrapPolicy({Block}))
    else:
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        wrapped = losses(model)
    assert any(event.name == "turbda_kit::onednn_linear" for event in prof.events())
    torch.testing.assert_close(wrapped, losses(ViT(cfg)), rtol=1e-5, atol=0)
