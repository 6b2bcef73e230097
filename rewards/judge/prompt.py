"""The judge's prompt and the reading of its reply: both explicit, both versioned in the recipe.

The built-in template is TEMPLATE_VERSION; a recipe that writes its own `template` must name it with its own
`template_version`, so a run's record says which words its rewards came from (and the cache never mixes them).
The reply is untrusted text: it is cut to its last REPLY_CHARS characters before the score pattern is searched,
and the last match is the score (a judge that reasons first, then scores, is read right; one that quotes the
scale in its reasoning is not misread, as the verdict comes last).
"""

from __future__ import annotations

import math
import re
import string

TEMPLATE_VERSION = "grpo-judge-v1"
TEMPLATE = """You are grading an AI assistant's answer against one principle.

Principle: {principle}
{instruction}

[Question]
{prompt}

[Answer]
{completion}

Rate how well the answer follows the principle, from {low} (worst) to {high} (best). Give one or two sentences of \
reasons, then end with a line of the form "Score: <number>"."""
SCORE_PATTERN = r"Score:\s*\**\s*(-?\d+(?:\.\d+)?)"
FIELDS = ("prompt", "completion", "principle", "instruction", "low", "high")
REPLY_CHARS = 4000  # of the reply's end: the score pattern never scans more


def template_problems(template: str, where: str) -> list[str]:
    """Fields the template names that the judge does not fill, or a template str.format cannot read."""
    try:
        named = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        return [f"{where}: {exc} (write a literal brace as {{{{ or }}}})"]
    problems = [f"{where}: unknown field {{{f}}}; the fields are {', '.join('{' + x + '}' for x in FIELDS)}"
                for f in dict.fromkeys(named) if f not in FIELDS]
    if "completion" not in named:
        problems.append(f"{where}: has no {{completion}}; the judge would never see the answer it scores")
    return problems


def pattern_problems(pattern: str, where: str) -> list[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return [f"{where}: not a regular expression ({exc})"]
    if compiled.groups < 1:
        return [f"{where}: needs one capturing group around the number, e.g. Score:\\s*(\\d+)"]
    return []


def render(template: str, *, prompt: str, completion: str, principle: str, instruction: str, low: float,
           high: float) -> str:
    return template.format(prompt=prompt, completion=completion, principle=principle, instruction=instruction,
                           low=_number_text(low), high=_number_text(high))


def clipped(text: str, limit: int) -> str:
    """At most `limit` characters of a completion for the judge: its head and its tail, and how much was cut (an
    answer's verdict is often at its end)."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[-tail:]}"


def read_score(reply: str, pattern: re.Pattern, low: float, high: float) -> tuple[float | None, str]:
    """(the score in [low, high], "") or (None, why not): no match, not a number, or out of the scale."""
    end = reply[-REPLY_CHARS:]
    last = None
    for last in pattern.finditer(end):
        pass
    if last is None:
        return None, f"no score matching {pattern.pattern!r} in the reply {_quote(end)}"
    try:
        value = float(last.group(1))
    except (TypeError, ValueError, IndexError):
        return None, f"the score {_quote(last.group(0))} is not a number"
    if not math.isfinite(value) or not low <= value <= high:
        return None, f"the score {value:g} is outside the scale [{_number_text(low)}, {_number_text(high)}]"
    return value, ""


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[-limit:])
