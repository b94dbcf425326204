"""A seed-style ViT: the paper code's ``SQG_ViT`` as its code computes it, in plain torch.

This reproduces the model of the paper's code (github jqyin/sqg_vit,
``src/sqg/model/arch.py``: ``SQG_ViT``, ``parallelpatchembed.py``) operation for operation,
so that the kit's :class:`turbda_kit.surrogate.vit.ViT` can be timed against it on equal
terms. The seed builds on timm (``PatchEmbed``, ``Block`` and, inside it, ``Attention`` and
``Mlp``), which does not import on our CPU stack; the timm blocks are therefore written
here in plain torch the way timm (>= 0.9, the version with ``timm.layers``, which the seed
imports) computes them:

* variable tokenisation: one timm ``PatchEmbed(img, p, in_chans=1, D)`` per variable
  (a ``p x p``-stride convolution, then ``flatten(2).transpose(1, 2)``), stacked to
  ``(B, V, L, D)``; or, with ``parallel_patch_embed``, the seed's ``ParallelVarPatchEmbed``
  (one grouped convolution over a stacked ``(V, D, 1, p, p)`` weight);
* a learned variable embedding (initialised from a 1-D sin-cos table over the variables);
* variable aggregation: ``torch.nn.MultiheadAttention(D, heads, batch_first=True)`` called
  as ``var_agg(query, x, x)`` with the learned query repeated for every ``B * L`` patch and
  the default ``need_weights=True``, so it takes the explicit (non-fused) attention path,
  projects the repeated query ``B * L`` times and averages the weights over the heads;
* a learned positional embedding (initialised to the 2-D sin-cos table), a linear lead-time
  embedding of the seed's lead input (data steps / 100), position dropout;
* timm ``Block``: pre-norm ``x + drop_path(attn(norm1(x)))``, ``x + drop_path(mlp(norm2(x)))``
  with timm's ``Attention`` (one ``qkv`` linear, ``reshape(B, L, 3, H, D/H).permute(2, 0, 3,
  1, 4).unbind(0)``, identity q/k norms, ``scaled_dot_product_attention`` as timm's default
  ``fused_attn``, or the explicit ``softmax(q k^T * scale) v`` with ``fused_attn=False``),
  timm's ``Mlp`` (``fc1``, GELU, dropout, identity norm, ``fc2``, dropout) and timm's
  ``DropPath`` (an identity when the rate is 0; otherwise a per-sample Bernoulli mask
  divided by the keep probability, then multiplied in);
* final LayerNorm, an MLP head to ``V * p * p`` values per patch, the seed's
  ``einsum("nhwpqc->nchpwq")`` unpatchify (values per patch ordered ``(py, px, variable)``)
  and its selection of the output variables by index (a gather copy).

Parameter names and shapes are the seed's (so ``model.state_dict()`` is what a seed
checkpoint's ``state_dict`` holds under ``net.``), and
:func:`turbda_kit.surrogate.seed_checkpoint.seed_to_kit_state_dict` maps them onto the kit's
ViT, which then computes the same function to round-off (tested).

What is deliberately not reproduced: the seed's global-RNG initialisation (weights here are
drawn from an explicit :class:`torch.Generator`, in the seed's order and with its
distributions), its ``x.squeeze()`` after the aggregation (here ``squeeze(1)``, which is the
same for every batch but ``B * L == 1``), and the per-call ``vars``/``out_variables``
arguments (the configured variables are always used, in order). The seed's ``mse`` training
metric is :func:`seed_mse`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..surrogate.config import ViTConfig
from ..surrogate.vit import sincos_pos_embed_2d

__all__ = ["SeedViT", "seed_vit_from_config", "seed_mse", "sincos_embed_1d"]


def sincos_embed_1d(positions: np.ndarray, embed_dim: int) -> np.ndarray:
    """The seed's 1-D sin-cos table (``get_1d_sincos_pos_embed_from_grid``), float32 maths.

    Parameters
    ----------
    positions : ndarray
        ``(M,)`` positions.
    embed_dim : int
        Width ``D`` (even).

    Returns
    -------
    ndarray
        ``(M, D)``: ``sin`` of ``pos * omega`` in the first half, ``cos`` in the second,
        ``omega_k = 10000 ** (-k / (D / 2))``.
    """
    omega = np.arange(embed_dim // 2, dtype=np.float32) / np.float32(embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.einsum("m,d->md", np.asarray(positions).reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


class PatchEmbed(nn.Module):
    """timm ``PatchEmbed`` with one input channel: ``(B, 1, N, N)`` -> ``(B, L, D)``."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)   # NCHW -> NLC; timm's norm: identity


