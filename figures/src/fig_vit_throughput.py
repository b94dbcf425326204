# %% [markdown]
# # Figure — ViT training throughput against devices, per strategy
# Samples per second (whole job) and achieved model TFLOPS per device against the number
# of devices, one curve per distribution strategy (single process, DDP, FSDP, DeepSpeed
# ZeRO-k), read from the metrics the trainer logged (`metrics.csv`) in one or several
# training runs. The strategy and world size of each run come from its last checkpoint
# (`checkpoints/latest.json`) or, failing that, the `scores.json` of `03_train_vit`.
# Each run's throughput is the median over its logged intervals after the first
# `skip_first` (warm-up). Writes `fig_vit_throughput.png` / `.html` and
# `fig_vit_throughput.json` (the table).

# %% tags=["parameters"]
out_dir: str = "."  # where the figure goes (set by `turbda run`)
run_dirs: list = []  # training runs: 03_train_vit run directories, trainer output directories, or directories holding several; empty: the parent of out_dir
skip_first: int = 1  # logged intervals left out at the start of each run (warm-up)
title: str = ""  # prefix of the panel titles; empty: ViT training
html: bool = True  # also write the interactive HTML (bokeh)

# %%
from pathlib import Path

from turbda_kit.experiments.results import (
    as_json,
    default_run_dirs,
    find_training_runs,
    throughput_table,
)
from turbda_kit.io import write_json
from turbda_kit.viz.plots import save, show, throughput_figure

out = Path(out_dir)
training_runs = find_training_runs(default_run_dirs(run_dirs, out))
table = throughput_table(training_runs, skip_first=skip_first)
for run in training_runs:
    print(f"{run.strategy_label:>20} on {run.devices} device(s), {len(run.rows)} logged "
          f"intervals, {run.details}: {run.path}")

# %% [markdown]
# ## Table

# %%
columns = ["samples_per_s", "samples_per_s_per_device", "tokens_per_s", "tflops_per_device",
           "peak_mem_gb", "n_rows"]
frame = table[columns].to_dataframe().reset_index().drop(columns=["run", "path"])
print(frame.sort_values(["strategy", "devices"]).to_string(index=False, float_format="%.4g"))

# %% [markdown]
# ## The figure

# %%
figure = throughput_figure(table, title or "ViT training")
written = save(figure, out / "fig_vit_throughput", html=html)
write_json(out / "fig_vit_throughput.json", as_json({
    "skip_first": skip_first, "figures": written,
    "runs": [{**{c: table[c].values[i] for c in columns}, "strategy": run.strategy_label,
              "devices": run.devices, "path": run.path, **run.details}
             for i, run in enumerate(training_runs)]}))
print("wrote", *written)
show(figure)
