"""The ViT trainer: schedule, validation of inputs, single-process runs, and every
distribution strategy on 2 gloo ranks (torchrun / mpiexec subprocesses)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.parallel import distributed as pdist
from turbda_kit.surrogate.config import load_vit_config
from turbda_kit.surrogate.export import load_surrogate
from turbda_kit.surrogate.training import (
    TrainConfig,
    build_deepspeed_config,
    load_train_config,
    rollout_loss,
    train,
    warmup_cosine,
)

from ..conftest import run_mpi

SCRIPTS = Path(__file__).resolve().parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from payloads import Payload, file_kinds, plant  # noqa: E402
from synthetic_data import ShiftDataset, ShiftRollouts, ShiftStream  # noqa: E402

TORCH_CASES = ["ddp", "fsdp:FULL_SHARD", "fsdp:SHARD_GRAD_OP+ac", "fsdp:HYBRID_SHARD",
               "fsdp:FULL_SHARD+bf16"]
TORCH_RESUME = ["ddp", "fsdp:FULL_SHARD"]
DS_CASES = ["deepspeed:0", "deepspeed:1", "deepspeed:2+ac", "deepspeed:3", "deepspeed:1+bf16"]
DS_RESUME = ["deepspeed:3"]
# Payloads are planted in every kind of checkpoint file of these (all strategies).
TORCH_PLANT = ["ddp", "fsdp:FULL_SHARD", "fsdp:SHARD_GRAD_OP+ac", "fsdp:HYBRID_SHARD"]
DS_PLANT = DS_CASES
FP32_CASES = [c for c in TORCH_CASES + DS_CASES if "bf16" not in c]


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the machine is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny():
    return load_vit_config("tiny")


def _launch(command: list[str], out: Path, timeout: float = 240) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "TURBDA_PLAIN_PROGRESS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    results = out / "results.json"
    assert done.returncode == 0 and results.exists(), done.stderr[-4000:]
    return json.loads(results.read_text())


def _torchrun(out: Path, cases: list[str], resume: list[str], plant: list[str]) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(SCRIPTS / "train_strategies.py"), "--out", str(out),
               "--cases", ",".join(cases), "--resume", ",".join(resume),
               "--plant", ",".join(plant)]
    return _launch(command, out)


@pytest.fixture(scope="module")
def torch_strategies(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("torch_strategies")
    return _torchrun(out, TORCH_CASES, TORCH_RESUME, TORCH_PLANT)["cases"]


@pytest.fixture(scope="module")
def deepspeed_strategies(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("deepspeed_strategies")
    return _torchrun(out, DS_CASES, DS_RESUME, DS_PLANT)["cases"]


@pytest.fixture(scope="module")
def single_process_reference(tmp_path_factory) -> list[float]:
    """The fixed-batch run of the scripts, on one process with the whole global batch."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("single")
    cfg = TrainConfig(strategy="none", batch_size=4, lr=3e-3, warmup_steps=0, log_every=1,
                      seed=3, max_steps=8, shuffle=False)
    result = train(load_vit_config("tiny"), cfg, ShiftDataset(n_samples=4, seed=0), out,
                   show_progress=False)
    return [result.step_losses[s] for s in sorted(result.step_losses)]


ROLLOUT_CASES = ["ddp", "fsdp:FULL_SHARD", "deepspeed:1"]


@pytest.fixture(scope="module")
def rollout_strategies(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("rollout_strategies")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(SCRIPTS / "train_strategies.py"), "--out", str(out),
               "--cases", ",".join(ROLLOUT_CASES), "--rollout", "3"]
    return _launch(command, out)["cases"]


def _case(results: dict, case: str) -> dict:
    record = results[case]
    assert "error" not in record, record["error"]
    return record


def _all_results(request, case: str) -> dict:
    name = "deepspeed_strategies" if case.startswith("deepspeed") else "torch_strategies"
    return _case(request.getfixturevalue(name), case)


# ----------------------------------------------------------------------------- pure parts


