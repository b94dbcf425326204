"""Parameter count and analytic FLOPs of the ViT surrogate, without building it.

Counts follow :class:`turbda_kit.surrogate.vit.ViT` exactly (a test checks
``count_parameters(cfg) == sum(p.numel() for p in ViT(cfg).parameters())``), so the big
presets (1.2B, 2.4B parameters) can be sized on a laptop. Print the table of every preset
with ``python -m turbda_kit.surrogate.flops``.

FLOPs convention (the one of the scaling literature and of :mod:`torch.utils.flop_counter`):
only matrix products and convolutions are counted, a multiply-add is 2 FLOPs; LayerNorm,
softmax, GELU, bias additions and dropout are ignored (< 1% at the paper's sizes). A
training step costs about 3x the forward pass (backward = 2x forward: gradients with
respect to activations and to weights). With activation checkpointing the hardware does
one more forward (4x), but the *model* FLOPs used for "achieved TFLOPS" stay 3x, as in the
paper.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .config import ViTConfig, available_vit_configs, load_vit_config

__all__ = ["ParameterBreakdown", "parameter_breakdown", "count_parameters", "forward_flops",
           "training_flops", "achieved_tflops", "preset_table"]


@dataclass(frozen=True)
class ParameterBreakdown:
    """Parameters per component of the ViT (all trainable). ``pos_embed`` is ``L * D`` for
    ``pos_embed="learned"`` and 0 for the fixed sin-cos table (a buffer)."""

    patch_embed: int
    var_embed: int
    var_agg: int
    pos_embed: int
    lead_time_embed: int
    blocks: int
    norm: int
    head: int

    @property
    def total(self) -> int:
        """Sum over the components."""
        return (self.patch_embed + self.var_embed + self.var_agg + self.pos_embed
                + self.lead_time_embed + self.blocks + self.norm + self.head)


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def parameter_breakdown(config: ViTConfig) -> ParameterBreakdown:
    """Analytic parameter count of each component of ``ViT(config)``.

    Parameters
    ----------
    config : ViTConfig

    Returns
    -------
    ParameterBreakdown
    """
    d, v, p, hidden = config.embed_dim, config.n_vars, config.patch_size, config.mlp_hidden_dim
    block = (2 * d                      # norm1
             + _linear(d, 3 * d) + _linear(d, d)   # qkv, proj
             + 2 * d                    # norm2
             + _linear(d, hidden) + _linear(hidden, d))
    return ParameterBreakdown(
        patch_embed=v * d * p * p + v * d,
        var_embed=v * d,
        var_agg=d + _linear(d, d) + _linear(d, 2 * d) + _linear(d, d),  # query, q, kv, out
        pos_embed=config.n_tokens * d if config.pos_embed == "learned" else 0,
        lead_time_embed=_linear(1, d),
        blocks=config.depth * block,
        norm=2 * d,
        head=config.decoder_depth * _linear(d, d) + _linear(d, v * p * p),
    )


def count_parameters(config: ViTConfig) -> int:
    """Total trainable parameters of ``ViT(config)``, computed without building it."""
    return parameter_breakdown(config).total


def forward_flops(config: ViTConfig) -> int:
    """Matmul/conv FLOPs of one forward pass for one sample (2 per multiply-add).

    Parameters
    ----------
    config : ViTConfig

    Returns
    -------
    int
        FLOPs per sample. Dominant term ``depth * (24 L D^2 + 4 L^2 D)`` for
        ``mlp_ratio = 4`` (``L`` tokens, ``D`` width), so the patch size sets the cost:
        halving it quadruples ``L``. The positional embedding (fixed or learned) and the
        lead-time convention add no matmul FLOPs (one addition per token value).
    """
    d, v, p = config.embed_dim, config.n_vars, config.patch_size
    length, hidden = config.n_tokens, config.mlp_hidden_dim
    patch_embed = 2 * v * length * p * p * d
    # The learned query is projected once per forward (counted here per sample, an upper
    # bound); each patch's query attends over V keys: k/v projections per variable token,
    # scores and weighted sum V*D each, then one output projection per patch.
    var_agg = 2 * d * d + length * (2 * v * d * 2 * d + 2 * v * d + 2 * v * d + 2 * d * d)
    lead_time = 2 * d
    attention = 2 * length * d * 3 * d + 2 * length * length * d * 2 + 2 * length * d * d
    mlp = 2 * length * d * hidden * 2
    blocks = config.depth * (attention + mlp)
    head = config.decoder_depth * 2 * length * d * d + 2 * length * d * v * p * p
    return patch_embed + var_agg + lead_time + blocks + head


def training_flops(config: ViTConfig) -> int:
    """Model FLOPs of one training step per sample: ``3 * forward_flops`` (see module notes)."""
    return 3 * forward_flops(config)


def achieved_tflops(config: ViTConfig, samples_per_second: float, n_devices: int = 1) -> float:
    """Achieved model TFLOPS per device, as reported in scaling studies.

    Parameters
    ----------
    config : ViTConfig
    samples_per_second : float
        Training throughput summed over all devices (samples/s).
    n_devices : int
        Devices sharing that throughput.

    Returns
    -------
    float
        ``training_flops(config) * samples_per_second / n_devices / 1e12``.
    """
    return training_flops(config) * samples_per_second / max(n_devices, 1) / 1e12


def preset_table(names: list[str] | None = None) -> str:
    """A plain-text table of the presets' sizes: tokens, parameters, forward GFLOP.

    Parameters
    ----------
    names : list of str, optional
        Preset names; all shipped presets (:func:`available_vit_configs`) when omitted.

    Returns
    -------
    str
        One line per preset, exact parameter counts with thousands separators.
    """
    lines = [f"{'preset':<16}{'N':>5}{'p':>3}{'tokens':>8}{'D':>6}{'depth':>6}{'mlp':>5}"
             f"{'pos':>9}{'parameters':>15}{'GFLOP/fwd':>11}"]
    for name in names or available_vit_configs():
        cfg = load_vit_config(name)
        lines.append(f"{name:<16}{cfg.img_size:>5}{cfg.patch_size:>3}{cfg.n_tokens:>8}"
                     f"{cfg.embed_dim:>6}{cfg.depth:>6}{cfg.mlp_ratio:>5g}{cfg.pos_embed:>9}"
                     f"{count_parameters(cfg):>15,}{_gflop(forward_flops(cfg)):>11}")
    return "\n".join(lines)


def _gflop(flops: int) -> str:
    gflop = flops / 1e9
    return f"{gflop:,.0f}" if gflop >= 1000 else f"{gflop:.4g}"


def main(argv: list[str] | None = None) -> None:
    """``python -m turbda_kit.surrogate.flops [PRESET ...]``: print :func:`preset_table`."""
    parser = argparse.ArgumentParser(description="Parameter counts and forward FLOPs of the "
                                                 "ViT presets (analytic, nothing is built).")
    parser.add_argument("presets", nargs="*", help="preset names (default: all)")
    print(preset_table(parser.parse_args(argv).presets or None))


if __name__ == "__main__":
    main()
