"""Turn several reward functions into one weighted score per completion, without ever crashing a run.

A function is called on the whole batch first (fast path). If it raises, or returns something that is not
one finite float-or-None per completion within +-max_abs, it is called again one completion at a time, and
each completion whose call still fails scores 0 and is counted as an error in the metrics. The batch call and
its retries share one time limit (rewards/guard.py); completions left when it runs out count as errors too.
The first failure of each reward is printed with its exception text; the trainer stops a run whose reward
keeps failing (rewards[].max_error_fraction, max_error_steps).

A user's plugin (any reward outside grpo's own `rewards` package) runs in a worker process of its own
(rewards/plugin_pool.py, rewards/plugin_worker.py): an os._exit, a crash, a leak past its memory cap or a hang
past its time limit costs that worker, which is replaced; the batch scores 0 and counts as errors, with a message
that says what happened. GRPO_REWARDS_IN_PROCESS=1 keeps every reward in the trainer's process (for debugging).
`close_rewards` ends the workers at the end of a run (atexit does too, and they die with the trainer).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from rewards.guard import Deadline, RewardTimeout, call_with_limit
from rewards.errors import UserError
from rewards.output import RewardOutput, checked, concatenated
from rewards.registry import check_reward_signature, is_builtin, load_reward, reward_target


RESERVED = {"prompts", "completions"}  # positional arguments of the reward contract, never column names
IN_PROCESS_ENV = "GRPO_REWARDS_IN_PROCESS"  # "1": every reward runs in the trainer's process (debugging)


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
    # What it pays for, for the reward-hacking alarms (grpo/hacking/): shaping = form rather than being right
    # (format, length); learned = a model's opinion (a reward model, a judge).
    shaping: bool = False
    learned: bool = False
    timeout_s: float | None = None  # per batch, retries included; None: called inline with no limit
    max_abs: float = math.inf  # a value beyond +-this is rejected like a raise
    failures: "FailureLog" = field(default_factory=lambda: FailureLog())
    # Completions the reward scored 0 because its own code raised on them (declared by the function as
    # fn.crash_counts() -> {exception type: count}, e.g. the code reward's): a count that grows is a bug in the
    # reward that the model's output reaches, logged as reward/<name>/crashes.
    crash_counts: Callable[[], dict[str, int]] | None = None


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
    errors: dict[str, int]  # name -> completions whose call raised or returned junk, or that it says failed
    # What a reward reported beside its values (rewards/output.py): name -> its sub-scores ([N] each), its counts.
    parts: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    counts: dict[str, dict[str, float]] = field(default_factory=dict)


def build_rewards(specs: list[Any], device: Any = None, dtype: Any = None) -> list[NamedReward]:
    """specs: RewardConfig-like objects with name, weight, args (and timeout_s, max_abs; memory_mb, if a spec has
    one, caps a plugin's worker, else $GRPO_REWARD_MEMORY_MB, else 2048 MB).

    grpo's own rewards are imported here; a user's plugin gets a worker process, started now (all of them at
    once), which imports it and reports what it declares. Either way a bad name, an import error or a signature
    that cannot work raises UserError before any model loads. Call close_rewards() when done.

    A reward whose target is a factory (`fn.reward_factory` true, e.g. reward_model) is a model, not a function:
    it is built here, once, as fn(args, device, dtype) with the trainer's device and compute dtype (loading is not
    timed), and the reward it returns runs in this process (never in a torch-free plugin worker)."""
    built: list[NamedReward] = []
    names_seen: dict[str, int] = {}
    in_process = _in_process()
    try:
        pending = []
        for spec in specs:
            # Two uses of one reward (say with different args) get distinct metric names.
            count = names_seen.get(spec.name, 0)
            names_seen[spec.name] = count + 1
            label = spec.name if count == 0 else f"{spec.name}#{count + 1}"
            target, what = reward_target(spec.name)
            if in_process or is_builtin(target):
                fn = load_reward(spec.name)
                if is_factory(fn):
                    reward = NamedReward(label, build_factory(fn, spec.name, spec.args, device, dtype), spec.weight,
                                         **declared_roles(fn))
                else:
                    check_reward_signature(fn, spec.name, spec.args)  # unknown args, no **kwargs: an error, not zeros
                    reward = named(label, fn, spec.weight, spec.args)
            else:
                from rewards import plugin_pool

                memory_mb = plugin_pool.memory_cap_mb(getattr(spec, "memory_mb", None))
                reward = NamedReward(label, plugin_pool.start(spec.name, target, what, spec.args, memory_mb),
                                     spec.weight)
                pending.append(reward)
            reward.timeout_s = getattr(spec, "timeout_s", None) or None  # 0: no limit
            reward.max_abs = getattr(spec, "max_abs", math.inf)
            built.append(reward)
        for reward in pending:  # the workers import their plugins in parallel; now read what each declares
            from rewards.plugin_pool import ExtractAnswer

            problems = reward.fn.probe()
            if problems:
                raise UserError("; ".join(problems))
            reward.measures_correctness = reward.fn.measures_correctness
            reward.shaping, reward.learned = reward.fn.shaping, reward.fn.learned
            if reward.fn.has_extract_answer:  # called in the worker too: the plugin is never imported here
                reward.extract_answer = ExtractAnswer(reward.fn, reward.timeout_s or 30.0)
    except BaseException:
        close_rewards(built)
        raise
    return built


def is_factory(fn: Any) -> bool:
    """A setup-time factory make(settings, device, dtype) -> reward, rather than a reward function."""
    return bool(getattr(fn, "reward_factory", False))


def build_factory(fn: Any, name: str, args: dict | None, device: Any, dtype: Any) -> Callable[..., list]:
    problems = factory_problems(fn, args)
    if problems:
        raise UserError("; ".join(problems))
    if device is None:
        raise UserError(f"reward '{name}' loads a model and is only available where a trainer builds it with its "
                        f"device (grpo train); use another reward here.")
    return fn(dict(args or {}), device, dtype)


def factory_problems(fn: Any, args: dict | None) -> list[str]:
    """A factory checks its own settings (it takes no per-call keyword options, so the signature rules do not
    apply)."""
    check = getattr(fn, "settings_problems", None)
    return list(check(args)) if check is not None else []


def reward_problems(name: str, args: dict | None = None) -> list[str]:
    """What is wrong with a recipe's reward that would make every call fail (recipe args it does not take, no
    **kwargs), for `grpo validate`, without importing a user's plugin in this process: a throwaway worker imports
    it. Raises UserError when the name is unknown or the plugin cannot be imported."""
    from rewards import plugin_pool
    from rewards.registry import reward_signature_problems

    target, what = reward_target(name)
    if _in_process() or is_builtin(target):
        fn = load_reward(name)
        return factory_problems(fn, args) if is_factory(fn) else reward_signature_problems(fn, name, args)
    worker = plugin_pool.start(name, target, what, args, plugin_pool.memory_cap_mb())
    try:
        return worker.probe()
    finally:
        worker.close()


def broken_rewards(sources: dict[str, Any]) -> dict[str, str]:
    """name -> why it cannot be used (first line), for the installed rewards `sources` (registry.RewardSource
    by name) that fail to import or whose signature no call could satisfy; fine ones are absent. For `grpo
    rewards`. grpo's own are imported here; each user plugin in a throwaway worker, all started at once, so a
    plugin that ends or crashes its process on import costs that worker only."""
    from rewards import plugin_pool
    from rewards.registry import _import_target, reward_signature_problems

    broken: dict[str, str] = {}
    workers = {}
    whats = {name: f"reward '{name}' ({source.origin})" for name, source in sources.items()}
    try:
        for name, source in sources.items():
            what = whats[name]
            if is_builtin(source.target):
                try:
                    fn = _import_target(source.target, what)
                    problems = [] if is_factory(fn) else reward_signature_problems(fn, name)
                except Exception as exc:  # noqa: BLE001 - a broken built-in is listed as broken, like a plugin
                    problems = [str(exc) if isinstance(exc, UserError) else f"{what}: {_describe(exc)}"]
                if problems:
                    broken[name] = problems[0]
            else:
                workers[name] = plugin_pool.start(name, source.target, what, {}, plugin_pool.memory_cap_mb())
        for name, worker in workers.items():
            try:
                problems = worker.probe()
            except UserError as exc:
                problems = [str(exc)]
            if problems:
                broken[name] = problems[0]
    finally:
        for worker in workers.values():
            worker.close()
    first_lines = {name: (text.strip().splitlines() or [""])[0] for name, text in broken.items()}
    return {name: text.removeprefix(whats[name] + ": ") for name, text in first_lines.items()}  # said beside it


def _in_process() -> bool:
    return os.environ.get(IN_PROCESS_ENV, "").strip() not in ("", "0")


def close_rewards(rewards: list[NamedReward]) -> None:
    """End the worker processes of the plugin rewards among `rewards` (idempotent; in-process rewards are left
    as they are). The trainer calls it at the end of a run; atexit does it anyway."""
    from rewards.plugin_pool import PluginReward

    for reward in rewards:
        if isinstance(reward.fn, PluginReward):
            reward.fn.close()


def named(label: str, fn: Callable[..., list], weight: float = 1.0, args: dict | None = None) -> NamedReward:
    """A reward ready to call, with what the function declares about itself read before any args bind it."""
    return NamedReward(label, functools.partial(fn, **args) if args else fn, weight,
                       measures_correctness=bool(getattr(fn, "measures_correctness", False)),
                       extract_answer=getattr(fn, "extract_answer", None),
                       crash_counts=getattr(fn, "crash_counts", None), **declared_roles(fn))


def declared_roles(fn: Any) -> dict[str, bool]:
    """What a reward function (or factory) declares it pays for: fn.shaping, fn.learned (rewards/__init__.py)."""
    return {"shaping": bool(getattr(fn, "shaping", False)), "learned": bool(getattr(fn, "learned", False))}


def crash_totals(rewards: list[NamedReward]) -> dict[str, int]:
    """Each crash-counting reward's crashes so far in this process (the trainer logs the step's increase)."""
    return {r.name: sum(r.crash_counts().values()) for r in rewards if r.crash_counts is not None}


def reward_columns(rows: list[dict], answers: list, completion_ids: list[list[int]], finish_reasons: list[str],
                   max_new_tokens: int, tools: list | None = None) -> dict[str, Any]:
    """The keyword arguments of the reward contract for N completions: every dataset column under its own name,
    `answer` (the gold answer, after any extraction the caller did), and what the sampler knows. tools: each
    completion's ToolTrace (grpo.sampling.base) when episodes used a tool; then `tool_calls` (each call's text,
    output, error, seconds) and `final_text` (what the model wrote after the last tool output) are added."""
    columns: dict[str, Any] = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        if key not in RESERVED:
            columns[key] = [row.get(key) for row in rows]
    columns["answer"] = list(answers)
    columns["completion_ids"] = completion_ids
    columns["finish_reasons"] = finish_reasons
    columns["max_new_tokens"] = max_new_tokens
    if tools is not None and any(t is not None for t in tools):
        columns["tool_calls"] = [list(t.calls) if t is not None else [] for t in tools]
        columns["final_text"] = [t.final_text if t is not None else None for t in tools]
    return columns


def score(rewards: list[NamedReward], prompts: list[str], completions: list[str], columns: dict[str, list]) -> Scores:
    n = len(completions)
    scores = Scores([0.0] * n, {}, {})
    for reward in rewards:
        output, failed = _call_safely(reward, prompts, completions, columns, n)
        if output.failure:
            reward.failures.record(reward.name, output.failure, f"{output.failed} of a batch of {n}")
        scores.per_reward[reward.name] = output.values
        scores.errors[reward.name] = failed + output.failed
        if output.parts:
            scores.parts[reward.name] = output.parts
        if output.counts:
            scores.counts[reward.name] = output.counts
        for i, v in enumerate(output.values):
            if v is not None:
                scores.total[i] += reward.weight * v
    return scores


def _invoke(reward: NamedReward, args: tuple, kwargs: dict, deadline: Deadline) -> Any:
    """One call of the reward within the deadline: in its worker for a plugin, in a thread (guard) otherwise."""
    from rewards.plugin_pool import PluginReward

    if isinstance(reward.fn, PluginReward):
        return reward.fn.call(args, kwargs, deadline, reward.max_abs, reward.timeout_s)
    return call_with_limit(reward.fn, args, kwargs, deadline.left())


def _call_safely(reward: NamedReward, prompts, completions, columns, n) -> tuple[RewardOutput, int]:
    """The reward's checked output for the batch, and how many completions scored 0 because the call itself
    failed (raised, returned junk, ran out of time)."""
    from rewards.plugin_pool import WorkerLost

    deadline = Deadline(reward.timeout_s)
    try:
        return checked(_invoke(reward, (prompts, completions), columns, deadline), n, reward.max_abs), 0
    except RewardTimeout as exc:  # no retries: one at a time would only take longer
        how = str(exc) if "worker" in str(exc) else "the call was abandoned"
        reward.failures.record(reward.name, f"no result after {reward.timeout_s:g} s (rewards[].timeout_s); {how}",
                               f"a batch of {n}")
        return RewardOutput([0.0] * n), n
    except WorkerLost as exc:  # no retries: each could cost a worker; the next batch gets a fresh one
        reward.failures.record(reward.name, f"{exc}; a fresh worker takes the next batch", f"a batch of {n}")
        return RewardOutput([0.0] * n), n
    except Exception as exc:  # noqa: BLE001 - a reward's bug must not stop training; isolate it per completion below
        batch_error = _describe(exc)
    outputs: list[RewardOutput] = []
    failed = 0
    for i in range(n):
        if deadline.passed():  # the batch's time is spent: the rest are not called
            reward.failures.record(reward.name, f"time limit of {reward.timeout_s:g} s spent on retries; first: "
                                   f"{batch_error}", f"a batch of {n}")
            outputs.append(RewardOutput([0.0] * (n - i)))
            return concatenated(outputs), failed + n - i
        one_columns = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}
        try:
            outputs.append(checked(_invoke(reward, ([prompts[i]], [completions[i]]), one_columns, deadline), 1,
                                   reward.max_abs))
        except Exception as exc:  # noqa: BLE001 - score this completion 0 and count it
            outputs.append(RewardOutput([0.0]))
            failed += 1
            reward.failures.record(reward.name, _retry_text(batch_error, _describe(exc), i), f"a batch of {n}")
    return concatenated(outputs), failed


def _retry_text(batch_error: str, retry_error: str, i: int) -> str:
    """The batch call's failure first: it is the call the reward's author wrote, with the batch's own counts
    (a reward returning 3 values for 4 completions returns 0 for 1 when retried, which alone would mislead)."""
    if retry_error == batch_error:
        return f"{batch_error} (again on completion {i + 1} alone)"
    head, _, advice = retry_error.partition("; ")
    if advice and batch_error.endswith(advice):  # the same problem: its fix is said once
        return f"{batch_error} (on completion {i + 1} alone: {head.partition(': ')[2] or head})"
    return f"{batch_error}; on completion {i + 1} alone: {retry_error}"


def _describe(exc: BaseException) -> str:
    from rewards.plugin_pool import PluginError, WorkerLost

    if isinstance(exc, (PluginError, WorkerLost)):  # the worker's text, already described
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
