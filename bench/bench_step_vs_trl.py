"""Whole-process time of the same GRPO work in grpo and in TRL's GRPOTrainer, one after the other on this machine.

The work: recipes/tiny.yaml's settings (the demo model, data/arith/train.jsonl, 8 prompts x 8 completions a step,
48 new tokens at T=1, the `math` reward, token-mean loss, clip 0.2/0.28, no KL, one optimizer step per batch,
lr 1e-4), for --steps steps, no checkpoints. Each side runs in a fresh process, timed from launch to exit, so
imports, model loading and set-up count, as they do for a user. Needs `pip install trl` (not a grpo dependency).

    python bench/bench_step_vs_trl.py [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_grpo(steps: int, out: Path) -> tuple[float, list[float]]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "grpo.cli", "train", "recipes/tiny.yaml", f"train.steps={steps}",
                    f"output_dir={out}", "checkpoint.every=0", "logging.progress_bar=false",
                    "logging.samples_every=0"], cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - start
    rewards = [json.loads(line)["reward/mean"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return wall, rewards


def run_trl(steps: int, out: Path) -> tuple[float, list[float]]:
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--trl-worker", str(steps), str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "rewards.json").read_text())


def trl_worker(steps: int, out: Path) -> None:
    """TRL's GRPOTrainer configured to do what recipes/tiny.yaml does."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from grpo.recipe import load_recipe
    from grpo.data import load_rows
    from grpo.demo import resolve_demo_model
    from rewards.math import math_reward

    cfg = load_recipe(ROOT / "recipes/tiny.yaml")
    path = resolve_demo_model(cfg.model.path)
    rows = load_rows(str(ROOT / cfg.data.path), None, None, None)
    dataset = Dataset.from_list([{"prompt": cfg.data.prompt_template.format(**r), "answer": r["answer"]}
                                 for r in rows])
    group, prompts = cfg.sampler.group_size, cfg.train.prompts_per_step
    args = GRPOConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=group * prompts,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=cfg.train.mu,
        num_generations=group, max_completion_length=cfg.sampler.max_new_tokens,
        temperature=cfg.sampler.temperature, top_p=1.0, top_k=0, learning_rate=cfg.train.lr,
        lr_scheduler_type="constant", warmup_steps=0, beta=cfg.train.beta, epsilon=cfg.train.clip_low,
        epsilon_high=cfg.train.clip_high, loss_type="dapo", scale_rewards="group",
        max_grad_norm=cfg.train.max_grad_norm, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        gradient_checkpointing=False, logging_steps=1, seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=math_reward, args=args,
                          train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(path))
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    (out / "rewards.json").write_text(json.dumps(rewards))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trl-worker", nargs=2, metavar=("STEPS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(int(args.trl_worker[0]), Path(args.trl_worker[1]))
        return
    import torch
    import transformers
    import trl

    print(f"{args.steps} steps of 8 prompts x 8 completions x 48 new tokens, demo model, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
    walls: dict[str, list[float]] = {"grpo": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for name, run in (("grpo", run_grpo), ("trl", run_trl)):  # alternate, so drift hits both alike
                wall, rewards = run(args.steps, Path(tmp) / f"{name}-{round_index}")
                walls[name].append(wall)
                print(f"round {round_index + 1}  {name:<4}  {wall:6.1f} s  ({wall / args.steps:.2f} s/step whole "
                      f"process)  mean reward {statistics.fmean(rewards):.3f} over {len(rewards)} steps", flush=True)
    ours, theirs = statistics.median(walls["grpo"]), statistics.median(walls["trl"])
    print(f"median: grpo {ours:.1f} s, trl {theirs:.1f} s; trl / grpo = {theirs / ours:.2f}")


if __name__ == "__main__":
    main()
