"""Assemble the report page: one HTML file with the figures inlined as SVG, the CSS and the sample browser's
JS inline too, so it opens from disk, offline, and can be mailed or attached as it is."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from html import escape

from grpo.report import alarms, evals, figures
from grpo.report.load import RunData
from grpo.report.panels import PANELS, Panel, assign
from grpo.report.samples import SAMPLES_JS, samples_section

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1440px;padding:16px 24px;
color:#222;background:#fff}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:24px 0 4px;border-bottom:1px solid #ddd;padding-bottom:3px}
nav a{margin-right:12px}.muted,.why{color:#666}.why{margin:2px 0 6px}.note{color:#8a5300}
section.panel svg{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;font-size:12px;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;max-width:520px}
table.samples pre{max-height:240px;overflow:auto}.tool{background:#e8eefc;color:#335;border-bottom:1px dotted #88a}.meta{color:#777;font-size:11px;margin-top:3px}
table.alarms td:nth-child(2){color:#a40000}
.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:6px 0}details{margin:4px 0}
summary{cursor:pointer;color:#345}
"""


@dataclass
class Report:
    html: str
    figures: dict[str, object] = field(default_factory=dict)  # panel id -> matplotlib Figure (for --png)

    @property
    def panel_ids(self) -> list[str]:
        return list(self.figures)


