"""The demo as a user runs it: recipes/tiny.yaml on the built-in model, from the repository root. With its
fixed seed the mean reward of the last steps must be clearly above the first steps'."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_recipe_learns(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "grpo.cli", "train", "recipes/tiny.yaml", f"output_dir={out}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    rewards = [json.loads(line)["reward/mean"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    window = max(5, len(rewards) // 5)
    first, last = sum(rewards[:window]) / window, sum(rewards[-window:]) / window
    print(f"mean reward: first {window} steps {first:.3f}, last {window} steps {last:.3f}")
    assert last > first + 0.1, (first, last)
    assert (out / "checkpoints").is_dir() and (out / "samples.jsonl").is_file()
