"""A step's reward-hacking signals, from its episodes: pure functions over plain numbers and texts, no torch.

Each is one number per step (None when the step cannot say: no variance to correlate, too few groups), logged as
hacking/<name> in metrics.jsonl; the rules (grpo/hacking/rules.py) read them back as series. Every signal compares
episodes within their group, as the advantage does: what a group's members differ in is what training rewards.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

NGRAM = 4  # tokens per n-gram in the repetition signal: short enough to catch a phrase said again and again
MAX_TOKENS = 1024  # the repetition signal reads an episode's last 1024 model tokens (where loops show; bounded cost)
MAX_ANSWER_CHARS = 1000  # the answer is read from the last 1000 characters of a completion (where it is)
CONSENSUS = 0.75  # a group "agrees" when at least this share of its answered episodes give one answer
MIN_GROUPS = 4  # the answer-share signal needs this many groups in the step (two groups agree by chance)


@dataclass(frozen=True)
class Roles:
    """What the run's rewards are, by name: shaping (format, length: paid for form, not for being right), learned
    (a reward model, a judge: a model's opinion) and the correctness reward (1.0 means right) if there is one."""

    weights: dict[str, float]
    shaping: tuple[str, ...] = ()
    learned: tuple[str, ...] = ()
    correctness: str | None = None


@dataclass(frozen=True)
class Sample:
    """What the signals read of one episode."""

    group: int
    reward: float
    per_reward: dict[str, float | None]
    model_tokens: list[int]  # the tokens the model wrote (tool outputs left out)
    final_text: str  # where its answer is read: the completion, or what it wrote after its last tool output


def step_signals(samples: list[Sample], roles: Roles, answer_of: Callable[[str], str | None]) -> dict[str, float]:
    """hacking/* for one step. `answer_of` reads a completion's final answer (None: it gives none)."""
    groups = _grouped(samples)
    out: dict[str, float | None] = {
        "hacking/length_reward_corr": within_group_corr(
            [[(s.reward, len(s.model_tokens)) for s in g] for g in groups]),
        "hacking/repeated_ngrams": _mean([repeated_ngram_fraction(s.model_tokens) for s in samples]),
    }
    if roles.shaping:
        out["hacking/shaping_share"] = shaping_share(
            [[_weighted(s.per_reward, roles) for s in g] for g in groups], set(roles.shaping))
    answers = [[_answer(answer_of, s.final_text) for s in g] for g in groups]
    out["hacking/distinct_answers"] = distinct_answer_fraction(answers)
    out["hacking/answer_share"] = answer_share(answers)
    if roles.correctness is not None:
        right = [[(s.per_reward.get(roles.correctness) or 0.0) >= 1.0 for s in g] for g in groups]
        out["hacking/wrong_consensus"] = wrong_consensus(answers, right)
        for name in roles.learned:
            out[f"hacking/{name}/agreement"] = within_group_corr(
                [[(s.per_reward[name], s.per_reward[roles.correctness]) for s in g
                  if s.per_reward.get(name) is not None and s.per_reward.get(roles.correctness) is not None]
                 for g in groups])
    return {k: v for k, v in out.items() if v is not None}


def within_group_corr(groups: list[list[tuple[float, float]]]) -> float | None:
    """Pearson's r of x and y after taking each group's own means out of both (pooled over groups): +1 when, within
    every group, the member with more x has more y. None when nothing varies within any group."""
    sxy = sxx = syy = 0.0
    for g in groups:
        if len(g) < 2:
            continue
        mx = sum(x for x, _ in g) / len(g)
        my = sum(y for _, y in g) / len(g)
        for x, y in g:
            sxy += (x - mx) * (y - my)
            sxx += (x - mx) ** 2
            syy += (y - my) ** 2
    if sxx <= 1e-12 or syy <= 1e-12:
        return None
    return sxy / math.sqrt(sxx * syy)


def shaping_share(groups: list[list[dict[str, float]]], shaping: set[str]) -> float | None:
    """The share of the within-group variance of the total reward that the shaping rewards carry: each episode's
    total, minus its group's mean, is a sum of weighted parts (each minus its own group mean); a part's share is
    its covariance with the total over the total's variance (the shares of all parts sum to 1). groups: per
    episode, reward name -> weight * value (None as 0)."""
    covariance = variance = 0.0
    for g in groups:
        if len(g) < 2:
            continue
        names = set().union(*g)
        means = {n: sum(e.get(n, 0.0) for e in g) / len(g) for n in names}
        for e in g:
            centred = {n: e.get(n, 0.0) - means[n] for n in names}
            total = sum(centred.values())
            covariance += total * sum(v for n, v in centred.items() if n in shaping)
            variance += total * total
    if variance <= 1e-12:
        return None
    return covariance / variance


def repeated_ngram_fraction(tokens: list[int], n: int = NGRAM) -> float | None:
    """The share of a text's n-grams that already occurred earlier in it (0: none repeated; near 1: one phrase
    over and over). None for a text shorter than two n-grams."""
    tokens = tokens[-MAX_TOKENS:]
    total = len(tokens) - n + 1
    if total < 2:
        return None
    distinct = len(set(zip(*(tokens[i:] for i in range(n)))))  # every n-gram after its first sighting repeats
    return (total - distinct) / total


def distinct_answer_fraction(groups: list[list[str | None]]) -> float | None:
    """Mean over groups of (distinct final answers / answered episodes): 1 when every member answers differently,
    1/G when all agree. None when no group has two answered episodes."""
    fractions = []
    for g in groups:
        given = [a for a in g if a is not None]
        if len(given) >= 2:
            fractions.append(len(set(given)) / len(given))
    return _mean(fractions)


def answer_share(groups: list[list[str | None]]) -> float | None:
    """The share of the step's groups whose most common answer is the step's most common one: different questions
    answered alike (the model found one answer that pays, whatever was asked). None under MIN_GROUPS answered
    groups."""
    tops = [Counter(given).most_common(1)[0][0] for g in groups if (given := [a for a in g if a is not None])]
    if len(tops) < MIN_GROUPS:
        return None
    return Counter(tops).most_common(1)[0][1] / len(tops)


def wrong_consensus(groups: list[list[str | None]], right: list[list[bool]]) -> float | None:
    """The share of groups that agree (CONSENSUS of their answered members give one answer) on an answer the
    correctness reward scores wrong: a group sure of a wrong answer has stopped exploring. None without groups."""
    if not groups:
        return None
    agreeing_wrong = 0
    for answers, marks in zip(groups, right):
        given = [(a, ok) for a, ok in zip(answers, marks) if a is not None]
        if len(given) < 2:
            continue
        top, count = Counter(a for a, _ in given).most_common(1)[0]
        if count >= CONSENSUS * len(given) and not any(ok for a, ok in given if a == top):
            agreeing_wrong += 1
    return agreeing_wrong / len(groups)


def _grouped(samples: list[Sample]) -> list[list[Sample]]:
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    return list(groups.values())


def _weighted(per_reward: dict[str, float | None], roles: Roles) -> dict[str, float]:
    return {name: weight * (per_reward.get(name) or 0.0) for name, weight in roles.weights.items()}


def _answer(answer_of: Callable[[str], str | None], text: str) -> str | None:
    try:  # a reader that fails on a model's text leaves that episode unanswered; it never stops the run
        answer = answer_of(text[-MAX_ANSWER_CHARS:])
    except Exception:  # noqa: BLE001
        return None
    return answer.strip() if isinstance(answer, str) and answer.strip() else None


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
