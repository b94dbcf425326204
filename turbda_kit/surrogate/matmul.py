"""Linear layers whose float32 CPU matmuls can run through oneDNN instead of BLAS.

On CPU, torch sends a float32 ``nn.Linear`` (forward and both backward products) to its
BLAS, MKL in the official x86 wheels. oneDNN, also inside those wheels (torch's
convolutions use it), has its own matmul kernels. On our build machine, an AMD EPYC (Zen 5)
with AVX-512, a one-thread ``(2048, 256) x (256, 1024)`` float32 product runs at about 84
GFLOP/s through MKL and 180-195 GFLOP/s through oneDNN (the matmul probe of ``python
benchmarks/bench_vit.py`` prints both). MKL is known to choose its code path by CPU vendor
and runs AVX2-class speed here; oneDNN dispatches on the instruction set alone. On an
Intel CPU with AVX-512 the two are expected to be close: measure before relying on it.
Matmuls are two thirds of a ViT training step on this machine, so this is the largest
single lever for CPU training.

``matmul_backend="onednn"`` on a :class:`Linear` computes the forward product and both
backward products (input and weight gradients) through ``torch.ops.mkldnn._linear_pointwise``
in strict float32 (oneDNN's default math mode; torch's ``torch.backends.mkldnn`` precision
settings are not changed here). The sums run in another order, so results differ from BLAS
at round-off level (relative ~1e-7 per product), not bit for bit: that is why
``"default"`` (plain :func:`torch.nn.functional.linear`) stays the default, and the stored
float32 training reference is reproduced bit for bit.

The oneDNN path is taken only where it applies (:func:`onednn_applies`): plain float32 CPU
tensors (not DTensor/FSDP2 shards or other subclasses), autocast off, torch built with
oneDNN, and products of at least :data:`MIN_ONEDNN_MACS` multiply-adds. Anything else
(GPU, bfloat16/float64, autocast, the meta device, tiny products) falls back to
:func:`torch.nn.functional.linear`, so the switch is safe to leave on in any workflow. It
works under ``torch.compile`` (the oneDNN product is a custom op, opaque to inductor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..errors import InputError

__all__ = ["MATMUL_BACKENDS", "MIN_ONEDNN_MACS", "Linear", "onednn_linear", "onednn_applies",
           "set_matmul_backend"]

MATMUL_BACKENDS = ("default", "onednn")
"""Allowed values of :attr:`Linear.matmul_backend`: ``"default"`` is torch's choice (BLAS
on CPU), ``"onednn"`` oneDNN for float32 CPU tensors."""

MIN_ONEDNN_MACS = 2**21
"""Smallest product (multiply-adds, ``rows * in_features * out_features``) sent to oneDNN:
about where its extra fixed cost per call (primitive set-up and the custom-op dispatch, tens
of microseconds) equals its gain at one thread on our build machine."""

_PLAIN = (Tensor, nn.Parameter)
# Read once: torch.compile does not trace into torch.backends.
_ONEDNN_BUILT = torch.backends.mkldnn.is_available()


@torch.library.custom_op("turbda_kit::onednn_linear", mutates_args=())
def _onednn_product(inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``inputs @ weight.T (+ bias)`` through oneDNN; ``inputs`` and ``weight`` 2-D with any
    strides (a transposed ``weight`` view is read in place; ``inputs`` are made contiguous).

    A custom op rather than a direct call so that ``torch.compile`` keeps it as an opaque
    kernel: inductor's own lowering of ``mkldnn._linear_pointwise`` expects frozen
    (constant) weights, which training does not have.
    """
    return torch.ops.mkldnn._linear_pointwise(inputs, weight, bias, "none", [], "")