def test_warmup_cosine_closed_form():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)          # half-way down the cosine
    assert warmup_cosine(20, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(50, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    values = [warmup_cosine(s, 4, 20) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert warmup_cosine(7, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.7)))


@pytest.mark.parametrize("changes, words", [
    (dict(strategy="horovod"), ["strategy='horovod'", "ddp"]),
    (dict(strategy="fsdp", sharding="ZERO_SHARD"), ["sharding='ZERO_SHARD'", "FULL_SHARD"]),
    (dict(strategy="deepspeed", zero_stage=4), ["zero_stage=4", "0, 1, 2 or 3"]),
    (dict(precision="fp8"), ["precision='fp8'"]),
    (dict(batch_size=0), ["batch_size=0"]),
    (dict(max_steps=None, max_epochs=None), ["max_steps"]),
    (dict(betas=(0.9, 1.5)), ["betas"]),
])
def test_bad_train_config_raises(changes, words):
    with pytest.raises(InputError) as info:
        TrainConfig(**changes)
    for word in words:
        assert word in str(info.value)


def test_train_sections_of_presets_load():
    for name in ("tiny", "sqg_64", "sqg_128", "sqg_256", "sqg_64_coupled"):
        load_train_config(name)
    assert load_train_config("sqg_256").strategy == "deepspeed"
    with pytest.raises(InputError, match="unknown train config keys"):
        TrainConfig.from_dict({"strategy": "ddp", "learning_rate": 1e-3})


def test_from_preset_takes_none_as_the_presets_value():
    preset = load_train_config("sqg_64_cpu")
    assert TrainConfig.from_preset("sqg_64_cpu") == preset
    same = TrainConfig.from_preset("sqg_64_cpu", lr=None, batch_size=None, max_steps=None,
                                   precision=None, augment_x_shift=None)
    assert same == preset
    changed = TrainConfig.from_preset("sqg_64_cpu", lr=2e-4, augment_x_shift=True)
    assert (changed.lr, changed.augment_x_shift, changed.max_steps) == (2e-4, True, 4000)
    # Epochs without steps train by epochs; the preset's max_steps no longer applies.
    by_epochs = TrainConfig.from_preset("tiny", max_epochs=3)
    assert (by_epochs.max_epochs, by_epochs.max_steps) == (3, None)
    both = TrainConfig.from_preset("tiny", max_epochs=3, max_steps=10)
    assert (both.max_epochs, both.max_steps) == (3, 10)
    # No strategy given: none on one process, else the preset's (ddp for a 'none' preset).
    assert TrainConfig.from_preset("sqg_256").strategy == "none"
    assert TrainConfig.from_preset("sqg_256", world_size=8).strategy == "deepspeed"
    assert TrainConfig.from_preset("tiny", world_size=2).strategy == "ddp"
    assert TrainConfig.from_preset("tiny", world_size=2, strategy="fsdp").strategy == "fsdp"
    with pytest.raises(InputError, match="unknown train config keys"):
        TrainConfig.from_preset("tiny", learning_rate=1e-3)


def test_deepspeed_config_keeps_paper_knobs():
    cfg = build_deepspeed_config(TrainConfig(strategy="deepspeed", zero_stage=2, batch_size=3,
                                             grad_accum_steps=2, precision="bf16"), world_size=4)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 2
    assert zero["allgather_bucket_size"] == zero["reduce_bucket_size"] == 5e8
    assert zero["overlap_comm"] and zero["contiguous_gradients"] and not zero["reduce_scatter"]
    assert cfg["train_batch_size"] == 3 * 2 * 4
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert "optimizer" not in cfg


def test_discover_env_launchers():
    torchrun = pdist.discover_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h0",
                                "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.launcher) == (
        3, 4, 1, "torchrun")
    slurm = pdist.discover_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                             "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "frontier[00007-00008]",
                             "SLURM_JOB_ID": "123456"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.local_world_size) == (5, 8, 1, 4)
    assert slurm.master_addr == "frontier00007" and slurm.launcher == "slurm"
    assert slurm.master_port == 20000 + 123456 % 20000
    mpi = pdist.discover_env({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1",
                           "MASTER_ADDR": "n1", "MASTER_PORT": "999"}, use_mpi=False)
    assert (mpi.rank, mpi.world_size, mpi.local_rank, mpi.launcher) == (1, 2, 1, "mpi")
    ompi = pdist.discover_env({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4",
                            "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, use_mpi=False)
    assert (ompi.rank, ompi.world_size, ompi.local_rank) == (2, 4, 0)
    single = pdist.discover_env({})
    assert (single.rank, single.world_size, single.launcher) == (0, 1, "single")


def test_expand_slurm_nodelist():
    assert pdist.expand_slurm_nodelist("node[01-03,07],gpu1") == [
        "node01", "node02", "node03", "node07", "gpu1"]
    assert pdist.expand_slurm_nodelist("rack[1-2]-n[08-09]") == [
        "rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]
    assert pdist.expand_slurm_nodelist("login") == ["login"]


# ----------------------------------------------------------------------------- one process


def test_data_not_matching_the_config_is_refused_before_compute(tiny, tmp_path):
    cfg = TrainConfig(max_steps=2, batch_size=2)
    with pytest.raises(InputError, match="expects"):
        train(tiny, cfg, ShiftDataset(n_samples=4, img_size=16), tmp_path / "a")

    class Renamed(ShiftDataset):
        variables = ("u", "v")

    with pytest.raises(InputError, match="variables"):
        train(tiny, cfg, Renamed(n_samples=4), tmp_path / "b")
    with pytest.raises(InputError, match="fewer than one global batch"):
        train(tiny, cfg.replace(batch_size=8), ShiftDataset(n_samples=4), tmp_path / "c")
    with pytest.raises(InputError, match="fp16"):
        train(tiny, cfg.replace(precision="fp16"), ShiftDataset(n_samples=4), tmp_path / "d")
    assert not any(tmp_path.iterdir())


def test_single_process_run_checkpoints_exports_and_resumes(tiny, tmp_path, one_thread):
    model_cfg = tiny.replace(drop_rate=0.1, drop_path_rate=0.1)
    data, val = ShiftDataset(n_samples=12, seed=1), ShiftDataset(n_samples=5, seed=2)
    cfg = TrainConfig(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=7, log_every=1,
                      eval_every=3, checkpoint_every=2, keep_checkpoints=1, seed=5)
    full = train(model_cfg, cfg, data, tmp_path / "full", val_data=val,
                 denormalise=[2.0, 3.0], show_progress=False)
    assert sorted(full.step_losses) == list(range(1, 8))

    # Metrics: CSV with train and val rows, RMSE in K = std x normalised RMSE, JSONL scalars.
    rows = full.history
    val_rows = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in val_rows] == [3, 6, 7]
    for row in val_rows:
        assert row["val_rmse_sqg_10000_K"] == pytest.approx(3.0 * row["val_rmse_sqg_10000"])
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert all(r["samples_per_s"] > 0 and r["tflops_per_device"] > 0 for r in train_rows)
    header = (tmp_path / "full" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "lr", "samples_per_s", "tokens_per_s", "tflops_per_device",
            "peak_mem_gb", "val_loss", "val_rmse_sqg_0_K"} <= set(header)
    scalars = [json.loads(line) for line in
               (tmp_path / "full" / "scalars.jsonl").read_text().splitlines()]
    assert {"train/train_loss", "val/loss"} <= {s["tag"] for s in scalars}

    # Only the newest periodic checkpoint and the best one are kept.
    ckpts = tmp_path / "full" / "checkpoints"
    best = json.loads((ckpts / "best.json").read_text())
    kept = sorted(p.name for p in ckpts.glob("step_*"))
    assert kept == sorted({"step_00000007", best["name"]})
    assert best["val_loss"] == pytest.approx(full.best_val_loss)

    # Exported weights load on their own (weights_only) and reproduce the trained model.
    probe = torch.stack([val[i][0] for i in range(3)])
    leads = torch.tensor([val[i][2] for i in range(3)])
    exported, meta = load_surrogate(full.export_path)
    assert meta["step"] == 7
    torch.testing.assert_close(exported(probe, leads), full.predict(probe, leads))
    torch.load(full.export_path, weights_only=True)

    # resume=True continues from latest.json, here to a longer run.
    with pytest.warns(UserWarning, match="different learning-rate schedule"):
        longer = train(model_cfg, cfg.replace(max_steps=9), data, tmp_path / "full",
                       val_data=val, resume=True, show_progress=False)
    assert sorted(longer.step_losses) == [8, 9] and longer.step == 9
    # The best export is reported after a resume too (before a new best replaces it).
    assert longer.best_export_path and Path(longer.best_export_path).is_file()


def test_resume_reproduces_uninterrupted_losses_single_process(tiny, tmp_path, one_thread):
    model_cfg = tiny.replace(drop_rate=0.1, drop_path_rate=0.1)
    data = ShiftDataset(n_samples=12, seed=1)
    cfg = TrainConfig(batch_size=4, lr=3e-3, max_steps=7, log_every=1, checkpoint_every=4,
                      keep_checkpoints=3, seed=5)
    full = train(model_cfg, cfg, data, tmp_path / "full", show_progress=False)
    torch.manual_seed(999)
    resumed = train(model_cfg, cfg, data, tmp_path / "resumed", show_progress=False,
                    resume=tmp_path / "full" / "checkpoints" / "step_00000004")
    assert resumed.step_losses == {s: full.step_losses[s] for s in (5, 6, 7)}
    # The metrics history carries over the rows before the checkpoint.
    assert [r["step"] for r in resumed.history] == list(range(1, 8))


def test_resume_with_a_different_config_is_refused(tiny, tmp_path, one_thread):
    data = ShiftDataset(n_samples=4)
    cfg = TrainConfig(batch_size=4, max_steps=1)
    train(tiny, cfg, data, tmp_path, show_progress=False)
    with pytest.raises(InputError, match="different model config"):
        train(tiny.replace(depth=3), cfg.replace(max_steps=2), data, tmp_path, resume=True)
    with pytest.raises(InputError, match="batch_size"):
        train(tiny, cfg.replace(max_steps=2, batch_size=2), data, tmp_path, resume=True)
    with pytest.raises(InputError, match="strategy"):
        train(tiny, cfg.replace(strategy="deepspeed", max_steps=2), data, tmp_path, resume=True)
    with pytest.raises(InputError, match="does not exist"):
        train(tiny, cfg, data, tmp_path / "elsewhere", resume=True)


def test_resume_with_another_schedule_warns_and_continues(tiny, tmp_path, one_thread):
    data = ShiftDataset(n_samples=4)
    cfg = TrainConfig(batch_size=4, max_steps=1)
    train(tiny, cfg, data, tmp_path, show_progress=False)
    with pytest.warns(UserWarning, match="different learning-rate schedule"):
        result = train(tiny, cfg.replace(max_steps=2), data, tmp_path, resume=True,
                       show_progress=False)
    assert max(result.step_losses) == 2


def test_early_stopping_on_validation_loss(tiny, tmp_path, one_thread):
    # A large learning rate on a validation set unrelated to the training data: the
    # validation loss cannot keep improving, so patience 1 stops the run early.
    data = ShiftDataset(n_samples=4, seed=1)
    val = ShiftDataset(n_samples=4, seed=9)
    val.targets = -val.targets
    cfg = TrainConfig(batch_size=4, lr=5e-2, max_steps=40, eval_every=1, patience=1,
                      log_every=5)
    result = train(tiny, cfg, data, tmp_path, val_data=val, show_progress=False)
    assert result.stopped_early and result.step < 40
    assert result.best_step < result.step
    assert (tmp_path / "export" / "vit_best.pt").exists()


def test_the_logged_learning_rate_is_the_one_each_step_used(tiny, tmp_path, one_thread):
    cfg = TrainConfig(batch_size=4, lr=2e-3, warmup_steps=2, max_steps=6, log_every=1)
    result = train(tiny, cfg, ShiftDataset(n_samples=4), tmp_path, show_progress=False)
    logged = [row["lr"] for row in result.history if row["kind"] == "train"]
    assert logged == pytest.approx([2e-3 * warmup_cosine(s, 2, 6) for s in range(6)],
                                   rel=1e-12)


def test_flop_checks_need_the_math_attention_backend(tiny, one_thread):
    # torch's FlopCounterMode has no formula for the fused CPU attention kernel: under the
    # default backend it misses the attention products; with the MATH backend attention
    # is plain matmuls and the count equals the analytic one behind tflops_per_device.
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from turbda_kit.surrogate.flops import forward_flops
    from turbda_kit.surrogate.vit import ViT

    model = ViT(tiny, generator=torch.Generator().manual_seed(0)).eval()
    fields, leads = torch.zeros(1, 2, 32, 32), torch.full((1,), 12.0)
    counts = {}
    for name, backend in (("default", contextlib.nullcontext()),
                          ("math", sdpa_kernel(SDPBackend.MATH))):
        with torch.no_grad(), backend, FlopCounterMode(display=False) as counter:
            model(fields, leads)
        counts[name] = counter.get_total_flops() / forward_flops(tiny)
    assert counts["math"] == 1.0
    assert counts["default"] < 0.99


def test_iterable_dataset_and_accumulation_equivalences(tiny, tmp_path, one_thread):
    cfg = TrainConfig(batch_size=4, lr=3e-3, max_steps=3, log_every=1, shuffle=False)
    mapped = train(tiny, cfg, ShiftDataset(n_samples=8), tmp_path / "map", show_progress=False)
    streamed = train(tiny, cfg, ShiftStream(n_samples=8), tmp_path / "stream",
                     show_progress=False)
    accumulated = train(tiny, cfg.replace(batch_size=2, grad_accum_steps=2),
                        ShiftDataset(n_samples=8), tmp_path / "accum", show_progress=False)
    assert streamed.step_losses == mapped.step_losses
    for step, loss in mapped.step_losses.items():
        assert accumulated.step_losses[step] == pytest.approx(loss, rel=1e-5)


def test_bf16_and_activation_checkpointing_single_process(tiny, tmp_path, one_thread):
    data = ShiftDataset(n_samples=4)
    base = TrainConfig(batch_size=4, lr=3e-3, max_steps=6, log_every=1)
    fp32 = train(tiny, base, data, tmp_path / "fp32", show_progress=False)
    ckpt = train(tiny, base.replace(activation_checkpointing=True), data, tmp_path / "ac",
                 show_progress=False)
    bf16 = train(tiny, base.replace(precision="bf16"), data, tmp_path / "bf16",
                 show_progress=False)
    assert ckpt.step_losses == pytest.approx(fp32.step_losses, rel=1e-6)
    assert bf16.step_losses[6] < bf16.step_losses[1]
    assert bf16.step_losses[1] == pytest.approx(fp32.step_losses[1], rel=1e-2)


# ----------------------------------------------------------------------------- augmentation


def test_shift_along_x_rolls_each_sample_by_its_own_shift():
    from turbda_kit.surrogate.training.augment import shift_along_x

    fields = torch.randn(3, 2, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    shifts = torch.tensor([0, 1, 5])
    out = shift_along_x(fields, shifts)
    for b in range(3):
        torch.testing.assert_close(out[b], torch.roll(fields[b], int(shifts[b]), dims=-1),
                                   rtol=0, atol=0)
    assert torch.equal(shift_along_x(fields[:, 0], shifts), out[:, 0])   # (B, V, N, N) too


def test_x_shifts_are_a_pure_function_of_seed_epoch_and_micro_batch():
    from turbda_kit.surrogate.training.augment import x_shifts

    first = x_shifts(3, 0, 5, 16, 64)
    assert torch.equal(first, x_shifts(3, 0, 5, 16, 64))
    assert first.min() >= 0 and first.max() < 64 and first.dtype == torch.int64
    others = [x_shifts(4, 0, 5, 16, 64), x_shifts(3, 1, 5, 16, 64), x_shifts(3, 0, 6, 16, 64)]
    assert not any(torch.equal(first, other) for other in others)


def test_augmented_batches_shift_input_and_every_target_alike_on_any_number_of_ranks():
    from turbda_kit.surrogate.training.augment import shift_along_x, x_shifts
    from turbda_kit.surrogate.training.batches import train_batches

    data = ShiftRollouts(n_samples=8, seed=0, steps=2)
    plain_cfg = TrainConfig(batch_size=4, seed=7)
    cfg = plain_cfg.replace(augment_x_shift=True)
    one = pdist.DistEnv()
    for micro, (plain, shifted) in enumerate(zip(train_batches(data, plain_cfg, one, 1, 0),
                                                 train_batches(data, cfg, one, 1, 0))):
        shifts = x_shifts(7, 1, micro, 4, 32)
        torch.testing.assert_close(shifted[0], shift_along_x(plain[0], shifts), rtol=0, atol=0)
        torch.testing.assert_close(shifted[1], shift_along_x(plain[1], shifts), rtol=0, atol=0)
        assert torch.equal(shifted[2], plain[2])
    # Two ranks of two samples each see the halves of the one-rank batches.
    halves = cfg.replace(batch_size=2)
    ranks = [list(train_batches(data, halves, pdist.DistEnv(rank=r, world_size=2), 1, 0))
             for r in (0, 1)]
    for micro, whole in enumerate(train_batches(data, cfg, one, 1, 0)):
        joined = torch.cat([ranks[0][micro][0], ranks[1][micro][0]])
        torch.testing.assert_close(joined, whole[0], rtol=0, atol=0)
    # Resuming at micro-batch 1 draws the shifts of an uninterrupted epoch.
    resumed = next(iter(train_batches(data, cfg, one, 1, 1)))
    torch.testing.assert_close(resumed[1], list(train_batches(data, cfg, one, 1, 0))[1][1],
                               rtol=0, atol=0)


def test_training_with_x_shifts_learns_and_resumes_exactly(tiny, tmp_path, one_thread):
    data = ShiftDataset(n_samples=12, seed=1)
    cfg = TrainConfig(batch_size=4, lr=3e-3, max_steps=7, log_every=1, checkpoint_every=4,
                      keep_checkpoints=3, seed=5, augment_x_shift=True)
    full = train(tiny, cfg, data, tmp_path / "full", show_progress=False)
    plain = train(tiny, cfg.replace(augment_x_shift=False), data, tmp_path / "plain",
                  show_progress=False)
    assert full.step_losses[2] != plain.step_losses[2]     # other samples after step 1
    resumed = train(tiny, cfg, data, tmp_path / "resumed", show_progress=False,
                    resume=tmp_path / "full" / "checkpoints" / "step_00000004")
    assert resumed.step_losses == {s: full.step_losses[s] for s in (5, 6, 7)}
    with pytest.raises(InputError, match="augment_x_shift"):
        train(tiny, cfg.replace(augment_x_shift=False), data, tmp_path / "other",
              resume=tmp_path / "full" / "checkpoints" / "step_00000004")
    with pytest.raises(InputError, match="augment_x_shift"):
        TrainConfig(augment_x_shift=1)


# ----------------------------------------------------------------------------- safe resume


def _assert_refused(message: str, planted_file: Path, ran: bool) -> None:
    assert message.startswith("InputError"), message
    assert str(planted_file) in message, message            # names the file
    assert "weights_only=False" not in message               # never the advice that runs it
    assert not ran, "the payload ran"


def test_a_payload_planted_in_any_checkpoint_file_is_refused_and_never_runs(tiny, tmp_path,
                                                                           one_thread):
    data = ShiftDataset(n_samples=4)
    cfg = TrainConfig(batch_size=2, max_steps=2, log_every=1)
    checkpoint = Path(train(tiny, cfg, data, tmp_path / "run", show_progress=False)
                      .last_checkpoint)
    kinds = file_kinds(checkpoint)
    assert set(kinds) == {"dcp/.metadata", "dcp/__0_0.distcp:tensor", "dcp/__0_0.distcp:bytes",
                          "extras.pt", "rng_rank00000.pt"}
    for i, kind in enumerate(kinds):
        marker = tmp_path / f"ran-{i}"
        copy = tmp_path / "planted" / str(i) / checkpoint.name
        planted = plant(checkpoint, kind, copy, marker)
        try:
            train(tiny, cfg, data, tmp_path / f"resumed-{i}", resume=copy, show_progress=False)
            outcome = "loaded"
        except InputError as err:
            outcome = f"InputError: {err}"
        _assert_refused(outcome, planted, marker.exists())
        assert "nothing in it ran" in outcome or "not readable" in outcome, outcome
    # The payloads are live: an unrestricted load of the same files runs them.
    live = tmp_path / "live"
    plant(checkpoint, "extras.pt", tmp_path / "live-copy", live)
    torch.load(tmp_path / "live-copy" / "extras.pt", weights_only=False)
    assert live.exists()


def test_resume_auto_refuses_a_planted_latest_checkpoint(tiny, tmp_path, one_thread):
    # The reported attack: replace dcp/.metadata of the checkpoint latest.json names.
    data = ShiftDataset(n_samples=4)
    cfg = TrainConfig(batch_size=2, max_steps=2)
    run = train(tiny, cfg, data, tmp_path, show_progress=False)
    metadata = Path(run.last_checkpoint) / "dcp" / ".metadata"
    marker = tmp_path / "ran"
    metadata.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(InputError) as info:
        train(tiny, cfg, data, tmp_path, resume="auto", show_progress=False)
    _assert_refused(f"InputError: {info.value}", metadata, marker.exists())
    assert "posix.system" in str(info.value) or "os.system" in str(info.value)


def test_checkpoint_pointers_name_only_checkpoints_beside_them(tiny, tmp_path, one_thread):
    data = ShiftDataset(n_samples=4)
    cfg = TrainConfig(batch_size=2, max_steps=1)
    train(tiny, cfg, data, tmp_path, show_progress=False)
    (tmp_path / "checkpoints" / "latest.json").write_text('{"name": "../../elsewhere"}')
    with pytest.raises(InputError, match="not a step_XXXXXXXX"):
        train(tiny, cfg, data, tmp_path, resume=True, show_progress=False)


# ----------------------------------------------------------------------------- atomic saves


class Killed(Exception):
    """Stands for the job being killed at that moment."""


def _kill_at(monkeypatch, where: str, step: int) -> None:
    """Make the save of ``step`` fail at one moment of writing/publishing a checkpoint."""
    from turbda_kit.surrogate.training import checkpoint as keeper
    from turbda_kit.surrogate.training import checkpoint_files as files

    def failing(module, name, applies):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            if applies(*args, **kwargs):
                raise Killed(where)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    tag = f"step_{step:08d}"
    if where == "writing":        # a rank's files half written
        failing(files, "save_rng_state", lambda directory, *a: tag in str(directory))
    elif where == "renaming":     # complete, not yet renamed into place
        failing(keeper, "_rename_into_place", lambda tmp, final: tag in final.name)
    elif where == "pointing":     # renamed, latest.json not yet switched
        failing(keeper, "_point", lambda pointer, record: record["step"] == step)
    elif where == "pruning":      # latest.json switched, older ones not yet deleted
        failing(keeper, "_prune", lambda root, keep: tag in (root / "latest.json").read_text())


MOMENTS = ["writing", "renaming", "pointing", "pruning"]


@pytest.mark.parametrize("where", MOMENTS)
def test_a_kill_while_saving_leaves_a_loadable_checkpoint(tiny, tmp_path, one_thread,
                                                         monkeypatch, where):
    data = ShiftDataset(n_samples=8, seed=1)
    cfg = TrainConfig(batch_size=4, lr=3e-3, max_steps=4, log_every=1, checkpoint_every=2,
                      keep_checkpoints=1, seed=5)
    full = train(tiny, cfg, data, tmp_path / "full", show_progress=False)
    with monkeypatch.context() as patch:
        _kill_at(patch, where, step=4)
        with pytest.raises(Killed):
            train(tiny, cfg, data, tmp_path / "run", show_progress=False)
    root = tmp_path / "run" / "checkpoints"
    latest = json.loads((root / "latest.json").read_text())
    assert (root / latest["name"] / "trainer_state.json").is_file()
    resumed = train(tiny, cfg, data, tmp_path / "run", resume=True, show_progress=False)
    assert resumed.step == 4
    assert resumed.step_losses == {s: full.step_losses[s] for s in resumed.step_losses}
    assert set(resumed.step_losses) == ({3, 4} if latest["step"] == 2 else set())


@pytest.mark.parametrize("where", MOMENTS)
def test_a_kill_while_replacing_a_checkpoint_of_the_same_step_leaves_one(tiny, tmp_path,
                                                                         one_thread,
                                                                         monkeypatch, where):
    # A rerun from step 2 saves step 4 again while the first run's step_00000004 exists:
    # the old one must stay until the new one is in place and pointed at.
    data = ShiftDataset(n_samples=8, seed=1)
    cfg = TrainConfig(batch_size=4, lr=3e-3, max_steps=4, log_every=1, checkpoint_every=2,
                      keep_checkpoints=2, seed=5)
    full = train(tiny, cfg, data, tmp_path, show_progress=False)
    root = tmp_path / "checkpoints"
    with monkeypatch.context() as patch:
        _kill_at(patch, where, step=4)
        with pytest.raises(Killed):
            train(tiny, cfg, data, tmp_path, resume=root / "step_00000002",
                  show_progress=False)
    latest = json.loads((root / "latest.json").read_text())
    assert latest["step"] == 4 and (root / latest["name"] / "trainer_state.json").is_file()
    again = train(tiny, cfg, data, tmp_path, resume=True, show_progress=False)
    assert again.step == 4 and not again.step_losses
    torch.testing.assert_close(load_surrogate(again.export_path)[0].state_dict(),
                               load_surrogate(full.export_path)[0].state_dict())


def test_a_rerun_of_the_same_step_gets_a_fresh_directory_and_the_old_one_goes(tiny, tmp_path,
                                                                             one_thread):
    data = ShiftDataset(n_samples=8, seed=1)
    cfg = TrainConfig(batch_size=4, max_steps=4, checkpoint_every=2, keep_checkpoints=2)
    train(tiny, cfg, data, tmp_path, show_progress=False)
    root = tmp_path / "checkpoints"
    train(tiny, cfg.replace(keep_checkpoints=1), data, tmp_path, resume=root / "step_00000002",
          show_progress=False)
    assert json.loads((root / "latest.json").read_text())["name"] == "step_00000004.1"
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step_00000004.1"]


# ----------------------------------------------------------------------------- distributed


@pytest.mark.distributed
@pytest.mark.parametrize("case", TORCH_CASES + DS_CASES)
def test_strategy_trains_and_loss_decreases(request, case):
    losses = _all_results(request, case)["fixed_losses"]
    assert len(losses) == 8
    assert losses[-1] < 0.99 * losses[0]


@pytest.mark.distributed
def test_all_strategies_start_from_the_same_loss(request, single_process_reference):
    # Same seed, same global batch: identical initial weights and data on 1 or 2 ranks.
    reference = single_process_reference
    for case in FP32_CASES:
        losses = _all_results(request, case)["fixed_losses"]
        assert losses[0] == pytest.approx(reference[0], rel=1e-6), case
        # fp32 strategies follow the same trajectory (up to reduction order).
        assert losses == pytest.approx(reference, rel=1e-4), case
    for case in (c for c in TORCH_CASES + DS_CASES if "bf16" in c):
        assert _all_results(request, case)["fixed_losses"][0] == pytest.approx(
            reference[0], rel=1e-2), case


@pytest.mark.distributed
@pytest.mark.parametrize("case", TORCH_PLANT + DS_PLANT)
def test_a_payload_in_any_checkpoint_file_is_refused_on_two_ranks(request, case):
    planted = _all_results(request, case)["planted"]
    kinds = set(planted) - {"deepspeed-forced"}
    assert {"rng_rank00000.pt", "rng_rank00001.pt"} <= kinds
    if case.startswith("deepspeed"):
        assert len([k for k in kinds if k.startswith("deepspeed/state/")]) >= 1
        # Past the check, DeepSpeed's own load is forced weights-only: refused, not run.
        forced = planted["deepspeed-forced"]
        assert forced["outcome"] != "loaded" and not forced["marker"], forced
    else:
        assert "dcp/.metadata" in kinds and "extras.pt" in kinds
        assert any(k.endswith(":tensor") for k in kinds) and any(k.endswith(":bytes")
                                                                  for k in kinds)
    for kind in sorted(kinds):
        record = planted[kind]
        _assert_refused(record["outcome"], Path(record["file"]), record["marker"])


@pytest.mark.distributed
def test_every_strategy_logs_the_learning_rate_its_step_used(request):
    # The scripts' runs: lr 3e-3, no warm-up, cosine over 8 steps, a row every step.
    expected = [3e-3 * warmup_cosine(s, 0, 8) for s in range(8)]
    for case in ("ddp", "fsdp:FULL_SHARD", "deepspeed:1", "deepspeed:3"):
        assert _all_results(request, case)["lrs"] == pytest.approx(expected, rel=1e-12), case


@pytest.mark.distributed
@pytest.mark.parametrize("case", TORCH_RESUME + DS_RESUME)
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(request, case):
    record = _all_results(request, case)
    uninterrupted = {int(k): v for k, v in record["run_a"].items()}
    resumed = {int(k): v for k, v in record["run_b"].items()}
    assert sorted(resumed) == [5, 6, 7]
    assert resumed == {s: uninterrupted[s] for s in resumed}
    assert record["val_b"] == record["val_a"]


@pytest.mark.distributed
@pytest.mark.parametrize("case", TORCH_CASES + DS_CASES)
def test_exported_weights_reproduce_the_trained_model(request, case):
    record = _all_results(request, case)
    model, meta = load_surrogate(record["export_path"])
    probe = ShiftDataset(n_samples=3, seed=4)
    inputs = torch.stack([probe[i][0] for i in range(3)])
    leads = torch.tensor([probe[i][2] for i in range(3)])
    expected = torch.load(record["pred_path"], weights_only=True)
    with torch.no_grad():
        got = model(inputs, leads)
    tolerance = dict(rtol=2e-2, atol=2e-2) if "bf16" in case else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.distributed
@pytest.mark.mpi
def test_mpiexec_launch_matches_torchrun(tmp_path, torch_strategies):
    done = run_mpi(2, [str(SCRIPTS / "train_strategies.py"), "--out", str(tmp_path),
                       "--cases", "ddp"], timeout=240,
                   env={"DS_ACCELERATOR": "cpu", "TURBDA_PLAIN_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["launcher"] == "mpi" and results["world_size"] == 2
    record = _case(results["cases"], "ddp")
    assert record["fixed_losses"] == _case(torch_strategies, "ddp")["fixed_losses"]


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tiny, tmp_path, one_thread):
    # torch.compile (inductor) builds C++ kernels on CPU: minutes on first use.
    data = ShiftDataset(n_samples=4)
    base = TrainConfig(batch_size=4, lr=3e-3, max_steps=3, log_every=1)
    eager = train(tiny, base, data, tmp_path / "eager", show_progress=False)
    compiled = train(tiny, base.replace(compile=True), data, tmp_path / "compiled",
                     show_progress=False)
    assert compiled.step_losses == pytest.approx(eager.step_losses, rel=1e-4)
    # Compilation must not rename parameters: the export loads into a plain ViT.
    load_surrogate(compiled.export_path)


# ----------------------------------------------------------------------------- rollouts


def test_rollout_loss_is_the_mean_of_the_autoregressive_step_losses(tiny, one_thread):
    from turbda_kit.surrogate.vit import ViT

    model = ViT(tiny, generator=torch.Generator().manual_seed(0))
    data = ShiftRollouts(n_samples=3, seed=0, steps=2)
    inputs = torch.stack([data[i][0] for i in range(3)])
    targets = torch.stack([data[i][1] for i in range(3)])
    leads = torch.tensor([float(data[i][2]) for i in range(3)])
    loss = rollout_loss(model, inputs, targets, leads)
    first = model(inputs, leads)
    second = model(first, leads)
    manual = (torch.nn.functional.mse_loss(first, targets[:, 0])
              + torch.nn.functional.mse_loss(second, targets[:, 1])) / 2
    torch.testing.assert_close(loss, manual, rtol=0, atol=0)
    # One step stacked as (B, 1, V, N, N) is the plain loss.
    one = rollout_loss(model, inputs, targets[:, :1], leads)
    plain = rollout_loss(model, inputs, targets[:, 0], leads)
    assert one.item() == plain.item()
    # The gradient runs through the whole rollout: the second step changes it.
    grad_roll = torch.autograd.grad(loss, model.head[-1].weight)[0]
    grad_first = torch.autograd.grad(rollout_loss(model, inputs, targets[:, 0], leads) / 2,
                                     model.head[-1].weight)[0]
    assert not torch.allclose(grad_roll, grad_first)


def test_training_on_one_step_rollouts_equals_plain_training(tiny, tmp_path, one_thread):
    class Stacked(torch.utils.data.Dataset):
        variables = ShiftDataset.variables

        def __init__(self, base):
            self.base = base

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            x, y, lead = self.base[i]
            return x, y[None], lead

    cfg = TrainConfig(batch_size=4, lr=3e-3, log_every=1, max_steps=4, seed=1, eval_every=2)
    data, val = ShiftDataset(n_samples=8, seed=0), ShiftDataset(n_samples=5, seed=2)
    plain = train(tiny, cfg, data, tmp_path / "plain", val_data=val, show_progress=False)
    stacked = train(tiny, cfg, Stacked(data), tmp_path / "stacked", val_data=Stacked(val),
                    show_progress=False)
    assert stacked.step_losses == plain.step_losses
    def val_rows(result):
        return [{k: v for k, v in r.items() if k != "wall_time"}
                for r in result.history if r["kind"] == "val"]

    assert val_rows(stacked) == val_rows(plain)


def test_rollout_training_learns_and_validates(tiny, tmp_path, one_thread):
    cfg = TrainConfig(batch_size=4, lr=3e-3, log_every=1, max_steps=8, seed=1, eval_every=4,
                      shuffle=False)
    data = ShiftRollouts(n_samples=4, seed=0, steps=3)
    result = train(tiny, cfg, data, tmp_path / "run", val_data=ShiftRollouts(5, seed=2, steps=3),
                   show_progress=False, denormalise=[2.0, 3.0])
    losses = [result.step_losses[s] for s in sorted(result.step_losses)]
    assert losses[-1] < 0.98 * losses[0]
    val = [r for r in result.history if r["kind"] == "val"]
    assert len(val) >= 2 and all(math.isfinite(r["val_loss"]) for r in val)
    assert val[-1]["val_rmse_sqg_0_K"] == pytest.approx(2.0 * val[-1]["val_rmse_sqg_0"])


def test_fine_tuning_starts_from_the_given_weights(tiny, tmp_path, one_thread):
    cfg = TrainConfig(batch_size=4, lr=3e-3, log_every=1, max_steps=3, seed=1, shuffle=False)
    data = ShiftDataset(n_samples=4, seed=0)
    first = train(tiny, cfg, data, tmp_path / "first", show_progress=False)
    model, _ = load_surrogate(first.export_path)
    inputs = torch.stack([data[i][0] for i in range(4)])
    targets = torch.stack([data[i][1] for i in range(4)])
    leads = torch.tensor([float(data[i][2]) for i in range(4)])
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model(inputs, leads), targets).item()
    tuned = train(tiny, cfg.replace(seed=5), data, tmp_path / "tuned", show_progress=False,
                  init_weights=first.export_path)
    # The first step's loss is computed before the update: from the exported weights.
    assert tuned.step_losses[1] == pytest.approx(expected, rel=1e-6)
    assert tuned.step_losses[1] < first.step_losses[1]  # not the fresh start
    with pytest.raises(InputError, match="embed_dim"):
        train(tiny.replace(embed_dim=tiny.embed_dim * 2), cfg, data, tmp_path / "bad",
              show_progress=False, init_weights=first.export_path)


def test_rollout_items_of_a_trajectory():
    from turbda_kit.surrogate.rollout import TrajectoryPairs

    class Identity:
        variables = ("sqg_0", "sqg_10000")

        def normalise(self, x):
            return x

    trajectory = torch.arange(10 * 2 * 4 * 4, dtype=torch.float32).reshape(10, 2, 4, 4)
    pairs = TrajectoryPairs(trajectory, Identity(), lead_steps=2, rollout_steps=3)
    assert len(pairs) == 10 - 6
    x, y, lead = pairs[1]
    assert torch.equal(x, trajectory[1]) and y.shape == (3, 2, 4, 4)
    assert all(torch.equal(y[j], trajectory[1 + 2 * (j + 1)]) for j in range(3))
    assert float(lead) == 24.0
    assert torch.equal(pairs[-1][1][-1], trajectory[9])
    with pytest.raises(InputError, match="at least 7"):
        TrajectoryPairs(trajectory[:6], Identity(), lead_steps=2, rollout_steps=3)
    with pytest.raises(InputError, match="rollout_steps"):
        TrajectoryPairs(trajectory, Identity(), rollout_steps=0)


def test_rollout_targets_of_the_wrong_shape_are_refused(tiny, tmp_path):
    class Bad(ShiftRollouts):
        def __getitem__(self, i):
            x, y, lead = super().__getitem__(i)
            return x, y[:, :1], lead

    with pytest.raises(InputError, match="steps, vars, N, N"):
        train(tiny, TrainConfig(batch_size=2, max_steps=1), Bad(4, steps=2), tmp_path,
              show_progress=False)


@pytest.mark.distributed
@pytest.mark.parametrize("case", ROLLOUT_CASES)
def test_rollout_training_on_two_ranks_equals_one_process(rollout_strategies, case, tmp_path,
                                                          one_thread):
    cfg = TrainConfig(strategy="none", batch_size=4, lr=3e-3, warmup_steps=0, log_every=1,
                      seed=3, max_steps=8, shuffle=False)
    reference = train(load_vit_config("tiny"), cfg, ShiftRollouts(n_samples=4, seed=0, steps=3),
                      tmp_path, show_progress=False)
    expected = [reference.step_losses[s] for s in sorted(reference.step_losses)]
    losses = _case(rollout_strategies, case)["fixed_losses"]
    assert losses == pytest.approx(expected, rel=1e-4)
    assert losses[-1] < 0.99 * losses[0]


def test_onednn_matmuls_and_fused_adamw_follow_the_default_run(tiny, tmp_path, one_thread):
    """The speed options change kernels, not the maths: losses agree to round-off."""
    data = ShiftDataset(n_samples=8, img_size=32)
    cfg = TrainConfig(batch_size=4, max_steps=4, lr=1e-3, log_every=1, seed=3)
    default = train(tiny, cfg, data, tmp_path / "default", show_progress=False)
    fast = train(tiny, cfg.replace(matmul_backend="onednn", fused_adamw=True), data,
                 tmp_path / "fast", show_progress=False)
    steps = sorted(default.step_losses)
    assert steps == sorted(fast.step_losses) and len(steps) == 4
    for step in steps:
        assert math.isclose(default.step_losses[step], fast.step_losses[step], rel_tol=1e-4)
    with pytest.raises(InputError, match="matmul_backend"):
        cfg.replace(matmul_backend="mkl")
    with pytest.raises(InputError, match="fused_adamw"):
        cfg.replace(fused_adamw="yes")
