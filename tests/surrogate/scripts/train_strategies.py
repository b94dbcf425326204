"""Train the tiny ViT with several strategies in one parallel launch; write results JSON.

Launched by tests/surrogate/test_trainer.py with ``torchrun --standalone --nproc_per_node 2``
or ``mpiexec -n 2``. Cases: ``ddp``, ``fsdp:FULL_SHARD``, ``fsdp:SHARD_GRAD_OP``,
``fsdp:HYBRID_SHARD``, ``deepspeed:1`` ... ``deepspeed:3``.

For each case: 8 steps on one fixed global batch (the loss must fall), the wrapped model's
predictions on fixed inputs (to compare with the exported weights on one process) and, for
the ``--resume`` cases, an uninterrupted 7-step run with dropout and validation against a
run resumed from its step-4 checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_data import ShiftDataset, ShiftRollouts  # noqa: E402

from turbda_kit.parallel import distributed as pd  # noqa: E402
from turbda_kit.surrogate.config import load_vit_config  # noqa: E402
from turbda_kit.surrogate.trainer import TrainConfig, train  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", required=True, help="comma-separated")
    parser.add_argument("--resume", default="", help="comma-separated cases to resume-test")
    parser.add_argument("--rollout", type=int, default=1,
                        help="train on rollouts of this many steps (targets (k, V, N, N))")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    env = pd.discover_env()
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
            record["export_path"] = res.export_path
            inputs = torch.stack([probe[i][0] for i in range(3)])
            leads = torch.tensor([probe[i][2] for i in range(3)])
            pred = res.predict(inputs, leads)
            if env.is_main:
                torch.save(pred, out / name / "pred.pt")
            record["pred_path"] = str(out / name / "pred.pt")
            del res
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
        pd.barrier()
    if env.is_main:
        (out / "results.json").write_text(json.dumps(results, indent=1))
    pd.shutdown()


if __name__ == "__main__":
    main()
