"""Train the tiny ViT with several strategies in one parallel launch; write results JSON.

Launched by tests/surrogate/test_trainer.py with ``torchrun --standalone --nproc_per_node 2``
or ``mpiexec -n 2``. Cases: ``ddp``, ``fsdp:FULL_SHARD``, ``fsdp:SHARD_GRAD_OP``,
``fsdp:HYBRID_SHARD``, ``deepspeed:1`` ... ``deepspeed:3``.

For each case: 8 steps on one fixed global batch (the loss must fall; the logged learning
rates are recorded), the wrapped model's predictions on fixed inputs (to compare with the
exported weights on one process); for the ``--resume`` cases, an uninterrupted 7-step run
with dropout and validation against a run resumed from its step-4 checkpoint; for the
``--plant`` cases, the final checkpoint with a payload planted in each kind of file in
turn (``payloads.py``): every load must raise InputError and no payload may run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from payloads import file_kinds, payload_bytes, plant  # noqa: E402
from synthetic_data import ShiftDataset, ShiftRollouts  # noqa: E402

from turbda_kit.errors import InputError  # noqa: E402
from turbda_kit.parallel import distributed as pdist  # noqa: E402
from turbda_kit.surrogate import TrainConfig, Trainer, train  # noqa: E402
from turbda_kit.surrogate.config import load_vit_config  # noqa: E402
from turbda_kit.surrogate.training import checkpoint_files  # noqa: E402
from turbda_kit.surrogate.training.checkpoint import load_checkpoint  # noqa: E402

PER_RANK_BATCH = 2


def strategy_config(case: str, **changes) -> TrainConfig:
    """``strategy[:option][+ac][+bf16]`` -> TrainConfig (``+ac``: activation checkpointing)."""
    case, *flags = case.split("+")
    strategy, _, option = case.partition(":")
    extra = {"activation_checkpointing": "ac" in flags,
             "precision": "bf16" if "bf16" in flags else "fp32"}
    if strategy == "fsdp":
        extra["sharding"] = option
    elif strategy == "deepspeed":
        extra["zero_stage"] = int(option)
    values = dict(strategy=strategy, batch_size=PER_RANK_BATCH, lr=3e-3, warmup_steps=0,
                  log_every=1, seed=3, **extra)
    values.update(changes)
    return TrainConfig(**values)


def _attempt(load) -> str:
    """What a load did: "loaded", the InputError's message, or another error's name."""
    try:
        load()
    except InputError as err:
        return f"InputError: {err}"
    except Exception as err:   # recorded for the test to judge
        return f"{type(err).__name__}: {str(err)[:300]}"
    return "loaded"


def planted_loads(case: str, model_cfg, checkpoint: Path, out: Path, env) -> dict:
    """Load copies of ``checkpoint`` with a payload in each kind of file in turn."""
    config = strategy_config(case, max_steps=8, shuffle=False)
    device = pdist.device_for(env)
    trainer = Trainer(model_cfg, config, env, device, 8)
    results = {}
    for i, kind in enumerate(file_kinds(checkpoint)):
        destination = out / "planted" / str(i) / checkpoint.name
        marker = out / "planted" / f"ran-{i}"
        if env.is_main:
            plant(checkpoint, kind, destination, marker)
        pdist.barrier()
        outcome = _attempt(lambda d=destination: load_checkpoint(trainer.strategy, d, env,
                                                                 device))
        pdist.barrier()
        results[kind] = {"outcome": outcome, "marker": marker.exists(),
                         "file": str(destination / kind.partition(":")[0])}
    if config.strategy == "deepspeed":
        # Past the check: DeepSpeed's own load, every file planted (a swap after the check).
        destination = out / "planted" / "forced" / checkpoint.name
        marker = out / "planted" / "ran-forced"
        if env.is_main:
            shutil.rmtree(destination, ignore_errors=True)
            shutil.copytree(checkpoint, destination)
            for path in (destination / "deepspeed").rglob("*.pt"):
                path.write_bytes(payload_bytes(marker))
        pdist.barrier()

        def load() -> None:
            with checkpoint_files.deepspeed_loading():
                trainer.strategy.engine.load_checkpoint(str(destination / "deepspeed"),
                                                        tag="state")

        outcome = _attempt(load)
        pdist.barrier()
        results["deepspeed-forced"] = {"outcome": outcome, "marker": marker.exists(), "file": ""}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", required=True, help="comma-separated")
    parser.add_argument("--resume", default="", help="comma-separated cases to resume-test")
    parser.add_argument("--plant", default="", help="comma-separated cases to plant payloads in")
    parser.add_argument("--rollout", type=int, default=1,
                        help="train on rollouts of this many steps (targets (k, V, N, N))")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    env = pdist.discover_env()
    world = env.world_size
    model_cfg = load_vit_config("tiny")
    dropout_cfg = model_cfg.replace(drop_rate=0.1, drop_path_rate=0.1)
    fixed = (ShiftDataset(n_samples=PER_RANK_BATCH * world, seed=0) if args.rollout == 1 else
             ShiftRollouts(n_samples=PER_RANK_BATCH * world, seed=0, steps=args.rollout))
    shuffled = ShiftDataset(n_samples=3 * PER_RANK_BATCH * world, seed=1)
    val = ShiftDataset(n_samples=5, seed=2)      # uneven over 2 ranks on purpose
    probe = ShiftDataset(n_samples=3, seed=4)
    results: dict = {"world_size": world, "launcher": env.launcher, "cases": {}}
    for case in [c for c in args.cases.split(",") if c]:
        name = case.replace(":", "_").replace("+", "_")
        record: dict = {}
        start = time.perf_counter()
        try:
            res = train(model_cfg, strategy_config(case, max_steps=8,
                                                   shuffle=False),
                        fixed, out / name / "fixed", env=env, show_progress=False)
            record["fixed_losses"] = [res.step_losses[s] for s in sorted(res.step_losses)]
            record["lrs"] = [row["lr"] for row in res.history if row["kind"] == "train"]
            record["export_path"] = res.export_path
            inputs = torch.stack([probe[i][0] for i in range(3)])
            leads = torch.tensor([probe[i][2] for i in range(3)])
            pred = res.predict(inputs, leads)
            if env.is_main:
                torch.save(pred, out / name / "pred.pt")
            record["pred_path"] = str(out / name / "pred.pt")
            checkpoint = Path(res.last_checkpoint)
            del res
            if case in args.plant.split(","):
                record["planted"] = planted_loads(case, model_cfg, checkpoint, out / name, env)
            if case in args.resume.split(","):
                cfg_a = strategy_config(case, max_steps=7, checkpoint_every=2, keep_checkpoints=5,
                                        eval_every=3, grad_accum_steps=1)
                run_a = train(dropout_cfg, cfg_a, shuffled, out / name / "run_a", val_data=val,
                              env=env, show_progress=False)
                torch.manual_seed(12345)   # the resumed run must restore the RNG itself
                ckpt = out / name / "run_a" / "checkpoints" / "step_00000004"
                run_b = train(dropout_cfg, cfg_a, shuffled, out / name / "run_b", val_data=val,
                              resume=ckpt, env=env, show_progress=False)
                record["run_a"] = {str(k): v for k, v in run_a.step_losses.items()}
                record["run_b"] = {str(k): v for k, v in run_b.step_losses.items()}
                record["val_a"] = [r["val_loss"] for r in run_a.history if r["kind"] == "val"]
                record["val_b"] = [r["val_loss"] for r in run_b.history if r["kind"] == "val"]
        except Exception:
            record["error"] = traceback.format_exc()
            print(record["error"], file=sys.stderr, flush=True)
        record["seconds"] = time.perf_counter() - start
        results["cases"][case] = record
        pdist.barrier()
    if env.is_main:
        (out / "results.json").write_text(json.dumps(results, indent=1))
    pdist.shutdown()


if __name__ == "__main__":
    main()
