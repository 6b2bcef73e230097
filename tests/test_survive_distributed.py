"""SIGTERM under torchrun: torchrun forwards it to every rank; the ranks agree on the step (world.max), every
rank takes part in the save, rank 0 writes it, and the run resumes on 2 ranks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.prompts_per_step=4", "sampler.group_size=4", "sampler.max_new_tokens=12", "train.micro_batch_size=4",
         "logging.progress_bar=false", "logging.samples_every=0", "checkpoint.every=0", "train.steps=8",
         "rewards=[{name: 'slow_math:reward'}]"]


def test_sigterm_under_torchrun_saves_one_step_on_every_rank(tmp_path):
    (tmp_path / "slow_math.py").write_text(
        "import os, time\nfrom rewards.math import math_reward\n\n"
        "def reward(prompts, completions, **kw):\n    time.sleep(float(os.environ.get('SLOW_S', '0.5')))\n"
        "    return math_reward(prompts, completions, **kw)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "grpo",
           "train", "recipes/tiny.yaml", f"output_dir={out}", *SMALL]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    metrics = out / "metrics.jsonl"
    end = time.time() + 240
    while time.time() < end and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    stopped = steps[-1]
    assert steps == list(range(1, stopped + 1)) and stopped < 8, err[-3000:]
    assert f"stopped by SIGTERM after step {stopped}" in err and "torchrun --nproc-per-node 2 -m grpo train" in err
    assert (out / "checkpoints" / f"step-{stopped:06d}" / "trainer_state.pt").is_file()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "SLOW_S": "0"}, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 9))