@_onednn_product.register_fake
def _(inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return inputs.new_empty(inputs.shape[0], weight.shape[0])


class _OneDNNLinear(torch.autograd.Function):
    """``y = x W^T + b`` with the forward and both backward products in oneDNN."""

    @staticmethod
    def forward(ctx, inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        flat = inputs.reshape(-1, inputs.shape[-1])
        ctx.save_for_backward(flat, weight)
        ctx.has_bias = bias is not None
        out = _onednn_product(flat, weight, bias)
        return out.reshape(*inputs.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        flat, weight = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_in = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # dL/dx = g W: W^T is a (in, out) view, which oneDNN reads as the weight.
            grad_in = _onednn_product(grad, weight.t(), None).reshape(
                *grad_out.shape[:-1], flat.shape[-1])
        if ctx.needs_input_grad[1]:
            # dL/dW = g^T x. oneDNN reads a transposed weight view in place but makes its
            # input contiguous, so transpose the smaller activation: (rows, in) or (rows, out).
            if flat.shape[1] <= grad.shape[1]:
                grad_weight = _onednn_product(flat.t(), grad.t(), None).t().contiguous()
            else:
                grad_weight = _onednn_product(grad.t(), flat.t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_in, grad_weight, grad_bias


def onednn_applies(inputs: Tensor, weight: Tensor) -> bool:
    """Whether :func:`onednn_linear` computes ``F.linear(inputs, weight)`` through oneDNN.

    True for plain float32 CPU tensors with autocast off and a torch built with oneDNN, for
    products of at least :data:`MIN_ONEDNN_MACS` multiply-adds (below that oneDNN's fixed
    cost per call, a few times ``F.linear``'s, outweighs its faster kernel).
    """
    macs = inputs.numel() * weight.shape[0]
    return (macs >= MIN_ONEDNN_MACS
            and inputs.device.type == "cpu" and weight.device.type == "cpu"
            and inputs.dtype == torch.float32 and weight.dtype == torch.float32
            and type(inputs) in _PLAIN and type(weight) in _PLAIN
            and not torch.is_autocast_enabled("cpu")
            and _ONEDNN_BUILT)


def onednn_linear(inputs: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """:func:`torch.nn.functional.linear` with oneDNN products (forward and backward).

    Parameters
    ----------
    inputs : Tensor
        ``(*, in_features)`` float32 on the CPU.
    weight : Tensor
        ``(out_features, in_features)``.
    bias : Tensor, optional
        ``(out_features,)``.

    Returns
    -------
    Tensor
        ``(*, out_features)``; equal to ``F.linear`` to float32 round-off. Falls back to
        ``F.linear`` where :func:`onednn_applies` is false.
    """
    if not onednn_applies(inputs, weight):
        return F.linear(inputs, weight, bias)
    return _OneDNNLinear.apply(inputs, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` with a selectable matmul backend (same parameters and state dict).

    Attributes
    ----------
    matmul_backend : {"default", "onednn"}
        ``"default"``: :func:`torch.nn.functional.linear`. ``"onednn"``:
        :func:`onednn_linear` (float32 CPU only; elsewhere the default). Set it for a
        whole model with :func:`set_matmul_backend`.
    """

    matmul_backend: str = "default"

    def forward(self, inputs: Tensor) -> Tensor:
        if self.matmul_backend == "onednn" and onednn_applies(inputs, self.weight):
            return _OneDNNLinear.apply(inputs, self.weight, self.bias)
        return F.linear(inputs, self.weight, self.bias)

    def extra_repr(self) -> str:
        extra = f", matmul_backend={self.matmul_backend}" if self.matmul_backend != "default" \
            else ""
        return super().extra_repr() + extra


def set_matmul_backend(module: nn.Module, backend: str) -> nn.Module:
    """Choose the matmul backend of every :class:`Linear` inside ``module``.

    Parameters
    ----------
    module : nn.Module
        A kit :class:`~turbda_kit.surrogate.vit.ViT`, or any wrapper around one (DDP, FSDP,
        a compiled module): submodules are found by :meth:`torch.nn.Module.modules`. Plain
        ``nn.Linear`` layers are left alone.
    backend : {"default", "onednn"}

    Returns
    -------
    nn.Module
        ``module`` itself (changed in place).

    Notes
    -----
    Set it before ``torch.compile``: a compiled graph keeps the backend it was traced with.
    """
    if backend not in MATMUL_BACKENDS:
        raise InputError(f"matmul backend {backend!r} is not one of {list(MATMUL_BACKENDS)}: "
                         "'default' is torch's BLAS, 'onednn' oneDNN for float32 on the CPU")
    for sub in module.modules():
        if isinstance(sub, Linear):
            sub.matmul_backend = backend
    return module
