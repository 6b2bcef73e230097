"""bench/gpu_check.py runs on CPU in a tiny size, so the script a lent GPU will run cannot rot: every section runs
grpo's real code (FSDP2 at world size 1 with bf16 compute over fp32 masters, the layouts, the chunked vocabulary
pass) and writes its JSON lines as it goes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test runs bench/gpu_check.py (every section, real code) in a child process
# eager stands in for flex_attention (the GPU default's second kernel), which compiles for a minute on a CPU: the
# kernel loop is the same code either way.
TINY = ["--shape", "tiny", "--tokens", "64,128", "--seq-len", "32", "--groups", "2", "--group-size", "2",
        "--prompt-len", "8", "--completion-len", "16", "--micro-batch", "2", "--steps", "1", "--attn", "sdpa,eager"]


def gpu_check(out: Path, *extra: str) -> list[dict]:
    result = subprocess.run([sys.executable, "bench/gpu_check.py", *TINY, "--json", str(out), *extra], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_gpu_check_runs_every_section_on_a_tiny_shape(tmp_path):
    rows = gpu_check(tmp_path / "figures.jsonl")
    assert not [r for r in rows if "error" in r or "skipped" in r and r["section"] != "gaps"], rows
    by = {}
    for r in rows:
        by.setdefault(r["section"], []).append(r)
    assert set(by) == {"env", "memory", "allocator", "gaps", "speed", "precision", "done"}
    (env,) = by["env"]
    assert {"torch", "transformers", "slice_logits_to_keep", "flex_attention", "flash_attn", "vllm"} <= set(env)
    # the memory ladder: one row per token budget, each beside grpo plan's figures for the same step
    assert [r["tokens"] for r in by["memory"]] == [64, 128] and not any(r["oom"] for r in by["memory"])
    for r in by["memory"]:
        assert r["loss_finite"] and r["plan_tokens_per_micro_batch"] == r["tokens"]
        assert set(r["predicted_items"]) == {"master_weights", "optimizer", "gradients", "parameters",
                                             "activations", "vocab_pass"}
        assert r["predicted_allocated_bytes"] == sum(r["predicted_items"].values())
    assert by["memory"][1]["predicted_items"]["activations"] == 2 * by["memory"][0]["predicted_items"]["activations"]
    # layouts against padded rows (and the second kernel's padded rows against the first's): small bf16 gaps
    gaps = {(r["attention"], r["layout"]): r for r in by["gaps"]}
    assert set(gaps) == {("sdpa", "sequences"), ("sdpa", "shared_prompt"), ("eager", "padded"), ("eager", "sequences"),
                         ("eager", "shared_prompt")}
    for gap in gaps.values():
        assert gap["tokens"] == 2 * (4 + 16) and gap["max_abs_gap"] < 0.1
    assert [r["packing"] for r in by["speed"]] == ["padded", "sequences", "shared_prompt"]
    for r in by["speed"]:
        assert r["tokens_per_s"] > 0 and r["real_tokens"] == 2 * 2 * 8 + (4 + 16) + (4 + 16)
    assert by["speed"][0]["padded_fraction"] > by["speed"][2]["padded_fraction"]
    # fp32 masters take an lr of 1e-6; bf16 weights mostly round it away
    moved = {r["mode"]: r["moved_fraction"] for r in by["precision"]}
    assert moved["fp32_master"] > 0.9 and moved["pure_bf16"] < moved["fp32_master"] / 2


def test_a_cut_off_run_leaves_its_figures_and_sections_past_the_budget_are_skipped(tmp_path):
    rows = gpu_check(tmp_path / "figures.jsonl", "--budget-s", "0", "--sections", "env,speed")
    assert [r["section"] for r in rows] == ["env", "speed", "done"]
    assert "time" in rows[1]["skipped"]
