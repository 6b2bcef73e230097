"""The sample browser: every logged sample as a table row, filtered in the page by a few lines of inline JS
(no library, no network). Filters: run, step, a reward (total or one function) within a range, and text."""

from __future__ import annotations

import json
from html import escape

from grpo.report.load import RunData

MAX_PER_RUN = 2000  # a long run logs many; the page stays quick to open


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else escape(str(value))


def _completion(sample: dict) -> str:
    """The completion; a tool-using episode turn by turn, the tool's outputs marked (context, never trained on)."""
    turns = sample.get("turns")
    if not isinstance(turns, list) or not turns:
        return f"<pre>{escape(str(sample.get('completion', '')))}</pre>"
    parts = []
    for turn in turns:
        text = escape(str(turn.get("text", ""))) if isinstance(turn, dict) else ""
        if isinstance(turn, dict) and turn.get("role") == "tool":
            parts.append(f'<span class="tool" title="tool output: read by the model, masked from the loss">{text}</span>')
        else:
            parts.append(f'<span class="turn">{text}</span>')
    calls = len(sample.get("tool_calls") or [])
    return (f'<pre class="episode">{"".join(parts)}</pre><div class=meta>{len(turns)} part(s), {calls} tool '
            f'call(s); <span class="tool">marked</span>: tool output, not trained on</div>')


def sample_rows(runs: list[RunData]) -> tuple[list[str], list[str], list[int], list[str]]:
    """(rows html, reward names, steps, notes)."""
    names: list[str] = []
    steps: set[int] = set()
    rows, notes = [], []
    for run in runs:
        picked = run.samples[-MAX_PER_RUN:]
        if len(picked) < len(run.samples):
            notes.append(f"{run.name}: the last {MAX_PER_RUN} of {len(run.samples)} samples are shown")
        for s in picked:
            rewards = s.get("rewards") if isinstance(s.get("rewards"), dict) else {}
            for name in rewards:
                if name not in names:
                    names.append(name)
            steps.add(s["step"])
            data = {"total": s.get("reward"), **rewards}
            parts = s.get("reward_parts") if isinstance(s.get("reward_parts"), dict) else {}
            per = "<br>".join(f"{escape(str(k))}: {_fmt(v)}{_parts(parts.get(k))}" for k, v in rewards.items())
            rows.append(
                f'<tr data-run="{escape(run.name)}" data-step="{s["step"]}" '
                f"data-rewards='{escape(json.dumps(data, default=str))}'>"
                f"<td>{escape(run.name)}</td><td>{s['step']}</td>"
                f"<td><pre>{escape(str(s.get('prompt', '')))}</pre></td>"
                f"<td>{_completion(s)}"
                f"<div class=meta>finish: {escape(str(s.get('finish_reason', '-')))}"
                f" &middot; answer: {escape(str(s.get('answer', '-')))}</div></td>"
                f"<td>{_fmt(s.get('reward', '-'))}</td><td>{per or '-'}</td><td>{_fmt(s.get('advantage', '-'))}</td>"
                f"</tr>")
    return rows, names, sorted(steps), notes


def _parts(parts: object) -> str:
    """A reward's sub-scores beside its value (a judge's principles): ' (correct 0.4, brief 0.6)'."""
    if not isinstance(parts, dict) or not parts:
        return ""
    return " (" + ", ".join(f"{escape(str(k))} {_fmt(v)}" for k, v in parts.items()) + ")"


def samples_section(runs: list[RunData]) -> str:
    rows, names, steps, notes = sample_rows(runs)
    if not rows:
        return ('<section id="samples"><h2>Samples</h2><p class=muted>No samples logged yet '
                "(logging.samples_every steps, and the last step).</p></section>")
    run_opts = "".join(f"<option>{escape(r.name)}</option>" for r in runs if r.samples)
    step_opts = "".join(f'<option value="{s}">{s}</option>' for s in steps)
    reward_opts = "".join(f'<option value="{escape(n)}">{escape(n)}</option>' for n in names)
    note = "".join(f"<p class=muted>{escape(n)}</p>" for n in notes)
    return f"""<section id="samples"><h2>Samples</h2>{note}
<div class="filters">
 <label>run <select id="f-run"><option value="">all</option>{run_opts}</select></label>
 <label>step <select id="f-step"><option value="">all</option>{step_opts}</select></label>
 <label>reward <select id="f-reward"><option value="total">total</option>{reward_opts}</select></label>
 <label>from <input id="f-min" type="number" step="any" size="6"></label>
 <label>to <input id="f-max" type="number" step="any" size="6"></label>
 <label>text <input id="f-text" type="search" size="16"></label>
 <span id="sample-count" class="muted"></span>
</div>
<table class="samples"><thead><tr><th>run</th><th>step</th><th>prompt</th><th>completion</th><th>reward</th>
<th>per reward</th><th>advantage</th></tr></thead><tbody id="sample-rows">
{"".join(rows)}
</tbody></table></section>"""


# Plain ES5-level JS so any browser that opens the file runs it; it only hides and shows rows.
SAMPLES_JS = """
(function () {
  var body = document.getElementById('sample-rows');
  if (!body) { return; }
  var rows = Array.prototype.slice.call(body.querySelectorAll('tr'));
  var ids = ['f-run', 'f-step', 'f-reward', 'f-min', 'f-max', 'f-text'];
  var f = {};
  ids.forEach(function (id) { f[id] = document.getElementById(id); });
  function apply() {
    var run = f['f-run'].value, step = f['f-step'].value, name = f['f-reward'].value;
    var lo = f['f-min'].value === '' ? null : parseFloat(f['f-min'].value);
    var hi = f['f-max'].value === '' ? null : parseFloat(f['f-max'].value);
    var text = f['f-text'].value.toLowerCase(), shown = 0;
    rows.forEach(function (tr) {
      var r = JSON.parse(tr.getAttribute('data-rewards'))[name];
      var ok = (!run || tr.getAttribute('data-run') === run) && (!step || tr.getAttribute('data-step') === step);
      if (ok && (lo !== null || hi !== null)) {
        ok = typeof r === 'number' && (lo === null || r >= lo) && (hi === null || r <= hi);
      }
      if (ok && text) { ok = tr.textContent.toLowerCase().indexOf(text) >= 0; }
      tr.style.display = ok ? '' : 'none';
      if (ok) { shown += 1; }
    });
    document.getElementById('sample-count').textContent = shown + ' of ' + rows.length + ' samples shown';
  }
  ids.forEach(function (id) { f[id].addEventListener('input', apply); f[id].addEventListener('change', apply); });
  apply();
})();
"""
