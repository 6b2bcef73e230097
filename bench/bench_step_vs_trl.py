"""The same GRPO work in grpo and in TRL's GRPOTrainer, on this machine's CPU: per-step and whole-process time,
peak memory and reward.

Workloads (--workloads, comma-separated):
  tiny     recipes/tiny.yaml as it is: the demo model, 8 prompts x 8 completions x 48 new tokens a step.
  smollm2  SmolLM2-135M-Instruct (576 hidden, 30 layers, 49k vocab; `make smollm2` converts it) with
           recipes/smollm2-135m-cpu.yaml's data and chat template, but beta=0 (no reference model), the math
           reward only, clip 0.2/0.28, 2 prompts x 4 completions x 64 new tokens.
Both sides get one config: the recipe with overrides is resolved by grpo, passed to `grpo train` as key=value
overrides, and translated into TRL's GRPOConfig (T=1, top_p 1, no top-k, constant lr, AdamW with grpo's betas,
dapo = token_mean, scale_rewards=group, one optimizer step per batch in one pass, fp32, on a transformers model).
How each side computes that is its own: TRL samples with transformers' generate and trains on padded rows; grpo's
hf backend runs its own decoding loop (one prefill per prompt) and packs the rows (train.packing=auto).
TRL gets the prompts grpo will draw, in grpo's order and rendered by grpo (its own tokenization of them is
checked to give grpo's token ids), so step k trains on the same prompts on both sides; the samples differ.

Each run is a fresh child process, grpo and TRL alternating within a round. Reported per side: the median step
time over steps 3.. (grpo: time/step_s from metrics.jsonl; TRL: a callback's clock at each on_step_end), launch to
exit time and CPU time, the peak RSS of the process tree's largest process (os.wait4), the mean reward over all
steps and over the last three; for grpo also its step's parts. Medians over rounds; JSON to --json.
grpo always writes a final checkpoint (there is no switch for it); its estimated cost is shown, TRL writes none.

Needs TRL, which is never a grpo dependency: `make bench-trl` builds .venv-bench (bench/trl_env.sh) and runs

    .venv-bench/bin/python bench/bench_step_vs_trl.py [--workloads tiny,smollm2] [--steps N] [--rounds N]
        [--threads N] [--json /tmp/bench_step_vs_trl.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COMMON = ["checkpoint.every=0", "logging.progress_bar=false", "logging.samples_every=0",
          "logging.tensorboard=false", "device=cpu"]
WORKLOADS = {
    "tiny": {"recipe": "recipes/tiny.yaml", "overrides": [], "steps": 20, "rounds": 3},
    "smollm2": {"recipe": "recipes/smollm2-135m-cpu.yaml", "steps": 6, "rounds": 2, "overrides": [
        "train.beta=0", "rewards=[{name: math, weight: 1.0}]", "train.prompts_per_step=2", "sampler.group_size=4",
        "sampler.max_new_tokens=64", "train.clip_high=0.28", "train.micro_batch_size=8"]},
}
WARMUP_STEPS = 2  # the first steps carry one-off costs (allocator growth, lazy imports, the sympy worker start)


def prepare(name: str, steps: int, out: Path) -> tuple[list[str], dict]:
    """The grpo command line and the TRL worker's job for one workload, both from one resolved recipe."""
    from grpo.data import PromptRenderer, PromptStream, load_rows, usable_rows
    from grpo.modeling import load_tokenizer, resolve_model_path
    from grpo.recipe import load_recipe

    spec = WORKLOADS[name]
    overrides = [*spec["overrides"], *COMMON, f"train.steps={steps}"]
    cfg = load_recipe(ROOT / spec["recipe"], overrides)
    t, s, B, G = cfg.train, cfg.sampler, cfg.train.prompts_per_step, cfg.sampler.group_size
    # Settings the translation below assumes; anything else would make the two sides do different work.
    assert [(r.name, r.weight, r.args) for r in cfg.rewards] == [("math", 1.0, {})], cfg.rewards
    assert (t.advantage, t.loss, t.loss_aggregation, t.lr_schedule, t.warmup_steps, t.entropy_coef, t.mu,
            t.dynamic_sampling, t.beta, s.backend, s.stop, cfg.model.dtype, cfg.model.gradient_checkpointing,
            cfg.model.lora.enabled) == ("grpo", "clip", "token_mean", "constant", 0, 0.0, 1, False, 0.0, "hf", [],
                                        "float32", False, False), cfg
    # One generation call and one training pass over the batch, as TRL is configured below.
    assert t.max_tokens_per_micro_batch == 0 and t.micro_batch_size >= B * G and s.generation_batch_size >= B * G

    model_path = str(resolve_model_path(cfg.model.path))
    tokenizer = load_tokenizer(model_path)
    renderer = PromptRenderer(tokenizer, cfg.data)
    rows = usable_rows(load_rows(cfg.data.path, cfg.data.split, cfg.data.subset, cfg.data.limit),
                       cfg.data.prompt_template, cfg.data.answer_column, cfg.data.on_bad_row)
    stream, prompts = PromptStream(rows, cfg.seed, cfg.data.shuffle), []
    while len(prompts) < steps * B:  # what grpo's trainer draws, step after step (it skips over-long prompts too)
        row = stream.take(1)[0]
        text = renderer.text(row)
        ids = renderer.ids(text)
        if len(ids) > cfg.data.max_prompt_tokens:
            continue
        # TRL tokenizes a plain-text prompt with processing_class(text=[...]); it must see grpo's exact ids.
        assert tokenizer(text=[text])["input_ids"][0] == ids, text
        prompts.append({"prompt": text, "answer": row[cfg.data.answer_column]})

    trl_args = dict(
        output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=B * G,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=G, num_iterations=t.mu,
        max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=0,  # 0: off
        learning_rate=t.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.weight_decay,
        optim="adamw_torch_fused",  # grpo builds torch.optim.AdamW(fused=True) too (TRL's default on torch >= 2.8)
        adam_beta1=t.adam_betas[0], adam_beta2=t.adam_betas[1], max_grad_norm=t.max_grad_norm,
        beta=t.beta, epsilon=t.clip_low, epsilon_high=t.clip_high, loss_type="dapo", scale_rewards="group",
        mask_truncated_completions=False, shuffle_dataset=False,  # keep grpo's prompt order, train on truncations
        seed=cfg.seed, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, use_vllm=False,
        save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)
    grpo_argv = [sys.executable, "-m", "grpo", "train", spec["recipe"], *overrides, f"output_dir={out / 'grpo'}"]
    return grpo_argv, {"model": model_path, "prompts": prompts, "args": trl_args, "result": str(out / "trl.json")}


