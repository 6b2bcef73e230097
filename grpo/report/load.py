"""Read run directories as they are on disk: finished, still being written, or left half-way by a crash.

Nothing here raises on a damaged file: a line that does not parse is skipped and said in `notes`, so a report
of a crashed run shows everything up to the crash. Only a path that is no run directory at all is an error.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo.errors import UserError


@dataclass
class EvalResult:
    """One eval summary.json: a periodic eval (step set) or a `grpo eval` written into the run directory."""

    label: str  # "step 20" or the summary's folder relative to the run directory
    step: int | None
    path: Path
    summary: dict


@dataclass
class RunData:
    name: str  # legend label, unique among the runs of one report
    path: Path
    metrics: list[dict[str, Any]]  # one dict per step, sorted by step; only numeric values
    samples: list[dict[str, Any]]
    recipe: dict | None
    environment: dict | None
    evals: list[EvalResult]
    notes: list[str] = field(default_factory=list)
    modified: str = ""  # when metrics.jsonl was last written (a run still going keeps moving this)

    @property
    def keys(self) -> list[str]:
        """Every metric key logged at any step, in first-seen order."""
        return list(dict.fromkeys(k for row in self.metrics for k in row if k != "step"))

    def series(self, key: str) -> tuple[list[int], list[float]]:
        steps, values = [], []
        for row in self.metrics:
            if key in row:
                steps.append(row["step"])
                values.append(row[key])
        return steps, values

    @property
    def planned_steps(self) -> int | None:
        try:
            return int(self.recipe["train"]["steps"])
        except (TypeError, KeyError, ValueError):
            return None


def read_jsonl(path: Path, notes: list[str]) -> list[dict]:
    """Every whole JSON object in the file. A torn last line (a crash mid-write, or a write in progress) and any
    other line that does not parse are skipped, each with a note naming the file and line."""
    rows: list[dict] = []
    if not path.is_file():
        return rows
    with path.open("rb") as f:
        data = f.read()  # one read: a writer appending meanwhile cannot tear a line twice
    lines = data.decode("utf-8", errors="replace").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            last = number == len(lines) or (number == len(lines) - 1 and not lines[-1])
            where = "last line" if last else f"line {number}"
            why = "torn (the run crashed or is still writing it)" if last else "not valid JSON"
            notes.append(f"{path.name}: {where} skipped: {why}")
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            notes.append(f"{path.name}: line {number} skipped: not a JSON object")
    return rows


def _numeric(row: dict) -> dict[str, Any]:
    """Keep the step and the numbers; inf becomes nan so one bad value cannot flatten a plot's scale."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            out[key] = value if key == "step" or math.isfinite(value) else float("nan")
    return out


def _metrics(path: Path, notes: list[str]) -> list[dict]:
    by_step: dict[int, dict] = {}
    for row in read_jsonl(path, notes):
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            notes.append(f"{path.name}: a line without an integer step skipped")
            continue
        by_step[step] = _numeric(row)  # a step written twice (resume without truncation): the later one counts
    return [by_step[s] for s in sorted(by_step)]


def _json_file(path: Path, notes: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name}: unreadable ({exc.__class__.__name__}), left out")
        return None
    return value if isinstance(value, dict) else None


def _evals(run_dir: Path, notes: list[str]) -> list[EvalResult]:
    """Periodic evals (eval/step_NNNNNN/summary.json) and any other `grpo eval` summary under the run directory
    (checkpoints excluded: they hold weights, not results)."""
    found: list[EvalResult] = []
    for path in sorted(run_dir.rglob("summary.json")):
        rel = path.relative_to(run_dir)
        if rel.parts[0] == "checkpoints":
            continue
        summary = _json_file(path, notes)
        if not summary or "metrics" not in summary or "overall" not in summary.get("metrics", {}):
            continue  # some other tool's summary.json
        step = summary.get("step")
        step = step if isinstance(step, int) else None
        label = f"step {step}" if step is not None else str(rel.parent)
        found.append(EvalResult(label, step, path, summary))
    found.sort(key=lambda e: (e.step is None, e.step or 0, e.label))
    return found


def load_run(path: str | Path, name: str | None = None) -> RunData:
    run_dir = Path(path).expanduser()
    if not run_dir.is_dir():
        raise UserError(f"{path}: no such run directory")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file() and not (run_dir / "recipe.resolved.json").is_file():
        raise UserError(f"{path}: not a grpo run directory (no metrics.jsonl or recipe.resolved.json in it)")
    notes: list[str] = []
    metrics = _metrics(metrics_path, notes)
    if not metrics:
        notes.append("no step logged yet")
    run = RunData(name=name or run_dir.resolve().name, path=run_dir, metrics=metrics,
                  samples=[s for s in read_jsonl(run_dir / "samples.jsonl", notes) if isinstance(s.get("step"), int)],
                  recipe=_json_file(run_dir / "recipe.resolved.json", notes),
                  environment=_json_file(run_dir / "environment.json", notes),
                  evals=_evals(run_dir, notes), notes=notes)
    if metrics_path.is_file():
        run.modified = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(metrics_path)))
    planned = run.planned_steps
    if metrics and planned and metrics[-1]["step"] < planned:
        notes.append(f"{metrics[-1]['step']} of {planned} steps logged: still running, or stopped early")
    return run


def load_runs(paths: list[str | Path]) -> list[RunData]:
    """Legend labels are the directory names; two runs of the same name get their parent folder in front."""
    dirs = [Path(p).expanduser() for p in paths]
    names = [d.resolve().name for d in dirs]
    labels = []
    for d, n in zip(dirs, names):
        label = n if names.count(n) == 1 else f"{d.resolve().parent.name}/{n}"
        while label in labels:
            label += "'"
        labels.append(label)
    return [load_run(d, label) for d, label in zip(dirs, labels)]
