"""Turn several reward functions into one weighted score per completion, without ever crashing a run.

A function is called on the whole batch first (fast path). If it raises, or returns something that is not
one finite float-or-None per completion, it is called again one completion at a time, and each completion
whose call still fails scores 0 and is counted as an error in the metrics.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

from rewards.registry import load_reward


RESERVED = {"prompts", "completions"}  # positional arguments of the reward contract, never column names


@dataclass
class NamedReward:
    name: str
    fn: Callable[..., list]
    weight: float
    # Declared by the function itself (attributes, so plugins can say the same): a correctness reward's 1.0
    # means "right" (the trainer logs `accuracy` from it; eval grades with it), and its answer extractor gives
    # the answer that majority votes count.
    measures_correctness: bool = False
    extract_answer: Callable[[str], str | None] | None = None


@dataclass
class Scores:
    total: list[float]  # [N] weighted sum over rewards (None counts as 0)
    per_reward: dict[str, list[float | None]]  # name -> [N] raw values (None: not applicable)
    errors: dict[str, int]  # name -> completions whose call raised or returned junk


def build_rewards(specs: list[Any]) -> list[NamedReward]:
    """specs: RewardConfig-like objects with name, weight, args."""
    built = []
    names_seen: dict[str, int] = {}
    for spec in specs:
        fn = load_reward(spec.name)
        # Two uses of one reward (say with different args) get distinct metric names.
        count = names_seen.get(spec.name, 0)
        names_seen[spec.name] = count + 1
        label = spec.name if count == 0 else f"{spec.name}#{count + 1}"
        built.append(named(label, fn, spec.weight, spec.args))
    return built


def named(label: str, fn: Callable[..., list], weight: float = 1.0, args: dict | None = None) -> NamedReward:
    """A reward ready to call, with what the function declares about itself read before any args bind it."""
    return NamedReward(label, functools.partial(fn, **args) if args else fn, weight,
                       measures_correctness=bool(getattr(fn, "measures_correctness", False)),
                       extract_answer=getattr(fn, "extract_answer", None))


def reward_columns(rows: list[dict], answers: list, completion_ids: list[list[int]], finish_reasons: list[str],
                   max_new_tokens: int) -> dict[str, Any]:
    """The keyword arguments of the reward contract for N completions: every dataset column under its own name,
    `answer` (the gold answer, after any extraction the caller did), and what the sampler knows."""
    columns: dict[str, Any] = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        if key not in RESERVED:
            columns[key] = [row.get(key) for row in rows]
    columns["answer"] = list(answers)
    columns["completion_ids"] = completion_ids
    columns["finish_reasons"] = finish_reasons
    columns["max_new_tokens"] = max_new_tokens
    return columns


def score(rewards: list[NamedReward], prompts: list[str], completions: list[str], columns: dict[str, list]) -> Scores:
    n = len(completions)
    total = [0.0] * n
    per_reward: dict[str, list[float | None]] = {}
    errors: dict[str, int] = {}
    for reward in rewards:
        values, failed = _call_safely(reward.fn, prompts, completions, columns, n)
        per_reward[reward.name] = values
        errors[reward.name] = failed
        for i, v in enumerate(values):
            if v is not None:
                total[i] += reward.weight * v
    return Scores(total, per_reward, errors)


def _call_safely(fn, prompts, completions, columns, n) -> tuple[list[float | None], int]:
    try:
        values = _checked(fn(prompts, completions, **columns), n)
        return values, 0
    except Exception:  # noqa: BLE001 - a reward's bug must not stop training; isolate it per completion below
        pass
    values: list[float | None] = []
    failed = 0
    for i in range(n):
        one_columns = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}
        try:
            values.extend(_checked(fn([prompts[i]], [completions[i]], **one_columns), 1))
        except Exception:  # noqa: BLE001 - score this completion 0 and count it
            values.append(0.0)
            failed += 1
    return values, failed


def _checked(values: Any, n: int) -> list[float | None]:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise ValueError(f"reward returned {type(values).__name__} of length {len(values) if hasattr(values, '__len__') else '?'}, expected {n} values")
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"reward returned non-finite value {v!r}")
        out.append(f)
    return out
