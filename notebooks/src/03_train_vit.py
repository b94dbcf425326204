# %% [markdown]
# # 03 — train the ViT surrogate
# Trains the ClimaX-style ViT on the training shards written by `02_preprocess`, with one
# process or distributed (DDP, FSDP, DeepSpeed ZeRO) when launched by `mpiexec`/`srun`/
# `torchrun` — every rank runs this notebook and the trainer finds its rank and world size.
# Then it exports `surrogate.pt` (weights, config, normaliser, lead time, provenance: what
# the coupled experiments load), plots the loss curves, and rolls the surrogate out on the
# test days against the truth, persistence and climatology.
#
# Parameters left at `None` take the ViT preset's `train:` value (`TrainConfig.from_preset`).

# %% tags=["parameters"]
out_dir: str = "."  # run directory (set by `turbda run`)
config: str = "tiny"  # ViT preset (tiny, sqg_64, sqg_64_cpu, sqg_64_coupled, sqg_128, sqg_256) or a YAML path
data_root: "Optional[str]" = None  # shard root; None: {out_dir}/../02_preprocess/shards
hours_per_step: "Optional[float]" = None  # hours between steps of a published (seed-layout) root, which has no manifest; None: the root's manifest
match_data: bool = True  # take img_size and variables from the shards (runs any preset's shape on any grid)
strategy: "Optional[str]" = None  # none | ddp | fsdp | deepspeed; None: none on one rank, else the preset's (ddp if none)
sharding: "Optional[str]" = None  # FSDP: FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD; None: the preset's
zero_stage: "Optional[int]" = None  # DeepSpeed ZeRO stage 0-3; None: the preset's (1)
max_steps: "Optional[int]" = None  # optimiser steps; None: the preset's (tiny: 200), or by `epochs` when those are set
epochs: "Optional[int]" = None  # passes over the training pairs; set without max_steps to train by epochs
batch_size: "Optional[int]" = None  # samples per rank per step; None: the preset's (tiny: 8)
lr: "Optional[float]" = None  # peak AdamW learning rate; None: the preset's (tiny: 1e-3)
warmup_steps: "Optional[int]" = None  # linear warm-up steps; None: the preset's (tiny: 10)
precision: "Optional[str]" = None  # fp32 | bf16 | fp16 (GPU only); None: the preset's (tiny: fp32, sqg_*: bf16)
activation_checkpointing: "Optional[bool]" = None  # recompute block activations in backward; None: the preset's
augment_x_shift: "Optional[bool]" = None  # roll each training pair by a random shift along x; None: the preset's (off)
min_lr_ratio: "Optional[float]" = None  # final learning rate of the cosine, as a fraction of lr; None: the preset's
matmul_backend: "Optional[str]" = None  # default | onednn (faster float32 CPU linear layers, equal to round-off); None: the preset's
fused_adamw: "Optional[bool]" = None  # one fused AdamW kernel per step; None: the preset's (off)
device: str = "auto"  # auto (a GPU per rank when visible) or cpu (hide GPUs)
lead_steps: int = 1  # lead time of one forecast in data steps (12 h for 12-hourly data)
loader: str = "trajectory"  # trajectory: every pair of the split (in memory); shards: ClimaX's in-shard pairs, streamed
eval_every: int = 50  # steps between validations (0: once per epoch)
checkpoint_every: int = 0  # steps between resumable checkpoints (0: final and best only)
train_dir: "Optional[str]" = None  # trainer output (metrics, checkpoints); None: {out_dir}/training
resume: "Optional[str]" = "auto"  # auto: continue from train_dir's latest checkpoint when there is one; None: fresh; or a checkpoint path
rollout_steps: int = 10  # autoregressive steps scored on the test split
train_rollout_steps: int = 1  # forecast steps per training sample (>1: loss over an autoregressive rollout; trajectory loader)
init_weights: "Optional[str]" = None  # exported surrogate to fine-tune (e.g. surrogate.pt of an earlier run); None: fresh weights
num_threads: "Optional[int]" = None  # torch CPU threads per rank; None: torch's default
seed: int = 0  # weights, data order, augmentation and dropout

# %%
import os

if device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch starts: every rank takes the CPU
import time
from pathlib import Path
from typing import Optional  # the parameters' annotations (papermill reads no "X | None")

import torch

from turbda_kit import surrogate as vit
from turbda_kit.data.shards import open_shards
from turbda_kit.errors import InputError
from turbda_kit.io import write_json
from turbda_kit.parallel import distributed as pdist
from turbda_kit.surrogate.training.data import training_datasets

if device not in ("auto", "cpu"):
    raise InputError(f"device={device!r}: use 'auto' (the trainer picks each rank's GPU) or 'cpu'")
