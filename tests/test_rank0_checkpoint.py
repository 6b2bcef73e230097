"""Checkpoints gather to rank 0 only and load back by broadcast from it (2 gloo ranks, FSDP2, bf16 over fp32)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "distributed" / "rank0_state.py"
pytestmark = pytest.mark.slow  # torchrun: 2 gloo ranks, FSDP2


def test_rank_1_holds_nothing_and_rank_0_everything_whole_in_fp32(tiny_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
           str(tiny_model_dir), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert one["weights"] == 0 and one["optimizer_entries"] == 0  # rank 1 only sent its shards
    assert zero["weights"] >= zero["params"] and zero["optimizer_entries"] == zero["params"]
    assert zero["whole"] and zero["weight_dtypes"] == ["torch.float32"]  # the fp32 masters, not bf16 copies
    assert zero["loaded_shards_equal"] and one["loaded_shards_equal"]  # broadcast from rank 0 restores every shard
