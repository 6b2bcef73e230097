"""The sandbox's hostile corpus through the tool path: each program of tests/test_sandbox_hostile.py runs as a
model's ```python cell mid-episode, beside an honest episode in the same batch. The hostile episode scores 0, the
honest one 1, the observation stays within its budget, the trainer's secrets and files stay out of reach, and
nothing is left running."""

import os
import time

import pytest

from environments.registry import load_environment
from grpo.sampling.base import SamplingSettings
from grpo.config import EpisodeLimits
from grpo.sampling.tools import ToolSampler
from rewards.math import math_reward
from rewards.sandbox import capabilities
from rewards.scoring import reward_columns
from scripted import TOK, Scripted
from test_sandbox_hostile import HOSTILE, _sandbox_processes

pytestmark = pytest.mark.skipif(capabilities.detect().level not in ("userns", "rootns"),
                                reason="no namespaces here: hostile programs would run against the host")

HONEST = "def add(a, b):\n    return a + b"
LIMITS = EpisodeLimits(max_turns=3, max_tool_calls=2, max_observation_tokens=64, max_total_tokens=4096,
                       max_tool_seconds=30, workers=8)


def cell_of(program: str) -> str:
    return f" Let me run it.\n```python\n{program}\nprint(add(1, 2))\n```\n```output"


def model_that_runs(programs: list[str]):
    """Episode k runs programs[k], then answers with the last line the tool printed (a model trusting its tool)."""
    def script(context: str, i: int) -> str:
        if "```output\n" in context:
            shown = context.rsplit("```output\n", 1)[1].rsplit("```", 1)[0].strip().splitlines()
            return f" The answer is {shown[-1] if shown else 'unknown'}."
        return cell_of(programs[int(context.split("#")[1])])
    return script


def episodes(programs: list[str], env_args: dict | None = None):
    env = load_environment("python", {"timeout_s": 1, "memory_mb": 256, **(env_args or {})})
    sampler = ToolSampler(Scripted(model_that_runs(programs)), TOK, env, LIMITS)
    prompts = [TOK(f"Program #{k}# add 1 and 2.\nAnswer:")["input_ids"] for k in range(len(programs))]
    groups = sampler.generate(prompts, SamplingSettings(n=1, max_new_tokens=2048, seed=0))
    completions = [g.completions[0] for g in groups]
    columns = reward_columns([{}] * len(completions), ["3"] * len(completions), [c.token_ids for c in completions],
                             [c.finish_reason for c in completions], 2048, tools=[c.tools for c in completions])
    return completions, math_reward(["p"] * len(completions), [c.text for c in completions], **columns)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_cell_scores_nothing_beside_an_honest_one(name):
    before_tmp = set(os.listdir("/tmp"))
    started = time.monotonic()
    completions, rewards = episodes([HOSTILE[name], HONEST])
    assert rewards == [0.0, 1.0], [c.text[-300:] for c in completions]
    hostile, honest = completions
    assert honest.tools.calls[0]["output"] == "\n3\n```\n" and not honest.tools.calls[0]["error"]
    assert hostile.tools.observation_tokens <= LIMITS.max_observation_tokens
    assert time.monotonic() - started < 120
    if os.geteuid() == 0:  # as root the sandboxes run as nobody: wait for what is left of them to be reaped
        deadline = time.monotonic() + 120
        while _sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sandbox_processes() == 0
    assert not {p for p in set(os.listdir("/tmp")) - before_tmp if p.startswith("grpo-sbx-")}


def test_a_cell_sees_no_secret_no_host_file_and_no_network(monkeypatch):
    monkeypatch.setenv("GRPO_TEST_SECRET", "hunter2")
    here = os.path.abspath(__file__)
    probe = ("import os, socket\n"
             "def add(a, b):\n    return a + b\n"
             "print(dict(os.environ), os.path.exists('/work'), os.path.exists(" + repr(here) + "))\n"
             "s = socket.socket()\ns.settimeout(0.5)\n"
             "try:\n    s.connect(('1.1.1.1', 53))\n    print('net')\nexcept OSError:\n    print('no net')")
    completions, rewards = episodes([probe], {"max_output_chars": 500})
    output = completions[0].tools.calls[0]["output"]
    assert "hunter2" not in output and "{} False False" in output and "no net" in output
    assert rewards == [1.0]
