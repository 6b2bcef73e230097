"""Math answer reward: 1.0 when a completion's final answer equals the reference answer, else 0.0.

Public API:
  score(completion, gold) -> float      one completion against one reference answer
  extract_answer(completion) -> str | None   the final answer a completion commits to
  math_reward(prompts, completions, answer, **kwargs)   the reward the trainer calls
"""

from __future__ import annotations

from rewards.mathcheck.extract import extract_answer, gold_answer
from rewards.mathcheck.compare import equivalent

__all__ = ["score", "extract_answer", "math_reward"]


def score(completion: str, gold: str) -> float:
    """1.0 when the completion's final answer is equivalent to ``gold``, else 0.0 (never raises on bad output)."""
    if not isinstance(completion, str) or not isinstance(gold, str):
        return 0.0
    pred = extract_answer(completion)
    ref = gold_answer(gold)
    if pred is None or ref is None:
        return 0.0
    return 1.0 if equivalent(pred, ref) else 0.0


def math_reward(prompts: list[str], completions: list[str], answer: list | None = None,
                **kwargs) -> list[float | None]:
    """Reward contract (rewards/__init__.py): None where the row has no reference answer."""
    answers = answer if answer is not None else [None] * len(completions)
    out: list[float | None] = []
    for completion, gold in zip(completions, answers):
        if gold is None or (isinstance(gold, str) and not gold.strip()):
            out.append(None)
            continue
        out.append(score(completion or "", gold if isinstance(gold, str) else str(gold)))
    return out