def num(value) -> str:
    """How every number is printed in the page's tables."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _stats(keys: list[str], runs: list[RunData]) -> str:
    rows = []
    for key in keys:
        for run in runs:
            steps, values = run.series(key)
            finite = [v for v in values if not math.isnan(v)]
            if not steps:
                continue
            cells = [len(steps), values[0], values[-1], min(finite, default=None), max(finite, default=None)]
            rows.append(f"<tr><td>{escape(key)}</td><td>{escape(run.name)}</td>"
                        + "".join(f"<td class=num>{num(c)}</td>" for c in cells)
                        + f"<td class=num>{steps[-1]}</td></tr>")
    return ("<details><summary>numbers</summary><table><tr><th>metric</th><th>run</th><th>steps</th><th>first</th>"
            "<th>last</th><th>min</th><th>max</th><th>last step</th></tr>" + "".join(rows) + "</table></details>")


def _panel(panel: Panel, svg: str, extra: str, smoothing: float) -> str:
    how = {"metrics": f" Faint: the raw value per step; bold: its EMA (smoothing {smoothing:g}).", "time": "",
           "eval": ""}[panel.kind]
    return (f'<section class="panel" id="panel-{panel.id}" data-panel="{panel.id}"><h2>{escape(panel.title)}</h2>'
            f'<p class="why">{escape(panel.why + how)}</p>{svg}{extra}</section>')


def _runs_table(runs: list[RunData]) -> str:
    rows = []
    for run in runs:
        r = run.recipe or {}
        last = run.metrics[-1]["step"] if run.metrics else 0
        planned = run.planned_steps
        rewards = ", ".join(str(x.get("name")) for x in r.get("rewards", []) if isinstance(x, dict)) or "-"
        notes = "".join(f"<div class=note>{escape(n)}</div>" for n in run.notes) or "-"
        steps = f"{last} / {planned}" if planned else str(last)
        rows.append(f"<tr><td><b>{escape(run.name)}</b></td><td>{escape(str(run.path))}</td>"
                    f"<td class=num>{steps}</td><td>{escape(run.modified or '-')}</td>"
                    f"<td>{escape(str(r.get('model', {}).get('path', '-')))}</td><td>{escape(rewards)}</td>"
                    f"<td>{notes}</td></tr>")
    return ("<table><tr><th>run</th><th>directory</th><th>steps logged</th><th>metrics last written</th><th>model</th>"
            "<th>rewards</th><th>notes</th></tr>" + "".join(rows) + "</table>")


def _eval_table(runs: list[RunData]) -> str:
    head, rows = evals.table(runs)
    if not rows:
        return ('<section id="eval-table"><h2>Eval results</h2><p class=muted>No eval summary in these runs '
                "(set eval.every and eval.data in the recipe, or write a `grpo eval` into the run directory)."
                "</p></section>")
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return ('<section id="eval-table"><h2>Eval results</h2><p class=muted>Scores in %; avg@k with its 95% bootstrap '
            "interval over problems. Numbers made under different protocols do not compare.</p><table><tr>"
            + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" + body + "</table></section>")


def _text(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _environment(run: RunData) -> str:
    if run.environment:
        cells = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(_text(v))}</td></tr>"
                        for k, v in run.environment.items())
        return f"<table>{cells}</table>"
    seen = next((e for e in run.evals if isinstance(e.summary.get("environment"), dict)), None)
    text = "not recorded (no environment.json in the run directory)"
    if seen is not None:  # an eval summary records the versions it ran under: better than nothing, and said so
        env = ", ".join(f"{k} {v}" for k, v in seen.summary["environment"].items())
        text += f"; the eval at {seen.label} recorded: {env}, device {seen.summary.get('model', {}).get('device', '?')}"
    return f"<p class=muted>{escape(text)}</p>"


def _runs_section(runs: list[RunData]) -> str:
    parts = []
    for run in runs:
        recipe = (f"<details><summary>recipe.resolved.json</summary><pre>{escape(json.dumps(run.recipe, indent=2))}"
                  "</pre></details>" if run.recipe else "<p class=muted>recipe: not recorded</p>")
        parts.append(f"<h3>{escape(run.name)}</h3>{recipe}<div><b>environment</b></div>{_environment(run)}")
    return '<section id="runs"><h2>Recipes and environments</h2>' + "".join(parts) + "</section>"


def build(runs: list[RunData], smoothing: float = 0.8) -> Report:
    keys = list(dict.fromkeys(k for run in runs for k in run.keys))
    by_panel = assign(keys)
    report = Report(html="")
    sections, absent = [], []
    for panel in PANELS:
        panel_keys = by_panel[panel.id]
        if panel.kind == "eval":
            panel_keys = list(dict.fromkeys(k for run in runs for k in evals.eval_points(run)))
        if panel.kind == "time" and not any(figures.time_parts(run)[0] for run in runs):
            panel_keys = []
        if not panel_keys:
            absent.append(panel.title)
            continue
        if panel.kind == "time":
            fig, extra = figures.time_figure(runs), _stats(panel_keys, runs)
        elif panel.kind == "eval":
            fig, extra = figures.eval_figure(panel_keys, runs), _stats([k for k in panel_keys if k in keys], runs)
        else:
            fig, extra = figures.metrics_figure(panel, panel_keys, runs, smoothing), _stats(panel_keys, runs)
        report.figures[panel.id] = fig
        sections.append(_panel(panel, figures.to_svg(fig, f"p-{panel.id}"), extra, smoothing))
    nav = "".join(f'<a href="#panel-{pid}">{escape(p.title)}</a>' for p in PANELS for pid in [p.id]
                  if pid in report.figures) + '<a href="#eval-table">Eval results</a><a href="#samples">Samples</a>' \
        '<a href="#runs">Recipes</a>'
    missing = (f"<p class=muted>Not logged in these runs: {escape(', '.join(absent))}.</p>" if absent else "")
    names = ", ".join(run.name for run in runs)
    report.html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>grpo report: {escape(names)}</title><style>{CSS}</style></head>
<body><h1>grpo report: {escape(names)}</h1>
<p class=muted>Made {time.strftime('%Y-%m-%d %H:%M:%S')} by <code>grpo report</code> from the files in each run
directory; a run still going is shown as far as it has got.</p>
{_runs_table(runs)}{alarms.section(runs)}<nav>{nav}</nav>{missing}
{''.join(sections)}
{_eval_table(runs)}
{samples_section(runs)}
{_runs_section(runs)}
<script>{SAMPLES_JS}</script>
</body></html>
"""
    return report