def trl_worker(job_path: str) -> None:
    """TRL's side, in its own process: only TRL, transformers and the math reward (the same function grpo uses)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.math import math_reward

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    job = json.loads(Path(job_path).read_text())
    clock = StepClock()
    trainer = GRPOTrainer(model=job["model"], reward_funcs=math_reward, args=GRPOConfig(**job["args"]),
                          train_dataset=Dataset.from_list(job["prompts"]), callbacks=[clock])
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    Path(job["result"]).write_text(json.dumps({"step_s": steps, "rewards": rewards}))


def launch(argv: list[str], log_path: Path) -> dict:
    """Run one child from launch to exit; its own peak RSS comes from wait4 (KiB on Linux)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv[:5])} ... exited with {proc.returncode}; end of its output:\n"
                 f"{log_path.read_text()[-3000:]}")
    # CPU seconds as well: on a shared machine they move less with other jobs' load than wall time does.
    return {"process_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}


def run_grpo(argv: list[str], out: Path) -> dict:
    result = launch(argv, out / "grpo.log")
    metrics_path = out / "grpo" / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    result.update(step_s=[m["time/step_s"] for m in lines], rewards=[m["reward/mean"] for m in lines])
    result["parts_s"] = {part: statistics.median(m[f"time/{part}_s"] for m in lines[WARMUP_STEPS:] or lines)
                         for part in ("generate", "score", "train", "sync", "other")}
    # The final checkpoint is written after the last metrics line and before the `latest` pointer.
    pointer = out / "grpo" / "checkpoints" / "latest"
    result["checkpoint_s"] = pointer.stat().st_mtime - metrics_path.stat().st_mtime if pointer.exists() else 0.0
    return result


def run_trl(job: dict, out: Path) -> dict:
    job_path = out / "trl-job.json"
    job_path.write_text(json.dumps(job))
    result = launch([sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(job_path)], out / "trl.log")
    result.update(json.loads(Path(job["result"]).read_text()))
    return result


def describe(r: dict) -> str:
    line = (f"step {statistics.median(r['step_s'][WARMUP_STEPS:] or r['step_s']):6.2f} s  process "
            f"{r['process_s']:6.1f} s (CPU {r['cpu_s']:6.1f} s)  peak RSS {r['peak_rss_mib']:5.0f} MiB  reward "
            f"{statistics.fmean(r['rewards']):.3f}")
    if "parts_s" in r:
        line += ("\n{:>19}generate {generate:.2f}  score {score:.2f}  train {train:.2f}  sync {sync:.2f}  other "
                 "{other:.2f} s (medians); final checkpoint ~{:.1f} s").format("", r["checkpoint_s"], **r["parts_s"])
    return line


def summarise(runs: list[dict]) -> dict:
    steady = [s for r in runs for s in r["step_s"][WARMUP_STEPS:]] or [s for r in runs for s in r["step_s"]]
    return {"step_s": statistics.median(steady), "process_s": statistics.median(r["process_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
            "reward": statistics.fmean(x for r in runs for x in r["rewards"]),
            "reward_last3": statistics.fmean(x for r in runs for x in r["rewards"][-3:])}


def machine() -> str:
    import accelerate
    import torch
    import transformers
    import trl

    import grpo

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    return (f"grpo {grpo.__version__} ({Path(grpo.__file__).parent}), trl {trl.__version__}, transformers "
            f"{transformers.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), accelerate "
            f"{accelerate.__version__}, Python {platform.python_version()}\n{cpu}, {os.cpu_count()} CPUs, "
            f"{mem_kib / 2**20:.1f} GiB RAM, load average {os.getloadavg()[0]:.1f} at start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="tiny,smollm2", help="comma-separated: " + ",".join(WORKLOADS))
    parser.add_argument("--steps", type=int, help="steps per run (default: tiny 20, smollm2 6)")
    parser.add_argument("--rounds", type=int, help="grpo-then-TRL rounds (default: tiny 3, smollm2 2)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both sides (default: inherited)")
    parser.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "bench_step_vs_trl.json")
    parser.add_argument("--trl-worker", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return
    if args.threads:  # before torch loads here; the children inherit it, so both sides run the same thread count
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is local: no side spends time asking the hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    names = [n for n in args.workloads.split(",") if n]
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    os.chdir(ROOT)  # recipes name their data and model paths relative to the repository, as for `grpo train`
    if "smollm2" in names and not (ROOT / "models/smollm2-135m-instruct/config.json").is_file():
        sys.exit("models/smollm2-135m-instruct is missing: run `make smollm2` first (or use --workloads tiny)")
    report = {"machine": machine(), "workloads": {}}
    print(report["machine"], flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        for name in names:
            steps = args.steps or WORKLOADS[name]["steps"]
            rounds = args.rounds or WORKLOADS[name]["rounds"]
            runs: dict[str, list[dict]] = {"grpo": [], "trl": []}
            for round_index in range(rounds):
                out = Path(tmp) / f"{name}-{round_index}"
                out.mkdir()
                grpo_argv, job = prepare(name, steps, out)
                if round_index == 0:
                    print(f"\n{name}: {steps} steps x {rounds} rounds; grpo runs: {' '.join(grpo_argv[1:])}",
                          flush=True)
                for side in ("grpo", "trl"):  # alternate, so drift in the machine's load hits both alike
                    r = run_grpo(grpo_argv, out) if side == "grpo" else run_trl(job, out)
                    runs[side].append(r)
                    print(f"  round {round_index + 1} {side:<4} {describe(r)}", flush=True)
            report["workloads"][name] = {"steps": steps, "rounds": rounds, "runs": runs,
                                         "summary": {side: summarise(rs) for side, rs in runs.items()}}
    print(f"\n{'workload':<9}{'side':<6}{'step s':>8}{'process s':>11}{'CPU s':>8}{'peak MiB':>10}{'reward':>8}"
          f"{'last 3':>8}")
    for name, w in report["workloads"].items():
        for side, m in w["summary"].items():
            print(f"{name:<9}{side:<6}{m['step_s']:8.2f}{m['process_s']:11.1f}{m['cpu_s']:8.1f}"
                  f"{m['peak_rss_mib']:10.0f}{m['reward']:8.3f}{m['reward_last3']:8.3f}")
        ours, theirs = w["summary"]["grpo"], w["summary"]["trl"]
        ratios = w["ratios_grpo_over_trl"] = {k: ours[k] / theirs[k] for k in ("step_s", "process_s", "peak_rss_mib")}
        print(f"{name:<9}grpo/trl: step {ratios['step_s']:.2f}, process {ratios['process_s']:.2f}, peak memory "
              f"{ratios['peak_rss_mib']:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\nstep: median of steps after the first {WARMUP_STEPS}; process, CPU, peak RSS: median over rounds; load "
          f"average {os.getloadavg()[0]:.1f} at the end (the cores are {os.cpu_count()}). JSON: {args.json}")


if __name__ == "__main__":
    main()
