"""Length shaping rewards. Lengths are in tokens when the trainer passes completion_ids, else characters.

length_penalty        Kimi k1.5: within each group, 0.5 - (len - min) / (max - min); a wrong answer only keeps
                      the negative part, so brevity is never rewarded over correctness.
cosine_length_reward  Yeo et al. 2025 ("Demystifying long CoT"): a correctness reward whose size follows a cosine
                      in the length: short right answers earn most, short wrong ones lose most, truncation is punished.
overlong_penalty      DAPO soft overlong punishment: 0 until max_new_tokens - buffer_tokens, then a linear ramp to -1 at
                      max_new_tokens; -1 beyond.
"""

from __future__ import annotations

import math
from collections import defaultdict


def _lengths(completions: list[str], completion_ids: list | None) -> list[int]:
    if completion_ids is not None:
        return [len(ids) for ids in completion_ids]
    return [len(c) for c in completions]


def _correct(completions: list[str], answer: list | None) -> list[bool | None]:
    if answer is None:
        return [None] * len(completions)
    from rewards.math import score as math_score  # imported here so the overlong penalty needs no checker

    return [None if a in (None, "") else math_score(c, str(a)) >= 1.0 for c, a in zip(completions, answer)]


def length_penalty(prompts: list[str], completions: list[str], answer: list | None = None,
                   completion_ids: list | None = None, **_columns) -> list[float | None]:
    lengths = _lengths(completions, completion_ids)
    correct = _correct(completions, answer)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p].append(i)
    out: list[float | None] = [None] * len(completions)
    for members in groups.values():
        lo = min(lengths[i] for i in members)
        hi = max(lengths[i] for i in members)
        for i in members:
            if correct[i] is None:
                continue
            lam = 0.0 if hi == lo else 0.5 - (lengths[i] - lo) / (hi - lo)
            out[i] = lam if correct[i] else min(0.0, lam)
    return out


def cosine_length_reward(prompts: list[str], completions: list[str], answer: list | None = None,
                         completion_ids: list | None = None, finish_reasons: list | None = None,
                         max_new_tokens: int | None = None, correct_short: float = 2.0, correct_long: float = 1.0,
                         wrong_short: float = -10.0, wrong_long: float = 0.0, truncated: float = -10.0,
                         max_length: int | None = None, **_columns) -> list[float | None]:
    lengths = _lengths(completions, completion_ids)
    correct = _correct(completions, answer)
    horizon = max_length or max_new_tokens or max(lengths + [1])
    out: list[float | None] = []
    for i, n in enumerate(lengths):
        if correct[i] is None:
            out.append(None)
            continue
        if finish_reasons is not None and finish_reasons[i] == "length" and not correct[i]:
            out.append(truncated)
            continue
        short, long = (correct_short, correct_long) if correct[i] else (wrong_short, wrong_long)
        t = min(n, horizon) / horizon
        out.append(long + 0.5 * (short - long) * (1.0 + math.cos(math.pi * t)))
    return out


def overlong_penalty(prompts: list[str], completions: list[str], completion_ids: list | None = None,
                     max_new_tokens: int | None = None, buffer_tokens: int | None = None,
                     max_length: int | None = None, **_columns) -> list[float]:
    lengths = _lengths(completions, completion_ids)
    limit = max_length or max_new_tokens
    if not limit:
        return [0.0] * len(completions)
    buffer = buffer_tokens if buffer_tokens is not None else max(1, limit // 5)
    start = limit - buffer
    out = []
    for n in lengths:
        if n <= start:
            out.append(0.0)
        elif n <= limit:
            out.append((start - n) / buffer)
        else:
            out.append(-1.0)
    return out


# Each pays for a length, not for being right: the reward-hacking alarms watch their share of the advantage.
length_penalty.shaping = cosine_length_reward.shaping = overlong_penalty.shaping = True
