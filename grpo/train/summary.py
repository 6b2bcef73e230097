"""The lines a run ends with: what changed between its first and last steps, where the time went, where the
checkpoint is, and the commands that look at it. Every figure is read from the run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from grpo.hacking.rules import fired_spans, spans_text

FIGURES = [("reward/mean", "reward", "{:.3f}"), ("accuracy", "accuracy", "{:.3f}"),
           ("completion/length_mean", "length", "{:.1f}"), ("completion/truncated_fraction", "truncated", "{:.2f}"),
           ("entropy", "entropy", "{:.3f}"), ("kl", "kl", "{:.4f}")]
TIME_PARTS = ["generate", "score", "train", "sync"]


def read_metrics(path: Path) -> list[dict]:
    """Complete lines only: a torn last line (a crash mid-write) is not a step."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def window(steps: int) -> int:
    """How many steps make "first" and "last": 20 on a long run, fewer on a short one (never overlapping)."""
    return max(1, min(20, steps // 2))


def closing_summary(rows: list[dict], output_dir: Path, checkpoint: Path | None, eval_data: str | None) -> str:
    if not rows:
        return f"no steps logged in {output_dir / 'metrics.jsonl'}"
    n = window(len(rows))
    first, last = rows[:n], rows[-n:]
    lines = [f"run {output_dir}: {len(rows)} steps; first {n} vs last {n} steps:"]
    for key, label, fmt in FIGURES:
        a, b = _mean(first, key), _mean(last, key)
        if a is not None and b is not None:
            lines.append(f"  {label:<10} {fmt.format(a)} -> {fmt.format(b)}")
    step_s = _mean(rows, "time/step_s")
    if step_s:
        parts = {p: _mean(rows, f"time/{p}_s") or 0.0 for p in TIME_PARTS}
        split = ", ".join(f"{p} {100 * v / step_s:.0f}%" for p, v in parts.items())
        other = max(0.0, step_s - sum(parts.values()))
        lines.append(f"  time/step  {step_s:.2f} s ({split}, other {100 * other / step_s:.0f}%)")
        lines += _caller_lines(rows, step_s)
    fired = fired_spans(rows)
    if fired:
        told = "; ".join(f"{name} (steps {spans_text(where)})" for name, where in fired.items())
        lines.append(f"  alarms     {told}: reward-hacking alarms, see the report")
    if checkpoint is not None:
        lines.append(f"checkpoint: {checkpoint}")
    lines.append(f"see the curves:    grpo report {output_dir}")
    data = eval_data or "FILE.jsonl"
    lines.append(f"evaluate it:       grpo eval --model {output_dir} --data {data}")
    return "\n".join(lines)


def _caller_lines(rows: list[dict], step_s: float) -> list[str]:
    """One line per reward that calls out (a judge: reward/<name>/calls and /seconds, rewards/output.py): its
    calls and seconds a step, within the step's score time, and the judgements that failed in all."""
    lines = []
    names = dict.fromkeys(k.split("/")[1] for r in rows for k in r if k.startswith("reward/") and k.endswith("/calls")
                          and k.count("/") == 2)
    for name in names:
        calls, seconds = _mean(rows, f"reward/{name}/calls") or 0.0, _mean(rows, f"reward/{name}/seconds") or 0.0
        failed = sum(r.get(f"reward/{name}/failed_judgements", 0) for r in rows)
        cached = _mean(rows, f"reward/{name}/cached")
        reused = f" ({cached:.0f} more answered from its cache)" if cached else ""
        share = 100 * seconds / step_s
        lines.append(f"  {name:<10} {calls:.0f} calls a step{reused}, {seconds:.2f} s a step ({share:.0f}% of the "
                     f"step, within score); {failed:.0f} failed judgements in all")
    return lines


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None
