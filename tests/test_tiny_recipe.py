"""The demo as a user runs it: recipes/tiny.yaml, unchanged, on the built-in (shipped) model, from the repository
root, end to end through the CLI, with the recipe's fixed seed. It must learn: the mean reward of the last 20
steps is clearly above that of the first 20 (the README states the measured figures)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_recipe_learns(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "grpo.cli", "train", "recipes/tiny.yaml", f"output_dir={out}",
                             "logging.progress_bar=false"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 101))
    assert all(m["sampler/logprob_gap"] < 1e-3 and m["reward/math/errors"] == 0 for m in metrics)
    # An honest run raises no reward-hacking alarm (issue 32's bar), though its signals were computed (a signal is
    # left out of a step where nothing it compares varies, e.g. every group scored alike).
    assert sum("hacking/length_reward_corr" in m for m in metrics) >= 80
    assert not [k for m in metrics for k in m if k.startswith("alarms/")] and "reward-hacking alarm" not in \
        result.stderr

    def mean(key, part):
        return sum(m[key] for m in part) / len(part)

    first, last = metrics[:20], metrics[-20:]
    # Measured with seed 0: 0.439 -> 0.798. A step's mean reward is noisy (64 samples, 8 prompts), so the bar
    # is well below the measured gain but far above what noise gives over 20 steps (about +-0.03).
    assert mean("reward/mean", last) > mean("reward/mean", first) + 0.2, (mean("reward/mean", first),
                                                                         mean("reward/mean", last))
    # How it learned: it stops guessing and works the problems out (longer completions, a sharper policy).
    assert mean("completion/length_mean", last) > mean("completion/length_mean", first) + 3
    assert mean("entropy", last) < mean("entropy", first)
    samples = [json.loads(s) for s in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {20, 40, 60, 80, 100}
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-000100")
