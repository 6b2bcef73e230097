"""Ranks under torchrun that are stopped, killed or stuck. SIGTERM: torchrun forwards it to every rank; the ranks
agree on the step (world.max), every rank takes part in the save, rank 0 writes it, and the run resumes on 2
ranks. A killed or stuck rank: the job ends naming it, with the command that resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gate import HOLD_SOURCE, REWARD_TIMEOUT_S, Gate, wait_for_text
from test_heartbeat import ours_alive

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a training run under torchrun (2 ranks), signalled mid-step
SMALL = ["train.prompts_per_step=4", "sampler.group_size=4", "sampler.max_new_tokens=12", "train.micro_batch_size=4",
         "logging.progress_bar=false", "logging.samples_every=0", "checkpoint.every=0", "train.steps=8",
         f"rewards=[{{name: 'held_math:reward', timeout_s: {REWARD_TIMEOUT_S}}}]"]


def held_run(tmp_path, background, *overrides):
    """A 2-rank run of the tiny recipe whose math reward is held in step 3 on both ranks (tests/gate.py): returns
    (the torchrun process, the gate, its environment, its command, output_dir) once both ranks are inside step 3."""
    (tmp_path / "held_math.py").write_text(
        HOLD_SOURCE + "\nfrom rewards.math import math_reward\n\n"
        "def reward(prompts, completions, **kw):\n    gate_hold()\n    return math_reward(prompts, completions, **kw)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "grpo",
           "train", "recipes/tiny.yaml", f"output_dir={out}", *SMALL, *overrides]
    gate = Gate(tmp_path / "gate", hold_from=3)
    proc = background.start(cmd, env={**env, **gate.env()}, cwd=ROOT)
    gate.wait_held(proc, ranks=(0, 1))  # both ranks inside step 3; steps 1-2 logged
    return proc, gate, env, cmd, out


def test_sigterm_under_torchrun_saves_one_step_on_every_rank(tmp_path, background):
    proc, gate, env, cmd, out = held_run(tmp_path, background)
    proc.send_signal(signal.SIGTERM)
    # torchrun passes it on to the ranks; rank 0 says it heard it. Only then may step 3 finish (torchrun waits
    # 30 s for its ranks before it kills them, so the gate opens as soon as the signal is in).
    wait_for_text(proc.err_path, "SIGTERM received: finishing this step", proc)
    gate.release()
    _, err = background.finish(proc)
    metrics = out / "metrics.jsonl"
    assert proc.returncode != 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    stopped = steps[-1]
    assert steps == list(range(1, stopped + 1)) and stopped == 3, err[-3000:]
    assert f"stopped by SIGTERM after step {stopped}" in err and "torchrun --nproc-per-node 2 -m grpo train" in err
    # torchrun waits for its ranks before it raises: rank 0's checkpoint and resume command come before its traceback
    assert err.index("resume with:") < err.index("got signal: 15"), err[-3000:]
    assert (out / "checkpoints" / f"step-{stopped:06d}" / "trainer_state.pt").is_file()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 9))


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """torchrun's worker processes by their RANK (read from each child's environment)."""
    found = {}
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
        if ranks:
            found[int(ranks[0])] = int(child)
    return found


def test_a_killed_rank_is_said_with_the_resume_command(tmp_path, background):
    """kill -9 of one rank: the survivor says another rank went away and prints the command that resumes from the
    last checkpoint, instead of gloo's bare "Connection closed by peer"."""
    proc, gate, _, _, out = held_run(tmp_path, background, "checkpoint.every=2")  # step 2's checkpoint written
    os.kill(rank_pids(proc.pid)[1], signal.SIGKILL)
    gate.release()
    _, err = background.finish(proc)
    assert proc.returncode != 0
    assert "rank 0/2: another rank stopped answering" in err, err[-3000:]
    assert "[rank0]:" not in err  # the survivor's message, not its stack (the traceback left is torchrun's own)
    assert "torchrun --nproc-per-node 2 -m grpo train recipes/tiny.yaml" in err
    assert (out / "checkpoints" / "step-000002" / "trainer_state.pt").is_file()


def test_a_stuck_rank_is_named_and_the_job_ends_long_before_the_collective_timeout(tmp_path, background):
    """Rank 1's reward never returns in step 3 (rank 0's does): the heartbeat (distributed.heartbeat_s, by default
    a fifth of timeout_s) finds rank 1 stuck in grpo/score, rank 1 says so with where it hangs and ends; rank 0 then
    prints the command that resumes from step 2's checkpoint. Nothing of the job is left running."""
    (tmp_path / "rank1_stuck.py").write_text(
        HOLD_SOURCE + "\nimport os\nfrom rewards.math import math_reward\n\n"
        "def reward(prompts, completions, **kw):\n    if os.environ.get('RANK') == '1':\n        gate_hold()\n"
        "    return math_reward(prompts, completions, **kw)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    out = tmp_path / "run"
    timeout_s = 120  # the heartbeat's default is timeout_s / 5 = 24 s
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "grpo",
           "train", "recipes/tiny.yaml", f"output_dir={out}", *SMALL, "checkpoint.every=2",
           f"distributed.timeout_s={timeout_s}",
           f"rewards=[{{name: 'rank1_stuck:reward', timeout_s: {REWARD_TIMEOUT_S}}}]"]
    gate = Gate(tmp_path / "gate", hold_from=3)
    proc = background.start(cmd, env={**env, **gate.env()}, cwd=ROOT)
    gate.wait_held(proc, ranks=(1,))
    held_at = time.monotonic()
    _, err = background.finish(proc, timeout=timeout_s)
    took = time.monotonic() - held_at
    assert proc.returncode != 0
    assert took < timeout_s * 0.6, (took, err[-3000:])  # 24 s and a few ticks, far from the 120 s timeout
    assert "rank 1/2: this rank is stuck: no progress for" in err, err[-3000:]
    assert "in grpo/score of step 3, while rank 0 waits for it (distributed.heartbeat_s=24" in err
    assert "Its main thread is here:" in err and "plugin_pool.py" in err  # waiting on its reward's worker
    assert "rank 0/2: another rank stopped answering" in err
    resume = "torchrun --nproc-per-node 2 -m grpo train recipes/tiny.yaml"
    assert resume in err and "Timed out" not in err
    assert (out / "checkpoints" / "step-000002" / "trainer_state.pt").is_file()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    deadline = time.monotonic() + 30  # reward workers follow their trainer within a few seconds
    while (left := ours_alive(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []
