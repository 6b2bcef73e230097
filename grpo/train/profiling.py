"""`grpo train --profile`: one step under the torch profiler (operators, and the step's stages as labelled
ranges) or cProfile (Python functions: where the interpreter, not the kernels, spends the step), written to
output_dir/profile/ and summed up on stderr."""

from __future__ import annotations

import cProfile
import io as _io
import pstats
import sys
import time
from pathlib import Path

import torch

from grpo import io
from grpo.heartbeat import PROGRESS

STAGES = ("grpo/generate", "grpo/score", "grpo/train", "grpo/sync")  # record_function labels in the step


class stage:
    """One stage of a step: a labelled range in the torch profiler's trace (a few microseconds when no profiler
    runs), its wall-clock seconds, for the step's time/* metrics, and a beat of the heartbeat (grpo.heartbeat,
    which counts entries and exits: every rank must run the same stages in the same order, so rank-0-only work such
    as writing a checkpoint stays outside them).

        with stage("grpo/train") as timed:
            ...
        timed.seconds
    """

    def __init__(self, name: str):
        self.name = name
        self._range = torch.profiler.record_function(name)
        self.seconds = 0.0

    def __enter__(self) -> "stage":
        PROGRESS.entered(self.name)
        self._range.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._started
        self._range.__exit__(*exc)
        PROGRESS.left(self.name)


class timed:
    """Wall-clock seconds of a block run on a helper thread: outside the loop's stages, whose heartbeat clock and
    profiler ranges belong to the main thread."""

    def __init__(self, name: str):
        self.name, self.seconds = name, 0.0

    def __enter__(self) -> "timed":
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._started


class StepProfiler:
    def __init__(self, step: int, kind: str, output_dir: Path, enabled: bool):
        self.step, self.kind, self.folder = step, kind, output_dir / "profile"
        self.enabled = enabled and step > 0
        self._active: torch.profiler.profile | cProfile.Profile | None = None
        self._started = 0.0

    def warn_if_outside(self, first: int, last: int) -> None:
        if self.enabled and not first <= self.step <= last:
            print(f"note: logging.profile_step={self.step} is outside the steps this run trains ({first}-{last}); "
                  f"nothing will be profiled", file=sys.stderr, flush=True)

    def begin(self, step: int) -> None:
        PROGRESS.step = step  # the loop calls this first thing in every step: the heartbeat names it
        if not self.enabled or step != self.step:
            return
        self._started = time.perf_counter()
        if self.kind == "python":
            self._active = cProfile.Profile()
            self._active.enable()
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._active = torch.profiler.profile(activities=activities, record_shapes=True)
        self._active.__enter__()

    def end(self, step: int) -> None:
        if self._active is None or step != self.step:
            return
        active, self._active = self._active, None
        wall_ms = (time.perf_counter() - self._started) * 1e3
        self.folder.mkdir(parents=True, exist_ok=True)
        if isinstance(active, cProfile.Profile):
            active.disable()
            report = _python_report(active)
        else:
            active.__exit__(None, None, None)
            report = _torch_report(active, wall_ms)
            io.write_with(self.folder / f"trace-step-{step}.json", lambda tmp: active.export_chrome_trace(str(tmp)))
        path = self.folder / f"step-{step}-{self.kind}.txt"
        io.write_text(path, report)
        summary = report.split("\n\n", 1)[0]  # the stages and top costs, before the full tables
        print(f"profile of step {step} ({self.kind}), in full in {path}:\n{summary}", file=sys.stderr, flush=True)


def _torch_report(prof: torch.profiler.profile, wall_ms: float) -> str:
    device = torch.cuda.is_available()
    events = prof.key_averages()
    key = "self_device_time_total" if device else "self_cpu_time_total"
    stages = {e.key: e.cpu_time_total / 1e3 for e in events if e.key in STAGES}  # ms inside each labelled range
    stages["other"] = max(0.0, wall_ms - sum(stages.values()))
    lines = [f"the step's {wall_ms:.1f} ms by stage (other: logging, samples, eval and checkpoint when due, and the "
             f"profiler's own cost):"]
    lines += [f"  {name.removeprefix('grpo/'):<12} {ms:9.1f} ms  {100 * ms / max(wall_ms, 1e-9):5.1f}%"
              for name, ms in stages.items()]
    ops = [e for e in events if e.key not in STAGES]
    op_total = sum(getattr(e, key) for e in ops) or 1.0
    lines.append(f"top operators by self {'device' if device else 'CPU'} time:")
    for e in sorted(ops, key=lambda e: getattr(e, key), reverse=True)[:20]:
        lines.append(f"  {e.key:<44} {getattr(e, key) / 1e3:9.1f} ms  {100 * getattr(e, key) / op_total:5.1f}%  "
                     f"x{e.count}")
    lines += ["", "the full table:", events.table(sort_by=key, row_limit=60)]
    return "\n".join(lines) + "\n"


def _python_report(prof: cProfile.Profile) -> str:
    stats = pstats.Stats(prof)
    total = sum(row[2] for row in stats.stats.values()) or 1.0  # own times add up to the step
    lines = ["top Python functions by own time:"]
    for (file, line, name), row in sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:20]:
        where = f"{Path(file).name}:{line}" if line else file
        lines.append(f"  {name[:40]:<40} {row[2] * 1e3:9.1f} ms  {100 * row[2] / total:5.1f}%  x{row[1]}  {where}")
    out = _io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(40)
    return "\n".join(lines) + "\n\nby cumulative time:\n" + out.getvalue()

