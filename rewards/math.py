"""Math answer reward: 1.0 when a completion's final answer equals the reference answer, else 0.0.

Public API:
  score(completion, gold) -> float      one completion against one reference answer
  extract_answer(completion) -> str | None   the final answer a completion commits to
  math_reward(prompts, completions, answer, **kwargs)   the reward the trainer calls
"""

from __future__ import annotations

import time

from rewards.mathcheck.extract import extract_answer, extract_candidates, gold_answer
from rewards.mathcheck.compare import equivalent
from rewards.mathcheck.worker import POOL

# The sympy worker starts with this module (a few seconds, once), so no check ever waits for its imports.
POOL.warm()


def warm_up(timeout: float = 60.0) -> bool:
    """Block until the sympy worker and its standby are both ready (a harness about to feed hostile input
    right after import calls this; the trainer need not)."""
    return POOL.warm(timeout=timeout, standby=True)

__all__ = ["score", "extract_answer", "math_reward", "warm_up"]

_BUDGET_S = 0.8       # whole-call budget; a worker kill and the return fit in the rest of the 1 s bound
_MAX_CANDIDATES = 8   # more distinct boxed answers than this is spraying, not answering


def score(completion: str, gold: str) -> float:
    """1.0 when the completion's final answer is equivalent to ``gold``, else 0.0 (never raises on bad output)."""
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)  # AIME-style integer columns
    if not isinstance(completion, str) or not isinstance(gold, str):
        return 0.0
    start = time.monotonic()  # the 1 s bound covers extraction too
    ref = gold_answer(gold)
    cands = extract_candidates(completion)
    if ref is None or not cands:
        return 0.0
    # Several boxed answers are a hedge unless every one of them is right.
    distinct = list(dict.fromkeys(cands))
    if len(distinct) > _MAX_CANDIDATES:
        return 0.0
    deadline = start + _BUDGET_S  # one time budget for the whole call
    for cand in distinct:
        left = deadline - time.monotonic()
        if left <= 0 or not equivalent(cand, ref, budget_s=left):
            return 0.0
    return 1.0


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


# What the reward declares about itself (the reward contract): its 1.0 means right, and this is the answer it
# judged, which eval's majority vote counts.
math_reward.measures_correctness = True
math_reward.extract_answer = extract_answer
