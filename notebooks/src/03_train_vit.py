# %% [markdown]
# # 03 — train the ViT surrogate
# Trains the ClimaX-style ViT on the training shards written by `02_preprocess`, with one
# process or distributed (DDP, FSDP, DeepSpeed ZeRO) when launched by `mpiexec`/`srun`/
# `torchrun` — every rank runs this notebook and the trainer finds its rank and world size.
# Then it plots the loss curves, rolls the surrogate out autoregressively on the test days
# against the truth and persistence, and exports the consolidated inference checkpoint
# `surrogate.pt` (weights, config and the normalisation) that the coupled experiments load.

# %% [parameters]
out_dir: str = "."  # run directory (set by `turbda run`)
config: str = "tiny"  # ViT preset (tiny, sqg_64, sqg_64_coupled, sqg_128, sqg_256) or a YAML path
data_root: str = ""  # shard root; empty means {out_dir}/../02_preprocess/shards
match_data: bool = True  # take img_size and variables from the shards (runs any preset's shape on any grid)
strategy: str = "auto"  # none | ddp | fsdp | deepspeed; auto: none on one rank, else the preset's (ddp if none)
sharding: str = "FULL_SHARD"  # FSDP: FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
zero_stage: int = 1  # DeepSpeed ZeRO stage 0-3
max_steps: int = -1  # optimiser steps; -1: the preset's (tiny: 200); 0: train for `epochs` instead
epochs: int = 0  # passes over the training pairs (used when max_steps is 0)
batch_size: int = 0  # samples per rank per step; 0: the preset's (tiny: 8)
lr: float = 0.0  # peak AdamW learning rate; 0: the preset's (tiny: 1e-3)
warmup_steps: int = -1  # linear warm-up steps; -1: the preset's (tiny: 10)
precision: str = "preset"  # fp32 | bf16 | fp16 (GPU only) | preset (tiny: fp32, sqg_*: bf16)
activation_checkpointing: bool = False  # recompute block activations in backward (big presets)
device: str = "auto"  # auto (a GPU per rank when visible) or cpu (hide GPUs)
lead_steps: int = 1  # lead time of one forecast in data steps (12 h for 12-hourly data)
loader: str = "trajectory"  # trajectory: every pair of the split (in memory); shards: ClimaX's in-shard pairs, streamed
eval_every: int = 50  # steps between validations (0: once per epoch)
checkpoint_every: int = 0  # steps between resumable checkpoints (0: final and best only)
train_dir: str = ""  # trainer output (metrics, checkpoints); empty means {out_dir}/training
resume: str = "auto"  # auto: continue from train_dir's latest checkpoint when there is one; none: fresh
rollout_steps: int = 10  # autoregressive steps scored on the test split
train_rollout_steps: int = 1  # forecast steps per training sample (>1: loss over an autoregressive rollout; trajectory loader)
init_weights: str = ""  # exported surrogate to fine-tune (e.g. surrogate.pt of an earlier run); empty: fresh weights
num_threads: int = 0  # torch CPU threads per rank (0: torch's default)
seed: int = 0  # weights, data order and dropout

# %%
import os

if device == "cpu":
    # Before torch touches CUDA: the trainer then picks the CPU on every rank.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
import json
import time
from pathlib import Path

import numpy as np
import torch

from turbda_kit.data.shards import ForecastSamples, ForecastShards, open_shards
from turbda_kit.errors import InputError
from turbda_kit.io import atomic_path
from turbda_kit.parallel import distributed as pd
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.flops import count_parameters, forward_flops, training_flops
from turbda_kit.surrogate.rollout import TrajectoryPairs, rollout, rollout_rmse, split_trajectory
from turbda_kit.surrogate.trainer import load_train_config, train
from turbda_kit.surrogate.vit import load_surrogate, save_surrogate

if device not in ("auto", "cpu"):
    raise InputError(f"device={device!r}: use 'auto' (the trainer picks each rank's GPU) or 'cpu'")
if num_threads:
    torch.set_num_threads(num_threads)
env = pd.discover_env()  # a collective under MPI: every rank runs this cell
main = env.is_main
out = Path(out_dir)
root = Path(data_root) if data_root else out / ".." / "02_preprocess" / "shards"
run_dir = Path(train_dir) if train_dir else out / "training"
if not root.is_dir():
    raise InputError(f"data_root {root} not found: run 02_preprocess first or pass -p data_root DIR")
print(f"rank {env.rank} of {env.world_size} ({env.launcher}); device {pd.device_for(env)}; "
      f"shards {root}; trainer output {run_dir}")

# %% [markdown]
# ## Data and model
# The model's grid and variables follow the shards (`match_data`); the preset fixes the
# architecture. Inputs and targets are normalised with the training-split statistics.

# %%
catalog = open_shards(root)
norm = catalog.normaliser
hours = catalog.hours_per_step
if hours is None:
    raise InputError(f"{root} has no manifest.json giving the time between steps")
