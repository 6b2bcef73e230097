"""Eval summaries (grpo.evaluate's summary.json) as curve points and table rows.

Read from the files, not from metrics.jsonl alone: the summary holds the 95% intervals and the protocol, which the
training log does not, and it is written before the step's log line, so a crash in between still shows it.
Key names match what the trainer logs (grpo.evaluate.flat_metrics): eval/avg@4, eval/<dataset>/pass@1, ...
Kept free of torch imports (grpo.evaluate pulls the samplers in) so a report draws in a second.
"""

from __future__ import annotations

from grpo.report.load import EvalResult, RunData

Point = tuple[int, float, "tuple[float, float] | None"]  # step, value, 95% interval


def flatten(summary: dict, prefix: str = "eval") -> dict[str, tuple[float, tuple[float, float] | None]]:
    """key -> (value, interval or None), the way the trainer names them in metrics.jsonl."""
    metrics = summary.get("metrics", {})

    def flat(s: dict, where: str) -> dict:
        ci = s.get("ci95", {})
        out = {f"{where}/{name}": (float(v), tuple(ci[name]) if name in ci else None)
               for name, v in s.get("metrics", {}).items()}
        for name in ("length_mean", "truncation_rate"):
            if name in s:
                out[f"{where}/{name}"] = (float(s[name]), None)
        return out

    out = flat(metrics.get("overall", {}), prefix)
    if len(metrics.get("by", {})) > 1:
        for name, s in metrics["by"].items():
            out.update(flat(s, f"{prefix}/{name}"))
    return out


def eval_points(run: RunData) -> dict[str, list[Point]]:
    """Every eval/* series of a run: the logged values, and summaries' values at steps the log lacks; intervals
    from the summaries wherever one matches a step."""
    points: dict[str, dict[int, list]] = {}
    for key in run.keys:
        if key.startswith("eval/"):
            for step, value in zip(*run.series(key)):
                points.setdefault(key, {})[step] = [value, None]
    for result in run.evals:
        if result.step is None:
            continue  # a stand-alone `grpo eval`: in the table, not on a curve over training steps
        for key, (value, ci) in flatten(result.summary).items():
            slot = points.setdefault(key, {}).setdefault(result.step, [value, None])
            slot[1] = ci
    return {key: [(s, v, ci) for s, (v, ci) in sorted(by_step.items())]
            for key, by_step in sorted(points.items(), key=lambda kv: key_order(kv[0]))}


KINDS = ("avg", "pass", "maj", "length_mean", "truncation_rate")


def key_order(key: str) -> tuple:
    """Overall before per dataset; avg@, pass@1, pass@2, ..., maj@, length, truncation within each."""
    where, _, name = key.rpartition("/")
    kind, _, k = name.partition("@")
    return (where != "eval", where, KINDS.index(kind) if kind in KINDS else len(KINDS), int(k) if k.isdigit() else 0,
            name)


def pct(x: float) -> str:
    return f"{x * 100:.1f}"


def table(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    """One row per (run, eval, dataset): scores in %, avg@k with its interval; the protocol closes each row."""
    head = ["run", "eval", "dataset", "problems", "avg@k [95% CI]", "pass@k", "maj@k", "length", "truncated",
            "protocol"]
    rows: list[list[str]] = []
    for run in runs:
        for result in run.evals:
            rows.extend(_rows(run.name, result))
    return head, rows


def _rows(run_name: str, result: EvalResult) -> list[list[str]]:
    metrics = result.summary["metrics"]
    parts = list(metrics.get("by", {}).items())
    if len(parts) != 1:
        parts.append(("overall", metrics["overall"]))
    out = []
    for dataset, s in parts:
        m, ci = s.get("metrics", {}), s.get("ci95", {})
        avg = next((k for k in m if k.startswith("avg@")), None)
        avg_cell = "-"
        if avg:
            avg_cell = f"{avg}: {pct(m[avg])}" + (f" [{pct(ci[avg][0])}, {pct(ci[avg][1])}]" if avg in ci else "")
        passes = ", ".join(f"{k} {pct(v)}" for k, v in m.items() if k.startswith("pass@"))
        majs = ", ".join(f"{k} {pct(v)}" for k, v in m.items() if k.startswith("maj@"))
        out.append([run_name, result.label, dataset, str(s.get("problems", "-")), avg_cell, passes or "-",
                    majs or "-", f"{s.get('length_mean', 0):.1f}", f"{pct(s.get('truncation_rate', 0))}%",
                    str(result.summary.get("protocol", "-"))])
    return out
