"""Are two runs the same run? metrics.jsonl line by line in every column but the times (time/*, throughput/*: they
measure the machine, not the run), and samples.jsonl byte for byte. For refactors whose bar is "no change in
behaviour" (issue 27):

    .venv/bin/python bench/compare_runs.py RUN_DIR_BEFORE RUN_DIR_AFTER [--prefix]

--prefix compares only the steps both runs have logged (one still running), and samples.jsonl up to the shorter
one's length. Exit 0 when identical, 1 with the first differences listed, 2 when a run directory lacks its
files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

TIME_PREFIXES = ("time/", "throughput/")


def _without_times(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(TIME_PREFIXES)}


def metric_differences(before: Path, after: Path, prefix: bool = False, limit: int = 20) -> list[str]:
    """Lines whose non-time columns differ, as 'step N: key: before != after'. Values are compared by their JSON
    text, so 0.0 and -0.0 (or 1 and 1.0) count as different: the bar is the same bits."""
    a = before.read_text().splitlines()
    b = after.read_text().splitlines()
    found = []
    if len(a) != len(b) and not prefix:
        found.append(f"{before.name}: {len(a)} lines before, {len(b)} after")
    for line_a, line_b in zip(a, b):
        ra, rb = _without_times(json.loads(line_a)), _without_times(json.loads(line_b))
        for key in sorted(set(ra) | set(rb)):
            if json.dumps(ra.get(key)) != json.dumps(rb.get(key)):
                was, now = ra.get(key, "(absent)"), rb.get(key, "(absent)")
                found.append(f"step {ra.get('step')}: {key}: {was!r} != {now!r}")
    return found[:limit]


def main(argv: list[str]) -> int:
    prefix = "--prefix" in argv
    argv = [a for a in argv if a != "--prefix"]
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = (Path(p) for p in argv)
    for run in (before, after):
        for name in ("metrics.jsonl", "samples.jsonl"):
            if not (run / name).is_file() and not (prefix and name == "samples.jsonl"):
                print(f"{run / name}: missing; give two run directories (output_dir of grpo train)", file=sys.stderr)
                return 2
    problems = metric_differences(before / "metrics.jsonl", after / "metrics.jsonl", prefix)
    samples_a, samples_b = ((run / "samples.jsonl").read_bytes() if (run / "samples.jsonl").is_file() else b""
                            for run in (before, after))
    if prefix:
        samples_a = samples_b = samples_a[:min(len(samples_a), len(samples_b))] if \
            samples_a[:len(samples_b)] == samples_b[:len(samples_a)] else None
    if samples_a is None or samples_a != samples_b:
        problems.append("samples.jsonl: the bytes differ")
    steps = min(len((run / "metrics.jsonl").read_text().splitlines()) for run in (before, after))
    if problems:
        print("\n".join(["DIFFERENT:", *problems]))
        return 1
    print(f"identical: {steps} steps of metrics.jsonl (time columns aside) and {len(samples_a)} bytes of "
          f"samples.jsonl{' (the steps both runs have logged so far)' if prefix else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