if num_threads is not None:
    torch.set_num_threads(num_threads)
env = pdist.discover_env()  # a collective under MPI: every rank runs this cell
out = Path(out_dir)
root = Path(data_root) if data_root is not None else out / ".." / "02_preprocess" / "shards"
if not root.is_dir():
    raise InputError(f"data_root {root} not found: run 02_preprocess first or pass -p data_root DIR")
run_dir = Path(train_dir) if train_dir is not None else out / "training"
print(f"rank {env.rank} of {env.world_size} ({env.launcher}); shards {root}; output {run_dir}")

# %% [markdown]
# ## Data and model
# The model's grid and variables follow the shards (`match_data`); the preset fixes the
# architecture. Inputs and targets are normalised with the training-split statistics.

# %%
catalog = open_shards(root, hours_per_step=hours_per_step)
norm, hours = catalog.normaliser, catalog.hours_per_step
grid = {"img_size": catalog.grid_shape[0], "variables": catalog.variables} if match_data else {}
cfg = vit.load_vit_config(config, **grid)
tc = vit.TrainConfig.from_preset(
    config, world_size=env.world_size, strategy=strategy, sharding=sharding, zero_stage=zero_stage,
    max_steps=max_steps, max_epochs=epochs, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
    precision=precision, activation_checkpointing=activation_checkpointing,
    augment_x_shift=augment_x_shift, min_lr_ratio=min_lr_ratio, matmul_backend=matmul_backend,
    fused_adamw=fused_adamw, eval_every=eval_every, checkpoint_every=checkpoint_every,
    seed=seed)
train_data, val_data = training_datasets(catalog, loader=loader, lead_steps=lead_steps,
                                         rollout_steps=train_rollout_steps, seed=seed, env=env)
lead_hours = lead_steps * hours
if env.is_main:
    print(f"{cfg}\n{tc}\nlead {lead_hours:g} h; normalisation mean {norm.mean} K, std {norm.std} K")

# %% [markdown]
# ## Training
# Metrics go to `training/metrics.csv` and `scalars.jsonl`; resumable checkpoints to
# `training/checkpoints/`. Re-running with the same `train_dir` resumes (`resume="auto"`).

# %%
start = time.perf_counter()
result = vit.train(cfg, tc, train_data, run_dir, val_data=val_data, resume=resume,
                   denormalise=list(norm.std), env=env, init_weights=init_weights)
train_seconds = time.perf_counter() - start
pdist.shutdown()  # the rest runs on rank 0 from the exported weights
print(f"{result.step} steps in {train_seconds:.1f} s; best validation loss {result.best_val_loss} "
      f"at step {result.best_step}; stopped early: {result.stopped_early}")

# %% [markdown]
# ## Export and loss curves
# `surrogate.pt`: the best (lowest validation loss) weights with config, normaliser, lead
# time and provenance. `read_surrogate(path)` gives them back,
# `SurrogateModel.from_export(path)` the forecast model in K.

# %%
if env.is_main:
    from turbda_kit.viz.plots import field_panels, init_notebook, loss_curves, save

    init_notebook()  # the kit's convention: bokeh in the notebook, resources inline
    export_path = vit.export_surrogate(
        result.best_export_path or result.export_path, out / "surrogate.pt", normaliser=norm,
        lead_time_hours=lead_hours, hours_per_step=hours, metadata={"data_root": str(root.resolve())})
    model = vit.read_surrogate(export_path).model
    print("wrote", export_path, *save(loss_curves(result.history, f"ViT '{cfg.name}' loss"),
                                      out / "loss_curves"))

# %% [markdown]
# ## Rollout on the test days
# Autoregressive forecasts from every test state with a complete window, scored per lead
# against the truth, persistence and the training climatology (RMSE in K, pooled over
# windows and grid points); then the first test state's forecast at the first and last lead.

# %%
if env.is_main:
    from turbda_kit.viz.plots import prediction_panels, rollout_rmse_figure

    test = vit.score_test_split(model, catalog, rollout_steps, lead_steps)
    write_json(out / "scores.json", {
        **test.scores.to_dict(), "steps": result.step, "best_step": result.best_step,
        "best_val_loss": result.best_val_loss, "config": cfg.to_dict(),
        "train_config": tc.to_dict(), "world_size": env.world_size, "train_seconds": train_seconds})
    print(test.scores.table())
    km = {} if catalog.x is None else {"x_km": catalog.x / 1e3, "y_km": catalog.y / 1e3}
    panels = prediction_panels(test.truth, test.forecast, test.lead_hours)
    print("wrote", *save(rollout_rmse_figure(test.scores.to_dict()), out / "rollout_rmse"),
          *save(field_panels(panels, **km), out / "prediction_vs_truth"))
