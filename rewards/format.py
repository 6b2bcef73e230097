"""Format reward: 1.0 when a completion has the shape the recipe asks for, else 0.0.

styles:
  answer  a final answer is marked where a grader can find it (\\boxed{..}, "The answer is ..", "#### ..")
  think   <think>..</think> followed by a non-empty final answer (R1-style)
  pattern args.pattern, a regular expression that must match (re.search, DOTALL)
"""

from __future__ import annotations

import re

from rewards.errors import UserError

_ANSWER_MARK = re.compile(r"\\boxed\s*\{\s*[^{}\s]|\\boxed\s+\S|[Tt]he (?:final )?answer is\s*\S|####\s*\S|Answer:\s*\S")


def _think_then_answer(text: str) -> bool:
    r"""re.match(r"\s*<think>.*?\S.*?</think>\s*\S", DOTALL) in one pass (the nested lazy scans were quadratic on a
    long unclosed think): some non-space inside, a </think> after it, and a non-space after that."""
    body = len(text) - len(text.lstrip())
    if not text.startswith("<think>", body):
        return False
    body += len("<think>")
    first = len(text) - len(text[body:].lstrip()) if text[body:].strip() else -1
    close = text.find("</think>", first + 1) if first >= 0 else -1
    return close >= 0 and bool(text[close + len("</think>"):].strip())


class _Think:
    search = staticmethod(_think_then_answer)


_THINK = _Think()


def format_reward(prompts: list[str], completions: list[str], style: str = "answer", pattern: str | None = None,
                  **_columns) -> list[float]:
    if style == "pattern":
        if not pattern:
            raise UserError("reward format: style 'pattern' needs args.pattern, a regular expression")
        rule = re.compile(pattern, re.DOTALL)
    elif style == "answer":
        rule = _ANSWER_MARK
    elif style == "think":
        rule = _THINK
    else:
        raise UserError(f"reward format: style {style!r} is not one of answer, think, pattern")
    return [1.0 if rule.search(c or "") else 0.0 for c in completions]


format_reward.shaping = True  # pays for form, not for being right (the reward-hacking alarms watch its share)
