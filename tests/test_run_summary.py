"""The closing summary of a run: its figures come from the run's own metrics."""

import json
from pathlib import Path

from grpo.train.summary import closing_summary, read_metrics


def test_summary_compares_first_and_last_steps_from_the_metrics(tmp_path):
    rows = [{"step": s, "reward/mean": 0.2 if s <= 20 else 0.8, "accuracy": 0.1 if s <= 20 else 0.7,
             "completion/length_mean": 20.0, "time/step_s": 2.0, "time/generate_s": 0.5, "time/score_s": 0.1,
             "time/train_s": 1.0, "time/sync_s": 0.0} for s in range(1, 101)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 101, "rew')  # torn last line
    text = closing_summary(read_metrics(path), tmp_path, tmp_path / "checkpoints" / "step-000100", "test.jsonl")
    assert "100 steps; first 20 vs last 20" in text
    assert "reward     0.200 -> 0.800" in text and "accuracy   0.100 -> 0.700" in text
    assert "2.00 s (generate 25%, score 5%, train 50%, sync 0%, other 20%)" in text
    assert f"grpo report {tmp_path}" in text and f"grpo eval --model {tmp_path} --data test.jsonl" in text
    assert "step-000100" in text


def test_a_short_run_uses_windows_that_do_not_overlap(tmp_path):
    rows = [{"step": 1, "reward/mean": 0.0}, {"step": 2, "reward/mean": 1.0}]
    text = closing_summary(rows, Path("runs/x"), None, None)
    assert "first 1 vs last 1" in text and "reward     0.000 -> 1.000" in text


def test_the_summary_names_the_alarms_that_fired_and_when():
    rows = [{"step": s, "reward/mean": 0.5, **({"alarms/shaping": 1.0} if 4 <= s <= 6 else {})} for s in range(1, 9)]
    text = closing_summary(rows, Path("runs/x"), None, None)
    assert "alarms     shaping (steps 4-6): reward-hacking alarms, see the report" in text
    assert "alarms" not in closing_summary(rows[:3], Path("runs/x"), None, None)
