"""Write the stored float64 reference outputs that ``test_reference.py`` compares against.

Run once, on purpose, when a change of results is intended and understood::

    OMP_NUM_THREADS=1 python tests/reference/make_reference.py

Every output is computed on one CPU thread from fixed seeds. The files are small
(``tests/reference/data/*.npz``, a few hundred kB in all) and hold, next to the arrays,
the CPU capability and torch version they were made with: the test demands bit-identical
results on a matching platform and a tight tolerance elsewhere.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def platform_tag() -> str:
    """What bit-identity depends on: torch version and the CPU's vector capability."""
    return f"torch={torch.__version__};cpu={torch.backends.cpu.get_cpu_capability()}"


# ---------------------------------------------------------------------------------------
# The cases. Each returns a dict of numpy arrays; the test calls the same functions.
# ---------------------------------------------------------------------------------------

def sqg_steps() -> dict[str, np.ndarray]:
    """Bao et al.'s SQG physics at N=32, float64: 20 steps of a 3-member ensemble (PV)."""
    from turbda_kit.models.sqg import SQGModel, bao2024_at_resolution, random_initial_state

    params = bao2024_at_resolution(32)
    gen = torch.Generator().manual_seed(11)
    states = torch.stack([random_initial_state(params, gen, dtype=torch.float64)
                          for _ in range(3)])
    model = SQGModel(params)
    after_1 = model.advance(states, 1)
    after_20 = model.advance(after_1, 19)
    return {"initial_pv": states.numpy(), "pv_after_1": after_1.numpy(),
            "pv_after_20": after_20.numpy()}