lead_hours = lead_steps * hours
overrides = {"img_size": catalog.grid_shape[0], "variables": catalog.variables} if match_data else {}
cfg = load_vit_config(config, **overrides)

preset_train = load_train_config(config)
chosen = {"strategy": strategy, "sharding": sharding, "zero_stage": zero_stage, "seed": seed,
          "eval_every": eval_every, "checkpoint_every": checkpoint_every,
          "activation_checkpointing": activation_checkpointing}
if max_steps == 0:
    chosen.update(max_steps=None, max_epochs=epochs or None)
elif max_steps > 0:
    chosen["max_steps"] = max_steps
if strategy == "auto":
    chosen["strategy"] = ("none" if env.world_size == 1
                          else preset_train.strategy if preset_train.strategy != "none" else "ddp")
if batch_size:
    chosen["batch_size"] = batch_size
if lr:
    chosen["lr"] = lr
if warmup_steps >= 0:
    chosen["warmup_steps"] = warmup_steps
if precision != "preset":
    chosen["precision"] = precision
tc = load_train_config(config, **chosen)

if loader == "trajectory":
    train_traj, _ = split_trajectory(catalog, "train")
    val_traj, _ = split_trajectory(catalog, "val")
    train_data = TrajectoryPairs(train_traj, norm, lead_steps, hours,
                                 rollout_steps=train_rollout_steps)
    val_data = TrajectoryPairs(val_traj, norm, lead_steps, hours,
                               rollout_steps=train_rollout_steps)
elif train_rollout_steps != 1:
    raise InputError(f"train_rollout_steps={train_rollout_steps} needs loader='trajectory' "
                     "(in-shard pairs hold one target)")
elif loader == "shards":
    train_data = ForecastShards(catalog, "train", lead_steps=lead_steps, shuffle=True,
                                buffer_size=64, seed=seed, rank=env.rank,
                                world_size=env.world_size)
    val_data = ForecastSamples(catalog, "val", lead_steps=lead_steps)
    if tc.max_steps is None:
        raise InputError("loader='shards' streams an iterable dataset: set max_steps > 0")
else:
    raise InputError(f"loader={loader!r}: use 'trajectory' or 'shards'")
n_train = len(train_data) if loader == "trajectory" else train_data.num_samples

if main:
    n_params, fwd = count_parameters(cfg), forward_flops(cfg)
    print(f"ViT '{cfg.name}': {cfg.img_size}x{cfg.img_size} grid, patch {cfg.patch_size} -> "
          f"{cfg.n_tokens} tokens, width {cfg.embed_dim}, depth {cfg.depth}, "
          f"{cfg.num_heads} heads, variables {cfg.variables}")
    print(f"  parameters {n_params:,}; {fwd / 1e9:.4g} GFLOP per forward and "
          f"{training_flops(cfg) / 1e9:.4g} GFLOP per training sample")
    print(f"  data: {n_train} training samples, {len(val_data)} validation samples, lead "
          f"{lead_hours:g} h; normalisation mean {np.round(norm.mean, 4)} K, "
          f"std {np.round(norm.std, 4)} K")
    print(f"  training: {tc}")

# %% [markdown]
# ## Training
# Metrics go to `training/metrics.csv` and `scalars.jsonl`; resumable checkpoints to
# `training/checkpoints/`. Re-running with the same `train_dir` resumes (`resume="auto"`).

# %%
start = time.perf_counter()
result = train(cfg, tc, train_data, run_dir, val_data=val_data,
               resume=None if resume == "none" else resume, denormalise=list(norm.std), env=env,
               init_weights=init_weights or None)
train_seconds = time.perf_counter() - start
pd.shutdown()  # the rest runs on rank 0 from the exported weights
if main:
    print(f"{result.step} steps ({result.epoch} epochs) in {train_seconds:.1f} s; best validation "
          f"loss {result.best_val_loss} at step {result.best_step}; stopped early: "
          f"{result.stopped_early}")

# %% [markdown]
# ## Export
# `surrogate.pt`: the best (lowest validation loss) weights, consolidated on one device,
# with the normalisation and lead time in the metadata —
# `load_surrogate(path)` returns the model and these; `normaliser_from_metadata(meta)` the
# normaliser.

# %%
if main:
    # The trainer keeps export/vit_best.pt across resumed runs; a resumed run that did not
    # improve on it reports no best export of its own.
    best = run_dir / "export" / "vit_best.pt"
    best = best if best.is_file() else Path(result.export_path)
    model, meta = load_surrogate(best, device="cpu")
    meta = {**meta, "variables": list(norm.variables), "normalize_mean": norm.mean.tolist(),
            "normalize_std": norm.std.tolist(), "hours_per_step": float(hours),
            "lead_time_hours": float(lead_hours), "data_root": str(root.resolve()),
            "source_export": best.name}
    export_path = save_surrogate(model.config, model.state_dict(), out / "surrogate.pt", meta)
    print(f"exported {export_path} from {best} (step {meta.get('step')})")

