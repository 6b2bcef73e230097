"""Generation ahead of training on this CPU: the tiny recipe with the sampler in its own process
(sampler.backend=hf_worker), train.max_staleness = 0 (sample, then train) against 1 (the next step generated
while this one trains), with the trainer pinned to one core and the worker to another (one torch thread each), so
the two can overlap. Whole `grpo train` processes, the two settings alternated --repeats times; the figures are
medians over each run's steps after the first two (start-up), and the ratio k=1 / k=0 is the result.

    python bench/bench_async.py [--steps 30] [--repeats 2] [--trainer-core 0] [--worker-core 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("time/step_s", "time/wait_generate_s", "time/wait_train_s", "time/generate_s", "time/train_s",
           "time/sync_s", "async/staleness_mean")


def run(k: int, steps: int, trainer_core: int, worker_core: int, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "grpo", "train", str(ROOT / "recipes" / "tiny.yaml"), f"output_dir={out}",
           f"train.steps={steps}", f"train.max_staleness={k}", "sampler.backend=hf_worker",
           f"sampler.worker.cores=[{worker_core}]", "sampler.worker.threads=1", "checkpoint.every=0",
           "logging.samples_every=0", "logging.progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, {trainer_core}))
    if done.returncode:
        raise SystemExit(f"k={k}: grpo train failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[2:] or rows
    figures = {key: statistics.median(r.get(key, 0.0) for r in timed) for key in FIGURES}
    figures["async/staleness_max"] = max(r.get("async/staleness_max", 0) for r in rows)
    figures["reward_first"] = statistics.mean(r["reward/mean"] for r in rows[:5])
    figures["reward_last"] = statistics.mean(r["reward/mean"] for r in rows[-5:])
    return figures


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--trainer-core", type=int, default=0)
    p.add_argument("--worker-core", type=int, default=1)
    args = p.parse_args()
    results: dict[int, list[dict[str, float]]] = {0: [], 1: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for k in ((0, 1) if repeat % 2 == 0 else (1, 0)):  # alternate which side goes first
                out = Path(tmp) / f"k{k}-{repeat}"
                results[k].append(run(k, args.steps, args.trainer_core, args.worker_core, out))
                print(f"k={k} run {repeat + 1}: " + ", ".join(f"{key} {v:.3f}" for key, v in results[k][-1].items()),
                      flush=True)
    summary = {k: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for k, runs in results.items()}
    print(f"\n{'median over runs':<24}{'k=0':>10}{'k=1':>10}")
    for key in summary[0]:
        print(f"{key:<24}{summary[0][key]:>10.3f}{summary[1][key]:>10.3f}")
    print(f"\nstep time k=1 / k=0: {summary[1]['time/step_s'] / summary[0]['time/step_s']:.2f} "
          f"({args.steps} steps, trainer on core {args.trainer_core}, worker on core {args.worker_core}, "
          f"{args.repeats} runs each)")


if __name__ == "__main__":
    main()