def _sqg_ensemble(n_members: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth (N=16) truth in K and an ensemble around it, float64."""
    gen = torch.Generator().manual_seed(seed)
    n = 16
    k = torch.arange(n, dtype=torch.float64) * 2 * torch.pi / n
    y, x = torch.meshgrid(k, k, indexing="ij")
    truth = torch.stack([3 * torch.sin(x) * torch.cos(2 * y), 2 * torch.cos(x + y)]) + 290.0
    ensemble = truth + torch.randn(n_members, 2, n, n, generator=gen, dtype=torch.float64)
    return truth, ensemble


def ensf_analysis_case(noise: str = "counter") -> dict[str, np.ndarray]:
    """One EnSF analysis (implicit step, normalised, RTPS) of arctan observations, float64.

    ``noise`` is ``EnSFConfig.noise``: the stored ``ensf_analysis`` uses the counter-based
    stream (the default since #19), ``ensf_analysis_blocks`` the earlier generator blocks
    (that file is the original reference, made before the renovation).
    """
    from turbda_kit.filters.ensf import EnSFConfig, ensf_analysis
    from turbda_kit.obs.operators import Arctan

    truth, forecast = _sqg_ensemble(10, seed=3)
    operator = Arctan(tuple(truth.shape))
    gen = torch.Generator().manual_seed(5)
    obs = operator(truth) + 0.05 * torch.randn(operator.n_obs, generator=gen, dtype=torch.float64)
    config = EnSFConfig(n_steps=50, likelihood_step="implicit", normalize=True,
                        spread_relaxation=0.5, noise=noise)
    analysis = ensf_analysis(forecast, obs, operator, 0.05, 1234, config)
    explicit = ensf_analysis(forecast, obs, operator, 0.05, 1234,
                             EnSFConfig(n_steps=50, prior_score="mixture", noise=noise))
    return {"forecast": forecast.numpy(), "obs": obs.numpy(), "analysis": analysis.numpy(),
            "analysis_mixture_explicit": explicit.numpy()}


def ensf_analysis_blocks_case() -> dict[str, np.ndarray]:
    """:func:`ensf_analysis_case` with ``EnSFConfig(noise="blocks")`` (the earlier stream)."""
    return ensf_analysis_case(noise="blocks")


def letkf_analysis_case() -> dict[str, np.ndarray]:
    """One localised LETKF analysis (RTPS) on an N=16 SQG grid, float64."""
    from turbda_kit.filters.letkf import LETKFConfig, letkf_analysis
    from turbda_kit.filters.localization import sqg_positions
    from turbda_kit.models.sqg import bao2024_at_resolution
    from turbda_kit.obs.operators import Identity

    params = bao2024_at_resolution(16)
    truth, forecast = _sqg_ensemble(12, seed=4)
    operator = Identity(tuple(truth.shape))
    gen = torch.Generator().manual_seed(6)
    obs = operator(truth) + torch.randn(operator.n_obs, generator=gen, dtype=torch.float64)
    positions = sqg_positions(16, params.L, params.H)
    flat = positions.reshape(-1, positions.shape[-1])
    config = LETKFConfig(localization_radius=2.0e6, inflation="rtps", inflation_factor=0.6)
    analysis = letkf_analysis(forecast, operator(forecast), obs, 1.0, config=config,
                              state_positions=flat, obs_positions=flat,
                              domain_lengths=(params.L, params.L))
    return {"forecast": forecast.numpy(), "obs": obs.numpy(), "analysis": analysis.numpy()}


_CYCLING_VARIABLES = ("rmse_forecast", "rmse_analysis", "spread_forecast", "spread_analysis",
                      "crps_forecast", "crps_analysis", "innovation_mean", "innovation_std",
                      "shock_std", "rank_histogram")


def cycling_case() -> dict[str, np.ndarray]:
    """Short SQG cycling runs (N=16, float64, 4 cycles) of every filter of two presets."""
    from turbda_kit.experiments import build_experiment, get_preset

    out: dict[str, np.ndarray] = {}
    for preset_name in ("bao2024_sqg_linear", "yin2024_sqg_shocks"):
        preset = get_preset(preset_name).replace(n_cycles=4, spinup_cycles=1, n_members=6)
        for filter_name in ("free", "letkf", "ensf"):
            experiment = build_experiment(preset, filter_name, seed=2, dtype=torch.float64,
                                          spinup_days=2.0, model_overrides={"N": 16},
                                          save_means=True)
            ds = experiment.run(show_progress=False)
            for var in (*_CYCLING_VARIABLES, "analysis_mean", "truth"):
                out[f"{preset_name}.{filter_name}.{var}"] = ds[var].values
    return out


def lorenz96_case() -> dict[str, np.ndarray]:
    """Lorenz-96 (n=40, F=8) RK4 in float64: 500 steps of 4 members."""
    from turbda_kit.models.lorenz96 import Lorenz96

    model = Lorenz96(40, forcing=8.0, dt=0.01)
    gen = torch.Generator().manual_seed(8)
    x0 = 8.0 + torch.randn(4, 40, generator=gen, dtype=torch.float64)
    return {"x0": x0.numpy(), "x500": model.advance(x0, 500).numpy()}


def training_case() -> dict[str, np.ndarray]:
    """Three optimiser steps of the ``tiny`` ViT on synthetic data (fp32, one process)."""
    sys.path.insert(0, str(HERE.parent / "surrogate" / "scripts"))
    from synthetic_data import ShiftDataset

    from turbda_kit.surrogate import TrainConfig, load_surrogate, load_vit_config, train

    config = load_vit_config("tiny")
    train_config = TrainConfig(batch_size=2, max_steps=3, lr=1e-3, warmup_steps=1,
                               log_every=1, eval_every=0, checkpoint_every=0, seed=9,
                               shuffle=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, train_config, ShiftDataset(n_samples=8, img_size=32), tmp,
                       val_data=ShiftDataset(n_samples=4, img_size=32, seed=1),
                       show_progress=False)
        model, _ = load_surrogate(result.export_path)
        state = model.state_dict()
    flat = torch.cat([v.detach().reshape(-1).double() for _, v in sorted(state.items())])
    digest = hashlib.sha256(b"".join(v.detach().contiguous().numpy().tobytes()
                                     for _, v in sorted(state.items()))).hexdigest()
    losses = np.array([row["loss"] for row in result.history if "loss" in row], dtype=np.float64)
    return {"losses": losses, "weights": flat.numpy(),
            "weights_sha256": np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)}


CASES = {
    "sqg_steps": sqg_steps,
    "ensf_analysis": ensf_analysis_case,
    "ensf_analysis_blocks": ensf_analysis_blocks_case,
    "letkf_analysis": letkf_analysis_case,
    "cycling": cycling_case,
    "lorenz96": lorenz96_case,
    "training": training_case,
}


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    DATA.mkdir(parents=True, exist_ok=True)
    for name in names or list(CASES):
        arrays = CASES[name]()
        np.savez_compressed(DATA / f"{name}.npz", platform=np.array(platform_tag()), **arrays)
        size = (DATA / f"{name}.npz").stat().st_size
        print(f"{name}: {len(arrays)} arrays, {size / 1024:.0f} kB")


if __name__ == "__main__":
    main(sys.argv[1:])