# %% [markdown]
# ## Loss curves

# %%
if main:
    import holoviews as hv

    from turbda_kit.viz.plots import fields, init_notebook, save

    init_notebook()  # the kit's convention: bokeh in the notebook, resources inline
    rows = result.history
    train_rows = [r for r in rows if r.get("kind") == "train"]
    val_rows = [r for r in rows if r.get("kind") == "val"]
    curves = [hv.Curve(([r["step"] for r in train_rows], [r["train_loss"] for r in train_rows]),
                       "step", "MSE (normalised)", label="train")]
    if val_rows:
        curves.append(hv.Curve(([r["step"] for r in val_rows], [r["val_loss"] for r in val_rows]),
                               "step", "MSE (normalised)", label="validation"))
    loss_plot = hv.Overlay(curves).opts(title=f"ViT '{cfg.name}' training loss", logy=True)
    print("wrote", *save(loss_plot, out / "loss_curves"))

# %% [markdown]
# ## Rollout on the test days
# Autoregressive forecasts from every test state with a complete window, scored per lead
# against the truth, persistence and the training climatology (RMSE in K, pooled over
# windows and grid points).

# %%
if main:
    test_traj, _ = split_trajectory(catalog, "test")
    steps = min(rollout_steps, (test_traj.shape[0] - 1) // lead_steps)
    if steps < 1:
        raise InputError(f"the test split holds {test_traj.shape[0]} states: too few for one "
                         f"lead of {lead_steps} steps")
    if steps < rollout_steps:
        print(f"test split too short for {rollout_steps} steps: scoring {steps}")
    climatology = torch.from_numpy(catalog.climatology("train")).float()
    scores = rollout_rmse(model, test_traj, steps, lead_hours, norm, hours_per_step=hours,
                          climatology=climatology)
    print(f"{scores.n_cases} test windows")
    print(scores.table())
    skill = scores.skill_vs_persistence
    print(f"pooled RMSE: ViT {scores.rmse_all[0]:.4f} K vs persistence "
          f"{scores.persistence_rmse_all[0]:.4f} K at {lead_hours:g} h (skill {skill[0]:+.3f}); "
          f"{scores.rmse_all[-1]:.4f} K vs {scores.persistence_rmse_all[-1]:.4f} K at "
          f"{scores.lead_hours[-1]:g} h")
    summary = {"config": cfg.to_dict(), "train_config": tc.to_dict(), "steps": result.step,
               "best_step": result.best_step, "best_val_loss": result.best_val_loss,
               "train_seconds": train_seconds, "world_size": env.world_size,
               "n_test_windows": scores.n_cases, "lead_hours": scores.lead_hours.tolist(),
               "variables": list(scores.variables), "rmse_K": scores.rmse.tolist(),
               "persistence_rmse_K": scores.persistence_rmse.tolist(),
               "climatology_rmse_K": scores.climatology_rmse.tolist(),
               "rmse_all_K": scores.rmse_all.tolist(),
               "persistence_rmse_all_K": scores.persistence_rmse_all.tolist()}
    with atomic_path(out / "scores.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    lead_axis = scores.lead_hours
    rmse_plot = hv.Overlay([
        hv.Curve((lead_axis, scores.rmse_all), "lead (h)", "RMSE (K)", label="ViT"),
        hv.Curve((lead_axis, scores.persistence_rmse_all), "lead (h)", "RMSE (K)",
                 label="persistence"),
        hv.Curve((lead_axis, np.sqrt(np.mean(scores.climatology_rmse ** 2, axis=-1))),
                 "lead (h)", "RMSE (K)", label="climatology"),
    ]).opts(title="test rollout RMSE (both levels)")
    print("wrote", *save(rmse_plot, out / "rollout_rmse"))

# %% [markdown]
# ## Prediction vs truth
# The first test state rolled out: truth, ViT forecast and its error at the first lead
# and at the last, surface level (`z = 0`).

# %%
if main:
    forecast = rollout(model, test_traj[:1], steps, lead_hours, norm)[:, 0]
    x_km, y_km = (None, None) if catalog.x is None else (catalog.x / 1e3, catalog.y / 1e3)
    panels = {}
    for k in sorted({0, steps - 1}):
        truth_k = test_traj[(k + 1) * lead_steps, 0].numpy()
        panels[f"truth +{(k + 1) * lead_hours:g} h"] = truth_k
        panels[f"ViT +{(k + 1) * lead_hours:g} h"] = forecast[k, 0].numpy()
        # "ViT - truth" is a difference: its own range, symmetric about zero.
        panels[f"ViT - truth +{(k + 1) * lead_hours:g} h"] = forecast[k, 0].numpy() - truth_k
    both = fields(panels, x_km=x_km, y_km=y_km, units="K", cols=3)
    print("wrote", *save(both, out / "prediction_vs_truth"))
    assert np.isfinite(forecast.numpy()).all()
