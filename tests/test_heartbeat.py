"""The heartbeat under torchrun (grpo/heartbeat.py): which rank is stuck, decided from the ranks' published
records (fast), and a stuck rank found and named within heartbeat_s, far inside the collective timeout (slow:
2 gloo ranks under torchrun, tests/distributed/stuck_rank.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed

from grpo.config import DistributedConfig
from grpo.heartbeat import PROGRESS, Seen, Watchdog, heartbeat_seconds, judge
from grpo.train.profiling import StepProfiler, stage

ROOT = Path(__file__).resolve().parents[1]


def rec(events, stages=(), step=3, beat=1, left=False):
    return {"events": events, "stages": list(stages), "step": step, "beat": beat, "left": left}


def test_a_rank_left_behind_inside_a_stage_is_stuck_after_heartbeat_s_of_waiting():
    seen: dict[int, Seen] = {}
    # rank 1 is in grpo/score; rank 0 has moved on to grpo/train (2 more entries and exits) and waits there.
    assert judge(seen, {0: rec(9, ["grpo/step", "grpo/train"]), 1: rec(7, ["grpo/step", "grpo/score"])}, 0.0, 5) == []
    assert judge(seen, {0: rec(9, ["grpo/step", "grpo/train"], beat=2),
                        1: rec(7, ["grpo/step", "grpo/score"], beat=2)}, 4.9, 5) == []
    [verdict] = judge(seen, {0: rec(9, ["grpo/step", "grpo/train"], beat=3),
                             1: rec(7, ["grpo/step", "grpo/score"], beat=3)}, 5.0, 5)
    assert (verdict.rank, verdict.stage, verdict.step, verdict.ahead, verdict.frozen) == (1, "grpo/score", 3, [0],
                                                                                          False)


def test_the_wait_counts_from_when_another_rank_got_ahead_not_from_the_stage_start():
    """A long generation is not a hang: rank 1 has been generating for minutes, rank 0 finished a second ago."""
    seen: dict[int, Seen] = {}
    judge(seen, {0: rec(5, ["grpo/step", "grpo/generate"]), 1: rec(5, ["grpo/step", "grpo/generate"])}, 0.0, 60)
    assert judge(seen, {0: rec(5, ["grpo/step", "grpo/generate"], beat=2),
                        1: rec(5, ["grpo/step", "grpo/generate"], beat=2)}, 300.0, 60) == []
    assert judge(seen, {0: rec(8, ["grpo/step", "grpo/train"], beat=3),
                        1: rec(5, ["grpo/step", "grpo/generate"], beat=3)}, 301.0, 60) == []
    assert judge(seen, {0: rec(8, ["grpo/step", "grpo/train"], beat=4),
                        1: rec(5, ["grpo/step", "grpo/generate"], beat=4)}, 360.0, 60) == []
    assert [v.rank for v in judge(seen, {0: rec(8, ["grpo/step", "grpo/train"], beat=5),
                                         1: rec(5, ["grpo/step", "grpo/generate"], beat=5)}, 361.0, 60)] == [1]


def test_a_rank_that_moves_is_not_stuck_even_while_behind():
    seen: dict[int, Seen] = {}
    for t in range(0, 100, 4):  # rank 1 passes a stage boundary every 4 s (dynamic sampling rounds, say)
        assert judge(seen, {0: rec(1000, ["grpo/step", "grpo/train"], beat=t),
                            1: rec(t, ["grpo/step", "grpo/score"], beat=t)}, float(t), 5) == []


def test_work_outside_the_stages_is_never_judged():
    """Rank 0 writing a checkpoint (outside any stage) while the others wait at the same count, and a rank behind
    but between stages while its watchdog still beats: the collective timeout covers those."""
    seen: dict[int, Seen] = {}
    for t in range(0, 100, 5):
        assert judge(seen, {0: rec(12, beat=t), 1: rec(12, beat=t)}, float(t), 5) == []
    seen = {}
    for t in range(0, 100, 5):
        assert judge(seen, {0: rec(14, ["grpo/step"], beat=t), 1: rec(12, beat=t)}, float(t), 5) == []


def test_a_frozen_rank_is_stuck_wherever_it_was_last_seen():
    """SIGSTOP: its watchdog stops too, so its last record may predate the stage it stopped in."""
    seen: dict[int, Seen] = {}
    judge(seen, {0: rec(12, beat=1), 1: rec(12, beat=1)}, 0.0, 5)
    assert judge(seen, {0: rec(16, ["grpo/step", "grpo/train"], beat=2), 1: rec(12, beat=1)}, 1.0, 5) == []
    [verdict] = judge(seen, {0: rec(16, ["grpo/step", "grpo/train"], beat=3), 1: rec(12, beat=1)}, 6.0, 5)
    assert (verdict.rank, verdict.frozen, verdict.stage) == (1, True, "")


def test_a_rank_that_left_is_neither_judged_nor_ahead():
    seen: dict[int, Seen] = {}
    for t in range(0, 60, 5):  # rank 0 failed and left from a later point; rank 1 is still scoring
        assert judge(seen, {0: rec(20, left=True), 1: rec(7, ["grpo/step", "grpo/score"], beat=t)}, float(t), 5) == []


def test_stages_and_steps_are_what_the_heartbeat_publishes():
    StepProfiler(0, "torch", ROOT, enabled=False).begin(7)
    before = PROGRESS.events
    with stage("grpo/step"):
        with stage("grpo/score"):
            assert PROGRESS.stages == ("grpo/step", "grpo/score") and PROGRESS.step == 7
        with pytest.raises(ValueError):
            with stage("grpo/train"):
                raise ValueError("a stage left by an exception still counts as left")
    assert PROGRESS.stages == () and PROGRESS.events == before + 6


def test_heartbeat_s_defaults_to_a_fifth_of_the_collective_timeout_and_0_is_off():
    cfg = DistributedConfig()
    assert cfg.heartbeat_s is None and heartbeat_seconds(cfg.heartbeat_s, cfg.timeout_s) == 120
    assert heartbeat_seconds(0, 600) == 0 and heartbeat_seconds(7.5, 600) == 7.5


@pytest.mark.parametrize("beat, refused", [(None, False), (0, False), (30, False), (-1, True), (600, True)])
def test_heartbeat_s_outside_0_to_timeout_s_is_refused_naming_the_key(beat, refused):
    from conftest import recipe_config
    from grpo.rules import recipe_rules

    problems = [p for p in recipe_rules(recipe_config({"distributed.heartbeat_s": beat})) if "heartbeat_s" in p]
    assert bool(problems) == refused
    if refused:
        assert f"got {beat}" in problems[0] and "distributed.timeout_s (600)" in problems[0]


def test_watchdogs_read_each_others_records_and_a_rank_that_leaves_says_so():
    store = torch.distributed.HashStore()
    first = Watchdog(0, 2, 5, store, "rank 0/2: ").start()
    try:
        assert set(first._records()) == {0}  # rank 1 is still starting: left out, not waited for
        second = Watchdog(1, 2, 5, store, "rank 1/2: ")
        second._publish()
        records = first._records()
        assert set(records) == {0, 1} and records[1]["events"] == PROGRESS.events and not records[1]["left"]
        second.stop()
        assert first._records()[1]["left"] and first._records()[1]["pid"] == os.getpid()
    finally:
        first.stop()


# ------------------------------------------------------------------------------------------------- under torchrun

def ours_alive(token: str) -> list[str]:
    """Processes still running whose command line holds `token` (this test's own temporary folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token in cmd and state != "Z":
            found.append(f"{proc.name}: {cmd}")
    return found


@pytest.mark.slow  # torchrun with 2 gloo ranks, one stuck
@pytest.mark.parametrize("mode", ["sleep", "stop"])
def test_a_stuck_rank_ends_the_job_within_heartbeat_s_naming_it(tmp_path, mode):
    """sleep: rank 1's main thread blocks forever in grpo/score (its watchdog runs: it names itself, prints where
    it is, and exits). stop: rank 1 SIGSTOPs itself (nothing in it runs: rank 0 names it and kills it). Either way
    the job ends long before the 300 s collective timeout and nothing of it is left running."""
    script = tmp_path / "stuck_rank.py"  # a copy in tmp_path, so that its command line names this test alone
    script.write_text((ROOT / "tests" / "distributed" / "stuck_rank.py").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           mode, "3", "4", "300"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    started = stuck_at = None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "rank 1 stuck in step 3" in line:
                stuck_at = time.monotonic()
            if started is None:
                started = time.monotonic()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.monotonic()
    out = "".join(lines)
    assert proc.returncode != 0 and stuck_at is not None, out[-4000:]
    # heartbeat_s 4 (+ the stop mode's 3 s inside the stage, a tick, a grace of a few seconds): far from 300 s.
    assert ended - stuck_at < 60, (ended - stuck_at, out[-4000:])
    if mode == "sleep":
        assert "rank 1/2: this rank is stuck: no progress for" in out, out[-4000:]
        assert "in grpo/score of step 3, while rank 0 waits for it (distributed.heartbeat_s=4" in out
        assert "Its main thread is here:" in out and "time.sleep(10**6)" in out  # where it hangs
    else:
        assert "rank 0/2: rank 1 is stuck: " in out, out[-4000:]
        assert "in grpo/score of step 3, while rank 0 waits for it" in out
        assert "Signal 9 (SIGKILL) received by PID" in out  # rank 0 killed it: a stopped process heeds nothing else
    assert "Timed out" not in out  # not the collective timeout
    time.sleep(1)
    assert ours_alive(str(tmp_path)) == []
