"""Turn several reward functions into one weighted score per completion, without ever crashing a run.

A function is called on the whole batch first (fast path). If it raises, or returns something that is not
one finite float-or-None per completion within +-max_abs, it is called again one completion at a time, and
each completion whose call still fails scores 0 and is counted as an error in the metrics. The batch call and
its retries share one time limit (rewards/guard.py); completions left when it runs out count as errors too.
The first failure of each reward is printed with its exception text; the trainer stops a run whose reward
keeps failing (rewards[].max_error_fraction, max_error_steps).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from rewards.guard import Deadline, RewardTimeout, call_with_limit
from rewards.registry import check_reward_signature, load_reward


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
    timeout_s: float | None = None  # per batch, retries included; None: called inline with no limit
    max_abs: float = math.inf  # a value beyond +-this is rejected like a raise
    failures: "FailureLog" = field(default_factory=lambda: FailureLog())


@dataclass
class FailureLog:
    """What went wrong with one reward so far: the first failure is printed, every one is counted."""

    count: int = 0
    last: str = ""  # the latest failure's text, for the message that stops a run

    def record(self, label: str, text: str, what: str) -> None:
        self.last = text
        if self.count == 0:
            rank = os.environ.get("RANK")
            tag = f"rank {rank}: " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
            print(f"{tag}warning: reward '{label}' failed on {what}: {text}\n  (scored 0; later failures are only "
                  f"counted, in reward/{label}/errors)", file=sys.stderr, flush=True)
        self.count += 1


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
        check_reward_signature(fn, spec.name, spec.args)  # unknown args, or no **kwargs: an error, not zeros
        # Two uses of one reward (say with different args) get distinct metric names.
        count = names_seen.get(spec.name, 0)
        names_seen[spec.name] = count + 1
        label = spec.name if count == 0 else f"{spec.name}#{count + 1}"
        reward = named(label, fn, spec.weight, spec.args)
        reward.timeout_s = getattr(spec, "timeout_s", None) or None  # 0: no limit
        reward.max_abs = getattr(spec, "max_abs", math.inf)
        built.append(reward)
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
        values, failed = _call_safely(reward, prompts, completions, columns, n)
        per_reward[reward.name] = values
        errors[reward.name] = failed
        for i, v in enumerate(values):
            if v is not None:
                total[i] += reward.weight * v
    return Scores(total, per_reward, errors)


def _call_safely(reward: NamedReward, prompts, completions, columns, n) -> tuple[list[float | None], int]:
    deadline = Deadline(reward.timeout_s)
    try:
        values = _checked(call_with_limit(reward.fn, (prompts, completions), columns, deadline.left()), n,
                          reward.max_abs)
        return values, 0
    except RewardTimeout:  # no retries: one at a time would only take longer
        reward.failures.record(reward.name, f"no result after {reward.timeout_s:g} s (rewards[].timeout_s); the call "
                               f"was abandoned", f"a batch of {n}")
        return [0.0] * n, n
    except Exception as exc:  # noqa: BLE001 - a reward's bug must not stop training; isolate it per completion below
        batch_error = _describe(exc)
    values: list[float | None] = []
    failed = 0
    for i in range(n):
        if deadline.passed():  # the batch's time is spent: the rest are not called
            reward.failures.record(reward.name, f"time limit of {reward.timeout_s:g} s spent on retries; first: "
                                   f"{batch_error}", f"a batch of {n}")
            values.extend([0.0] * (n - i))
            return values, failed + n - i
        one_columns = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}
        try:
            values.extend(_checked(call_with_limit(reward.fn, ([prompts[i]], [completions[i]]), one_columns,
                                                   deadline.left()), 1, reward.max_abs))
        except Exception as exc:  # noqa: BLE001 - score this completion 0 and count it
            values.append(0.0)
            failed += 1
            reward.failures.record(reward.name, _describe(exc), f"completion {i + 1} of {n}")
    return values, failed


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def _checked(values: Any, n: int, max_abs: float = math.inf) -> list[float | None]:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"returned {type(values).__name__}, expected a list of {n} floats (or None); convert a "
                         f"numpy array or tensor with .tolist()")
    if len(values) != n:
        raise ValueError(f"returned {len(values)} values for {n} completions: one per completion is required")
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"returned the non-finite value {v!r}")
        if abs(f) > max_abs:
            raise ValueError(f"returned {f:g}, beyond rewards[].max_abs = {max_abs:g} (it would swamp the advantages)")
        out.append(f)
    return out
