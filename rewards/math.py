"""Math answer reward: 1.0 when a completion's final answer equals the reference answer, else 0.0.

Public API:
  score(completion, gold, finish_reason=None) -> float   one completion against one reference answer
  extract_answer(completion, finish_reason=None) -> str | None   the final answer a completion commits to
  math_reward(prompts, completions, answer, **kwargs)   the reward the trainer calls
  warm_up()                             start the sympy worker ahead of the first check (optional)
"""

from __future__ import annotations

import time

from rewards.mathcheck.compare import judge
from rewards.mathcheck.extract import extract_answer, final_answer, gold_items
from rewards.mathcheck.worker import POOL

__all__ = ["score", "extract_answer", "math_reward", "warm_up"]

_BUDGET_S = 0.8    # whole-call budget; a worker kill and the return fit in the rest of the 1 s bound
_MAX_ITEMS = 200   # a final answer of more boxes than this is spraying, not answering


def warm_up(timeout: float = 60.0) -> bool:
    """Block until the sympy worker and its standby are both ready. Importing this module starts nothing; the
    first score() call starts the worker (and a check that needs it waits for its imports outside its own
    time budget, once). A harness about to feed hostile input right after import calls this."""
    return POOL.warm(timeout=timeout, standby=True)


def score(completion: str, gold: str, finish_reason: str | None = None) -> float:
    """1.0 when the completion's final answer is equivalent to ``gold``, else 0.0 (never raises on bad output).
    finish_reason ("stop" / "length", where the sampler says): a completion cut by the length limit gets no
    fallback answer from its last number (extract.final_answer)."""
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)  # AIME-style integer columns
    if not isinstance(completion, str) or not isinstance(gold, str):
        return 0.0
    POOL.kick()  # lazy start: most checks never need sympy, and the worker's imports run meanwhile
    start = time.monotonic()  # the 1 s bound covers extraction too
    refs = gold_items(gold)
    found = final_answer(completion, finish_reason if isinstance(finish_reason, str) else None)
    if not refs or not found or len(found[0]) > _MAX_ITEMS:
        return 0.0
    items, hedge = found
    left = start + _BUDGET_S - time.monotonic()
    return 1.0 if left > 0 and judge(items, hedge, refs, budget_s=left) else 0.0


def math_reward(prompts: list[str], completions: list[str], answer: list | None = None,
                **kwargs) -> list[float | None]:
    """Reward contract (rewards/__init__.py): None where the row has no reference answer."""
    answers = answer if answer is not None else [None] * len(completions)
    reasons = kwargs.get("finish_reasons")  # the trainer's and eval's reward_columns pass the sampler's
    if not isinstance(reasons, (list, tuple)) or len(reasons) != len(completions):
        reasons = [None] * len(completions)
    # A tool-using episode's answer is what the model stated after the last tool output: a tool's output (or a
    # number the model wrote before calling it) is not an answer.
    finals = kwargs.get("final_text")
    if not isinstance(finals, (list, tuple)) or len(finals) != len(completions):
        finals = [None] * len(completions)
    out: list[float | None] = []
    for completion, gold, reason, final in zip(completions, answers, reasons, finals):
        if gold is None or (isinstance(gold, str) and not gold.strip()):
            out.append(None)
            continue
        text = final if isinstance(final, str) else completion
        out.append(score(text or "", gold if isinstance(gold, str) else str(gold), reason))
    return out


# What the reward declares about itself (the reward contract): its 1.0 means right, and this is the answer it
# judged, which eval's majority vote counts.
math_reward.measures_correctness = True
math_reward.extract_answer = extract_answer
