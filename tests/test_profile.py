"""`grpo train --profile` profiles one step, names its stages and top costs, and writes them under the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.train.profiling import StepProfiler, stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a real training run (3 steps) in a child process
def test_profile_flag_profiles_step_three_of_a_real_run(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "grpo.cli", "train", "recipes/tiny.yaml", f"output_dir={out}",
                             "train.steps=3", "train.prompts_per_step=2", "checkpoint.every=0",
                             "logging.progress_bar=false", "--profile"],
                            cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "profile" / "step-3-torch.txt").read_text()
    for name in ("generate", "score", "train", "other"):
        assert f"  {name} " in report
    assert "aten::" in report  # operators, named
    assert "profile of step 3 (torch)" in result.stderr and "top operators" in result.stderr
    trace = json.loads((out / "profile" / "trace-step-3.json").read_text())
    assert any(e.get("name") == "grpo/train" for e in trace["traceEvents"])
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def busy(n: int) -> int:
    return sum(i * i for i in range(n))


def test_the_python_profiler_names_the_functions_of_the_profiled_step_only(tmp_path, capsys):
    profiler = StepProfiler(2, "python", tmp_path, enabled=True)
    for step in (1, 2, 3):
        profiler.begin(step)
        with stage("grpo/train"):
            busy(200_000 if step == 2 else 10)
        profiler.end(step)
    files = list((tmp_path / "profile").iterdir())
    assert [f.name for f in files] == ["step-2-python.txt"]
    assert "busy" in files[0].read_text()
    assert "profile of step 2 (python)" in capsys.readouterr().err


def test_no_profile_step_writes_nothing(tmp_path):
    profiler = StepProfiler(0, "torch", tmp_path, enabled=True)
    profiler.begin(1)
    profiler.end(1)
    assert not (tmp_path / "profile").exists()