class ParallelVarPatchEmbed(nn.Module):
    """The seed's grouped-convolution tokeniser: ``(B, V, N, N)`` -> ``(B, V, L, D)``."""

    def __init__(self, n_vars: int, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj_weights = nn.Parameter(torch.empty(n_vars, embed_dim, 1, patch_size,
                                                     patch_size))
        self.proj_biases = nn.Parameter(torch.empty(n_vars, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        b, v = x.shape[:2]
        weights = self.proj_weights.flatten(0, 1)
        biases = self.proj_biases.flatten(0, 1)
        proj = F.conv2d(x, weights, biases, groups=v, stride=self.patch_size)
        proj = proj.reshape(b, v, -1, *proj.shape[-2:])
        return proj.flatten(3).transpose(2, 3)


class Attention(nn.Module):
    """timm ``Attention`` (``qkv_bias=True``, no q/k norm)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, fused_attn: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            q = q * self.scale
            attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc1``, GELU, dropout, (identity norm), ``fc2``, dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """timm ``DropPath`` (``scale_by_keep=True``): the mask is divided, then multiplied in."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        random_tensor = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0:
            random_tensor.div_(keep_prob)
        return x * random_tensor


class Block(nn.Module):
    """timm ``Block`` as the seed builds it (``qkv_bias=True``, ``nn.LayerNorm``,
    ``proj_drop=drop_rate``, no layer scale, attention dropout 0)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float,
                 proj_drop: float, fused_attn: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, proj_drop=proj_drop, fused_attn=fused_attn)
        self.ls1 = nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class SeedViT(nn.Module):
    """The seed's ``SQG_ViT`` (github jqyin/sqg_vit), plain torch, same parameter names.

    Parameters
    ----------
    variables : sequence of str
        The seed's ``default_vars`` (input and output channels, in order).
    img_size : int
        Grid points per side ``N`` (the seed allows ``[H, W]``; the SQG grid is square).
    patch_size, embed_dim, depth, decoder_depth, num_heads, mlp_ratio
        As the seed's arguments of the same names.
    drop_path : float
        Stochastic depth of the last block; rates ``torch.linspace(0, drop_path, depth)``
        (float32, as the seed).
    drop_rate : float
        Position dropout and the blocks' projection/MLP dropout.
    parallel_patch_embed : bool
        The seed's grouped-convolution tokeniser instead of one ``PatchEmbed`` per variable.
    fused_attn : bool
        timm's ``fused_attn`` switch of the blocks' attention: ``True`` (timm's default with
        torch >= 2) calls ``scaled_dot_product_attention``; ``False`` the explicit softmax.
    generator : torch.Generator, optional
        Source of the initial weights (seed 0 when omitted); skipped on the meta device.

    Notes
    -----
    ``forward(fields, lead_times)`` takes the seed's lead input (``hrs_each_step *
    predict_range / 100``, i.e. data steps / 100), not hours.
    """

    def __init__(self, variables: tuple[str, ...] | list[str], img_size: int = 64,
                 patch_size: int = 2, embed_dim: int = 1024, depth: int = 8,
                 decoder_depth: int = 2, num_heads: int = 16, mlp_ratio: float = 4.0,
                 drop_path: float = 0.1, drop_rate: float = 0.1,
                 parallel_patch_embed: bool = False, fused_attn: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.variables = tuple(variables)
        if not self.variables:
            raise InputError("variables is empty: give at least one variable name")
        if img_size % patch_size:
            raise InputError(f"img_size={img_size} is not divisible by patch_size={patch_size}")
        if embed_dim % num_heads or embed_dim % 4:
            raise InputError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads} "
                             "and of 4 (2-D sin-cos positional embedding)")
        self.img_size, self.patch_size = img_size, patch_size
        self.parallel_patch_embed = parallel_patch_embed
        n_vars, grid = len(self.variables), img_size // patch_size
        self.num_patches = grid * grid
        if parallel_patch_embed:
            self.token_embeds: nn.Module = ParallelVarPatchEmbed(n_vars, patch_size, embed_dim)
        else:
            self.token_embeds = nn.ModuleList(PatchEmbed(patch_size, embed_dim)
                                              for _ in range(n_vars))
        self.var_embed = nn.Parameter(torch.zeros(1, n_vars, embed_dim))
        self.var_map = {name: i for i, name in enumerate(self.variables)}
        self.var_query = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.var_agg = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.lead_time_embed = nn.Linear(1, embed_dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = [x.item() for x in torch.linspace(0, drop_path, depth, device="cpu")]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, drop_path=rate, proj_drop=drop_rate,
                  fused_attn=fused_attn) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim)
        head: list[nn.Module] = []
        for _ in range(decoder_depth):
            head += [nn.Linear(embed_dim, embed_dim), nn.GELU()]
        head.append(nn.Linear(embed_dim, n_vars * patch_size**2))
        self.head = nn.Sequential(*head)
        # The seed's var_ids, cached per device by its get_var_ids: a buffer here.
        self.register_buffer("var_ids", torch.arange(n_vars), persistent=False)
        self.initialize_weights(generator)

    @torch.no_grad()
    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """The seed's ``initialize_weights`` with an explicit generator.

        Sin-cos tables for ``pos_embed`` (2-D) and ``var_embed`` (1-D over the variables);
        truncated normals (std 0.02, cut at +-2 as timm's ``trunc_normal_``) for the patch
        kernels and every ``nn.Linear``; zero Linear biases; unit/zero LayerNorms. As in the
        seed, the patch-embedding biases keep torch's default uniform initialisation, the
        aggregation's packed ``in_proj_weight`` its Xavier-uniform one and the variable
        query its zeros.
        """
        if self.var_query.device.type == "meta":
            return
        if generator is None:
            generator = torch.Generator().manual_seed(0)

        def trunc_normal(param: Tensor) -> None:
            values = torch.empty(param.shape, dtype=torch.float32)
            nn.init.trunc_normal_(values, std=0.02, a=-2.0, b=2.0, generator=generator)
            param.copy_(values)

        def uniform(param: Tensor, bound: float) -> None:
            values = torch.empty(param.shape, dtype=torch.float32)
            values.uniform_(-bound, bound, generator=generator)
            param.copy_(values)

        grid = self.img_size // self.patch_size
        self.pos_embed.copy_(sincos_pos_embed_2d(grid, self.pos_embed.shape[-1]).unsqueeze(0))
        self.var_embed.copy_(torch.from_numpy(
            sincos_embed_1d(np.arange(len(self.variables)), self.var_embed.shape[-1])
        ).float().unsqueeze(0))
        fan_in = self.patch_size**2
        if self.parallel_patch_embed:
            for weight, bias in zip(self.token_embeds.proj_weights, self.token_embeds.proj_biases):
                trunc_normal(weight)
                uniform(bias, 1.0 / math.sqrt(fan_in))
        else:
            for embed in self.token_embeds:
                trunc_normal(embed.proj.weight)
                uniform(embed.proj.bias, 1.0 / math.sqrt(fan_in))
        d = self.var_embed.shape[-1]
        uniform(self.var_agg.in_proj_weight, math.sqrt(6.0 / (d + 3 * d)))   # xavier_uniform_
        self.var_agg.in_proj_bias.zero_()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def tokenize(self, fields: Tensor) -> Tensor:
        """``(B, V, N, N)`` -> ``(B, V, L, D)``: each variable's own patch embedding."""
        if self.parallel_patch_embed:
            return self.token_embeds(fields)
        return torch.stack([embed(fields[:, i:i + 1])
                            for i, embed in enumerate(self.token_embeds)], dim=1)

    def aggregate_variables(self, x: Tensor) -> Tensor:
        """``(B, V, L, D)`` -> ``(B, L, D)``: the seed's ``aggregate_variables``."""
        b, _, length, _ = x.shape
        x = torch.einsum("bvld->blvd", x).flatten(0, 1)          # (B L, V, D)
        var_query = self.var_query.repeat_interleave(x.shape[0], dim=0)
        x, _ = self.var_agg(var_query, x, x)                       # need_weights=True
        return x.squeeze(1).unflatten(dim=0, sizes=(b, length))

    def unpatchify(self, x: Tensor) -> Tensor:
        """``(B, L, p*p*V)`` -> ``(B, V, N, N)``, values per patch ordered ``(py, px, v)``."""
        p, c = self.patch_size, len(self.variables)
        h = w = self.img_size // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward_encoder(self, fields: Tensor, lead_times: Tensor) -> Tensor:
        """Tokens after the blocks and the final norm: ``(B, L, D)``."""
        x = self.tokenize(fields)
        x = x + self.var_embed[:, self.var_ids, :].unsqueeze(2)
        x = self.aggregate_variables(x)
        x = x + self.pos_embed
        x = x + self.lead_time_embed(lead_times.unsqueeze(-1)).unsqueeze(1)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, fields: Tensor, lead_times: Tensor) -> Tensor:
        """Forecast ``(B, V, N, N)`` fields.

        Parameters
        ----------
        fields : Tensor
            ``(B, V, N, N)`` normalised fields.
        lead_times : Tensor
            ``(B,)`` the seed's lead input: data steps / 100 (0.01 for one step).

        Returns
        -------
        Tensor
            ``(B, V, N, N)`` normalised forecast (the seed's ``preds``).
        """
        n_vars = len(self.variables)
        if fields.ndim != 4 or fields.shape[1:] != (n_vars, self.img_size, self.img_size):
            raise InputError(f"fields has shape {tuple(fields.shape)}: expected (batch, "
                             f"{n_vars}, {self.img_size}, {self.img_size})")
        preds = self.unpatchify(self.head(self.forward_encoder(fields, lead_times)))
        return preds[:, self.var_ids]


def seed_vit_from_config(config: ViTConfig, generator: torch.Generator | None = None,
                         parallel_patch_embed: bool = False, fused_attn: bool = True) -> SeedViT:
    """The seed model with the architecture of a kit :class:`ViTConfig`.

    Parameters
    ----------
    config : ViTConfig
        Any kit config: its variables, image and patch size, width, depth, heads, mlp ratio,
        decoder depth, ``drop_rate`` and ``drop_path_rate`` are used. The seed always has a
        learned positional embedding and the seed lead input and no residual mode, so the
        kit model computes the same function only for ``pos_embed="learned"``,
        ``lead_time_convention="seed"``, ``residual=False`` (the paper presets);
        ``attn_drop_rate`` is ignored (the seed's is 0).
    generator, parallel_patch_embed, fused_attn
        See :class:`SeedViT`.

    Returns
    -------
    SeedViT
    """
    if not isinstance(config, ViTConfig):
        raise InputError(f"config must be a ViTConfig, got {type(config).__name__}")
    return SeedViT(config.variables, img_size=config.img_size, patch_size=config.patch_size,
                   embed_dim=config.embed_dim, depth=config.depth,
                   decoder_depth=config.decoder_depth, num_heads=config.num_heads,
                   mlp_ratio=config.mlp_ratio, drop_path=config.drop_path_rate,
                   drop_rate=config.drop_rate, parallel_patch_embed=parallel_patch_embed,
                   fused_attn=fused_attn, generator=generator)


def seed_mse(pred: Tensor, target: Tensor, variables: tuple[str, ...] | list[str]
             ) -> dict[str, Tensor]:
    """The seed's training metric ``mse`` (``src/sqg/metrics.py``).

    Parameters
    ----------
    pred, target : Tensor
        ``(B, V, N, N)``.
    variables : sequence of str
        Names of the ``V`` channels.

    Returns
    -------
    dict
        ``{name: per-variable MSE (no gradient)}`` and ``"loss"``: the mean over variables
        of the per-pixel squared error, then over everything (the training loss).
    """
    loss = (pred - target) ** 2
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for i, name in enumerate(variables):
            out[name] = loss[:, i].mean()
    out["loss"] = loss.mean(dim=1).mean()
    return out
