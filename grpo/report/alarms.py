"""The report's list of reward-hacking alarms: for each run, which alarms fired over which steps (alarms/<name> in
metrics.jsonl), what each means and what to look at (grpo/hacking/rules.py). Shown near the top of the page: an
alarm is the first thing to read about a run."""

from __future__ import annotations

from html import escape

from grpo.hacking.rules import ALARMS, fired_spans, spans_text
from grpo.report.load import RunData


def section(runs: list[RunData]) -> str:
    watched = [run for run in runs if any(k.startswith(("hacking/", "alarms/")) for k in run.keys)]
    if not watched:
        return ""
    known = {a.name: a for a in ALARMS}
    rows, quiet = [], []
    for run in watched:
        fired = fired_spans(run.metrics)
        if not fired:
            quiet.append(run.name)
        for name, where in fired.items():
            alarm = known.get(name)
            rows.append(f"<tr><td>{escape(run.name)}</td><td><b>{escape(name)}</b></td>"
                        f"<td>{escape(alarm.title if alarm else '')}</td><td>{escape(spans_text(where))}</td>"
                        f"<td>{escape(alarm.look_at if alarm else '')}</td></tr>")
    body = ("<table class=alarms><tr><th>run</th><th>alarm</th><th>what it means</th><th>steps</th><th>look at</th>"
            "</tr>" + "".join(rows) + "</table>") if rows else ""
    silent = f"<p class=muted>No alarm fired in {escape(', '.join(quiet))}.</p>" if quiet else ""
    return ('<section id="alarms"><h2>Reward-hacking alarms</h2><p class="why">Rules over each run\'s own figures '
            "(guard.alarms; the signals they read are in the Reward-hacking signals panel). An alarm is a reason to "
            "read the samples, not a verdict.</p>" + body + silent + "</section>")
