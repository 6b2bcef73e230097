"""bench/gpu_check.py runs on CPU in a reduced size, so the script a GPU machine will run cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_the_real_update_on_a_small_shape(tmp_path):
    out = tmp_path / "figures.jsonl"
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--sizes", "tiny", "--groups", "2", "--group-size",
                             "2", "--prompt-len", "8", "--completion-len", "16", "--micro-batch", "2", "--steps", "1",
                             "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    updates = [r for r in rows if "tokens_per_s" in r]
    assert [(r["packing"], r["gradient_checkpointing"]) for r in updates] == [
        (layout, ckpt) for layout in ("padded", "sequences", "shared_prompt") for ckpt in (False, True)]
    for r in updates:
        assert r["tokens_per_s"] > 0 and r["real_tokens"] == 2 * 2 * 8 + (4 + 16) + (4 + 16)
        if r["packing"] == "padded":
            assert 0 < r["padded_fraction"] < 1  # completions of 4 and 16 tokens padded to 16
    by = {(r["packing"], r["gradient_checkpointing"]): r for r in updates}
    assert by[("shared_prompt", False)]["padded_fraction"] < by[("padded", False)]["padded_fraction"]
