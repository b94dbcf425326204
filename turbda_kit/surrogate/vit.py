"""A ClimaX-style vision transformer that forecasts SQG temperature fields.

Data flow for a batch ``x`` of shape ``(B, V, N, N)`` (``V`` variables, ``N`` grid points
per side, patch side ``p``, ``L = (N/p)**2`` patches, width ``D``):

1. per-variable patch embedding (a grouped convolution: one ``p x p`` kernel bank per
   variable) -> ``(B, V, L, D)``, plus a learned embedding per variable;
2. variable aggregation: at every patch, one cross-attention with a learned query over the
   ``V`` variable tokens -> ``(B, L, D)``;
3. a 2-D positional embedding (the fixed sin-cos table, or with ``pos_embed="learned"`` a
   trained parameter starting from it) and a linear lead-time embedding are added (its
   input follows ``config.lead_time_convention``: see :func:`lead_time_input`);
4. ``depth`` pre-norm transformer blocks (multi-head self-attention through
   :func:`torch.nn.functional.scaled_dot_product_attention`, GELU MLP, dropout, stochastic
   depth);
5. final LayerNorm, an MLP head to ``V * p * p`` values per patch, unpatchify to
   ``(B, V, N, N)``; with ``config.residual`` this is an increment added to the input
   (the head's output layer starts at zero, so the untrained model is persistence).

The module is pure: it imports nothing from :mod:`torch.distributed`; wrapping for
DDP/FSDP/DeepSpeed happens in :mod:`turbda_kit.parallel.distributed`. Its linear layers
(:class:`turbda_kit.surrogate.matmul.Linear`) can run their float32 CPU products through
oneDNN (:func:`turbda_kit.surrogate.matmul.set_matmul_backend`).

Randomness: weights are initialised from an explicit :class:`torch.Generator` (seed 0 when
none is given). Dropout and stochastic depth draw from torch's default generator of the
input's device while training, as every torch dropout does; the trainer seeds it per rank
and stores it in checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from .config import SEED_LEAD_TIME_DIVISOR, ViTConfig
from .matmul import Linear

__all__ = ["ViT", "Block", "sincos_pos_embed_2d", "lead_time_input", "patchify", "unpatchify"]


def sincos_pos_embed_2d(grid_patches: int, embed_dim: int, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> Tensor:
    """Fixed 2-D sin-cos positional embedding (MAE convention).

    Parameters
    ----------
    grid_patches : int
        Patches per side ``h``; tokens are ordered row-major (``y`` slow, ``x`` fast).
    embed_dim : int
        Width ``D``; must be a multiple of 4 (half for each axis, half of that sin/cos).
    dtype, device
        Of the result.

    Returns
    -------
    Tensor
        ``(h*h, D)``: columns ``[:D/2]`` encode the ``x`` index, ``[D/2:]`` the ``y`` index.
    """
    if embed_dim % 4:
        raise InputError(f"embed_dim={embed_dim} must be a multiple of 4 for the 2-D sin-cos "
                         "positional embedding")
    quarter = embed_dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    index = torch.arange(grid_patches, dtype=torch.float64, device=device)
    gy, gx = torch.meshgrid(index, index, indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(gx), encode(gy)], dim=1).to(dtype)


def lead_time_input(lead_time_hours: Tensor, config: ViTConfig) -> Tensor:
    """The scalar the lead-time embedding sees for each lead time.

    Parameters
    ----------
    lead_time_hours : Tensor
        ``(B,)`` lead times, hours.
    config : ViTConfig
        ``lead_time_convention`` and ``lead_time_scale_hours`` are read.

    Returns
    -------
    Tensor
        ``(B,)``, same dtype: ``t / lead_time_scale_hours`` ("kit"), or
        ``(t / lead_time_scale_hours) / 100`` ("seed": the paper code's
        ``hrs_each_step * predict_range / 100`` with ``hrs_each_step = 1``; for a whole
        number of steps both round the same way, so one 12-h step of 12-hourly data gives
        the float nearest 0.01 exactly as the seed's integer ``1 / 100`` does).
    """
    steps = lead_time_hours / config.lead_time_scale_hours
    if config.lead_time_convention == "seed":
        return steps / SEED_LEAD_TIME_DIVISOR
    return steps


def patchify(fields: Tensor, patch_size: int) -> Tensor:
    """``(B, V, N, N)`` -> ``(B, L, V*p*p)``, patches row-major, values ordered ``(V, py, px)``."""
    b, v, n, _ = fields.shape
    h = n // patch_size
    x = fields.reshape(b, v, h, patch_size, h, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, h * h, v * patch_size * patch_size)


def unpatchify(tokens: Tensor, n_vars: int, patch_size: int) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, L, V*p*p)`` -> ``(B, V, N, N)``."""
    b, length, _ = tokens.shape
    h = math.isqrt(length)
    x = tokens.reshape(b, h, h, n_vars, patch_size, patch_size)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, n_vars, h * patch_size, h * patch_size)


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples.

    Kept samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``(B, L, D)`` tokens via fused SDPA."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, length, dim = x.shape
        qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, length, dim)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """Two-layer GELU MLP with dropout after each layer."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    FSDP wraps each block as one shard unit and activation checkpointing recomputes one
    block at a time.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, drop: float, attn_drop: float,
                 drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VariableAggregation(nn.Module):
    """Cross-attention of one learned query over the ``V`` variable tokens of each patch.

    ``(B, V, L, D)`` -> ``(B, L, D)``; same parameter layout (``4 D^2 + 4 D``) as
    :class:`torch.nn.MultiheadAttention`, but through SDPA.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.q_proj = Linear(dim, dim)
        self.kv_proj = Linear(dim, 2 * dim)
        self.out_proj = Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n_vars, length, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        # Each patch attends over its own variables: fold patches into the batch.
        tokens = x.permute(0, 2, 1, 3).reshape(b * length, n_vars, dim)
        k, v = self.kv_proj(tokens).reshape(b * length, n_vars, 2, heads, head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        q = self.q_proj(self.query).reshape(1, 1, heads, head_dim).transpose(1, 2)
        q = q.expand(b * length, heads, 1, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.reshape(b, length, dim))


class ViT(nn.Module):
    """ClimaX-style ViT surrogate: ``(B, V, N, N)`` fields + lead time -> forecast fields.

    Parameters
    ----------
    config : ViTConfig
        Architecture (validated on construction).
    generator : torch.Generator, optional
        Source of the initial weights; a CPU generator seeded with 0 when omitted, so two
        models built from the same config are identical.

    Notes
    -----
    Build on another device by constructing under ``with torch.device(...)`` (e.g.
    ``"meta"`` to count parameters of a big preset without memory) or with ``.to(device)``.
    Set ``model.activation_checkpointing = True`` to recompute block activations in the
    backward pass (less memory, ~1/3 more compute).
    Every linear layer is a :class:`turbda_kit.surrogate.matmul.Linear`: for float32 CPU
    training, ``set_matmul_backend(model, "onednn")`` runs their products through oneDNN
    (equal to round-off, faster where torch's BLAS is slow; see ``docs/vit.md``).

    Examples
    --------
    >>> import torch
    >>> from turbda_kit.surrogate.config import load_vit_config
    >>> model = ViT(load_vit_config("tiny"))
    >>> x = torch.zeros(3, 2, 32, 32)
    >>> model(x, torch.full((3,), 12.0)).shape
    torch.Size([3, 2, 32, 32])
    """

    def __init__(self, config: ViTConfig, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise InputError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = config
        dim, n_vars, p = config.embed_dim, config.n_vars, config.patch_size
        self.activation_checkpointing = False

        # Grouped conv = one independent p x p patch embedding per variable, in one kernel.
        self.patch_embed = nn.Conv2d(n_vars, n_vars * dim, kernel_size=p, stride=p,
                                     groups=n_vars)
        self.var_embed = nn.Parameter(torch.zeros(1, n_vars, 1, dim))
        self.var_agg = VariableAggregation(dim, config.num_heads)
        if config.pos_embed == "learned":
            # Filled with the sin-cos table by reset_parameters (the seed's initialisation).
            self.pos_embed = nn.Parameter(torch.zeros(1, config.n_tokens, dim))
        else:
            self.register_buffer(
                "pos_embed", sincos_pos_embed_2d(config.grid_patches, dim).unsqueeze(0),
                persistent=False)
        self.lead_time_embed = Linear(1, dim)
        self.pos_drop = nn.Dropout(config.drop_rate)
        # Python floats, not torch.linspace: construction must also work on the meta device.
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_hidden_dim, config.drop_rate,
                  config.attn_drop_rate, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim)
        head: list[nn.Module] = []
        for _ in range(config.decoder_depth):
            head += [Linear(dim, dim), nn.GELU()]
        head.append(Linear(dim, n_vars * p * p))
        self.head = nn.Sequential(*head)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """(Re)initialise all weights: truncated normal (std 0.02) for matrices and
        embeddings, zero biases, unit LayerNorm scales; a learned positional embedding
        starts as the 2-D sin-cos table (no draws, so every other weight equals the sin-cos
        model's); with ``config.residual`` the head's output layer is then zeroed (so the
        model starts as the identity map).

        Parameters
        ----------
        generator : torch.Generator, optional
            CPU generator; seeded with 0 when omitted. Weights are drawn on the CPU and
            copied, so the result does not depend on the device. No-op on the meta device.
        """
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        for name, param in self.named_parameters():
            if param.device.type == "meta":
                continue
            if name == "pos_embed":
                param.copy_(sincos_pos_embed_2d(self.config.grid_patches, self.config.embed_dim)
                            .unsqueeze(0))
            elif name.endswith("bias"):
                param.zero_()
            elif ".norm" in f".{name}" and name.endswith("weight"):
                param.fill_(1.0)
            else:
                values = torch.empty(param.shape, dtype=torch.float32)
                nn.init.trunc_normal_(values, std=0.02, a=-0.04, b=0.04, generator=generator)
                param.copy_(values)
        # Zeroed after the draws, so every other weight equals the non-residual model's.
        # Gradients still flow: the output layer's gradient is the (nonzero) hidden
        # activations, and the rest follow once its weights move off zero.
        if self.config.residual and self.head[-1].weight.device.type != "meta":
            self.head[-1].weight.zero_()
            self.head[-1].bias.zero_()

    def forward(self, fields: Tensor, lead_time_hours: Tensor | float) -> Tensor:
        """Forecast the fields ``lead_time_hours`` ahead.

        Parameters
        ----------
        fields : Tensor
            ``(B, V, N, N)`` normalised input fields.
        lead_time_hours : Tensor or float
            ``(B,)`` lead times in hours (a scalar is broadcast to the batch).

        Returns
        -------
        Tensor
            ``(B, V, N, N)`` normalised forecast, same dtype/device as the model output
            (with ``config.residual``: ``fields`` plus the predicted increment).
        """
        cfg = self.config
        if fields.ndim != 4 or fields.shape[1:] != (cfg.n_vars, cfg.img_size, cfg.img_size):
            raise InputError(
                f"fields has shape {tuple(fields.shape)}: expected (batch, {cfg.n_vars}, "
                f"{cfg.img_size}, {cfg.img_size}) for this config ({cfg.name or 'unnamed'})")
        b = fields.shape[0]
        lead = torch.as_tensor(lead_time_hours, dtype=fields.dtype, device=fields.device)
        lead = lead.expand(b) if lead.ndim == 0 else lead
        if lead.shape != (b,):
            raise InputError(f"lead_time_hours has shape {tuple(lead.shape)}: expected ({b},) "
                             "or a scalar")

        tokens = self.patch_embed(fields)                    # (B, V*D, h, h)
        tokens = tokens.reshape(b, cfg.n_vars, cfg.embed_dim, cfg.n_tokens).transpose(2, 3)
        tokens = self.var_agg(tokens + self.var_embed)        # (B, L, D)
        lead_embed = self.lead_time_embed(lead_time_input(lead, cfg).unsqueeze(-1))
        # The fixed buffer follows the activations' dtype (DeepSpeed bf16 casts only params);
        # for a learned (parameter) table this is a no-op or a differentiable cast.
        pos_embed = self.pos_embed.to(tokens.dtype)
        tokens = self.pos_drop(tokens + pos_embed + lead_embed.unsqueeze(1))
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        out = self.head(self.norm(tokens))                   # (B, L, V*p*p)
        out = unpatchify(out, cfg.n_vars, cfg.patch_size)
        return fields + out if cfg.residual else out

