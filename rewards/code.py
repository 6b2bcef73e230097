"""Code-execution reward: run the completion's program against the row's tests in a sandbox.

    score(completion, tests) -> float          one completion, pass fraction (or 1/0 with mode="all")
    code_reward(prompts, completions, tests)   the registered reward (`code`), scoring a batch in parallel

The tests format is in the README (asserts, stdin/stdout cases, call-based cases). Programs run in
rewards.sandbox; grading happens here, on plain data the sandbox sent back.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from collections import Counter
from typing import Any

from rewards.errors import UserError
from rewards.sandbox import Executor, Limits, Pool
from rewards.sandbox.judge import grade, read_answers
from rewards.sandbox.plan import load_tests, plan_tests

_TAG = re.compile(r"[ \t]*([A-Za-z0-9_+-]*)")  # applied to one header line only
PY_TAGS = {"python", "py", "python3", "py3"}
EXTRACT_RULES = ("last_python_block", "first_python_block", "last_block", "whole")
MAX_UNFENCED = 32_000  # characters; a whole-completion program longer than this must be fenced


def extract_program(completion: str, rule: str = "last_python_block") -> str | None:
    """The program in a completion, or None. rule: one of EXTRACT_RULES, or a regex whose group 1 is the code.

    A python block wins over an untagged one for the *_python_block rules; an unterminated final ```python block
    (the model ran out of tokens) is taken as is.
    """
    text = completion or ""
    if rule == "whole":
        return text if text.strip() else None
    if rule not in EXTRACT_RULES:
        try:
            m = re.findall(rule, text, re.DOTALL)
        except re.error as exc:
            raise UserError(f"code reward: extract={rule!r} is neither one of {EXTRACT_RULES} nor a valid regex "
                            f"({exc}); fix the recipe's reward args") from exc
        if not m:
            return None
        last = m[-1]
        return (last[0] if isinstance(last, tuple) else last) or None
    blocks = [(tag.lower(), body) for tag, body in fenced_blocks(text)]
    # An unterminated last block still holds code the model meant to submit.
    tail = text.rfind("```")
    if text.count("```") % 2 == 1 and tail >= 0:
        m = re.match(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*)", text[tail:], re.DOTALL)
        if m:
            blocks.append((m.group(1).lower(), m.group(2)))
    if rule == "last_block":
        chosen = blocks[-1:] or []
    else:
        python = [b for b in blocks if b[0] in PY_TAGS] or [b for b in blocks if b[0] == ""]
        chosen = python[:1] if rule == "first_python_block" else python[-1:]
    if not blocks and "```" not in text and text.strip():
        # No fence at all: a completion that is nothing but a program (prose does not compile) is the program.
        # compile() costs the trainer ~2 s a megabyte: beyond the cap an unfenced completion is not a program.
        if len(text) > MAX_UNFENCED:
            return None
        try:
            compile(text, "completion", "exec")  # parsed only, never run here
            return text
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            return None
    if not chosen or not chosen[0][1].strip():
        return None
    return chosen[0][1]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    r"""(tag, body) of each closed ```tag ... ``` block, like re.findall(r"```[ \t]*(tag)[^\n]*\n(.*?)```", DOTALL)
    but in one pass: the regex retried its header scan at every backtick run, quadratic in degenerate output."""
    blocks = []
    start = text.find("```")
    while start >= 0:
        newline = text.find("\n", start + 3)
        close = text.find("```", newline + 1) if newline >= 0 else -1
        if close < 0:  # no later opening can have a closing either
            break
        blocks.append((_TAG.match(text, start + 3, newline).group(1), text[newline + 1:close]))
        start = text.find("```", close + 3)
    return blocks


def _aggregate(passed: list[bool], mode: str) -> float:
    if not passed:
        return 0.0
    if mode == "all":
        return 1.0 if all(passed) else 0.0
    return sum(passed) / len(passed)


# Crashes inside the code reward on a completion, by exception type: each scored that completion 0 instead of
# raising (a raise would make the scorer re-run the batch one at a time and count towards max_error_fraction,
# both of which model output must never be able to trigger). Read by whoever reports metrics.
CRASHES: Counter = Counter()
_CRASHES_LOCK = threading.Lock()  # the pool's threads count into one Counter


def crash_counts() -> dict[str, int]:
    """A snapshot of CRASHES (exception type -> completions scored 0 for it, since this process started), for the
    trainer's metrics: a count that grows means the code reward has a bug the model's output reaches."""
    with _CRASHES_LOCK:
        return dict(CRASHES)


def _guarded(fn, *args) -> float:
    """fn(*args), or 0.0 with the crash counted: a bug the model's output reaches costs that completion only.
    UserError (a bad tests row or recipe argument) still raises: it is the dataset's fault, not the model's."""
    try:
        return fn(*args)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        with _CRASHES_LOCK:
            CRASHES[type(exc).__name__] += 1
            total = CRASHES.total()
        if total <= 5:
            print(f"code reward: {type(exc).__name__}: {str(exc)[:200]} while scoring a completion; scored 0 "
                  f"(counted in rewards.code.CRASHES)", file=sys.stderr, flush=True)
        return 0.0


def _score_program(program: str, tests: dict, executor: Executor, mode: str) -> float:
    return _aggregate(run_tests(program, tests, executor, mode), mode)


def _check_mode(mode: str) -> None:
    if mode not in ("fraction", "all"):
        raise UserError(f"code reward: mode={mode!r} is not 'fraction' or 'all'; fix the recipe's reward args")


def run_tests(program: str, tests: dict, executor: Executor, mode: str = "fraction") -> list[bool]:
    """One pass/fail per test, in order."""
    plan = plan_tests(tests, executor.limits.test_wall_s)
    results = executor.run(program, plan.runs, stop_on_timeout=(mode == "all"))
    passed = []
    asked = {run["id"]: {op[1] for op in run.get("ops", []) if op[0] not in ("exec", "bind")} for run in plan.runs}
    answers_by_run = {rid: read_answers(r.answers(), asked.get(rid, set())) for rid, r in results.items()}
    for test in plan.tests:
        r = results[test.run]
        passed.append(grade(test, r.completed, r.stdout, answers_by_run[test.run]))
    return passed


@functools.lru_cache(maxsize=8)
def _executor(limits: Limits, allow_unsandboxed: bool) -> Executor:
    return Executor(limits, allow_unsandboxed)


@functools.lru_cache(maxsize=4)
def _pool(max_parallel: int) -> Pool:
    return Pool(max_parallel)


def _limits(timeout_s: float | None, memory_mb: int | None, output_kb: int | None) -> Limits:
    kw = {k: v for k, v in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("output_kb", output_kb))
          if v is not None}
    return Limits(**kw)


def score(completion: str, tests: dict | str, *, mode: str = "fraction", extract: str = "last_python_block",
          timeout_s: float | None = None, memory_mb: int | None = None, output_kb: int | None = None,
          allow_unsandboxed: bool = False, executor: Executor | None = None) -> float:
    """Fraction of tests passed (mode="fraction") or 1.0/0.0 (mode="all"). No program found: 0.0."""
    _check_mode(mode)
    parsed = load_tests(tests)
    if parsed is None:
        raise UserError("code reward: no tests given; fix: pass a tests dict (see the README's tests format)")
    program = extract_program(completion, extract)
    if program is None:
        return 0.0
    executor = executor or _executor(_limits(timeout_s, memory_mb, output_kb), allow_unsandboxed)
    plan_tests(parsed, executor.limits.test_wall_s)  # a bad row raises UserError here, outside the guard
    return _guarded(_score_program, program, parsed, executor, mode)


def code_reward(prompts: list[str], completions: list[str], tests: list[Any] | None = None, *,
                mode: str = "fraction", extract: str = "last_python_block", timeout_s: float | None = None,
                memory_mb: int | None = None, output_kb: int | None = None, max_parallel: int = 8,
                allow_unsandboxed: bool = False, **_columns) -> list[float | None]:
    """The `code` reward. None for rows without tests; 0.0 for completions without a program."""
    _check_mode(mode)
    if tests is None:
        return [None] * len(completions)
    executor = _executor(_limits(timeout_s, memory_mb, output_kb), bool(allow_unsandboxed))
    parsed = [load_tests(t) for t in tests]

    def one(i: int) -> float | None:
        if parsed[i] is None:
            return None
        program = extract_program(completions[i], extract)
        if program is None:
            return 0.0
        return _guarded(_score_program, program, parsed[i], executor, mode)

    return _pool(int(max_parallel)).map(one, range(len(completions)))


code_reward.crash_counts = crash_counts  # scored-0 crashes, for the trainer's reward/code/crashes
code_reward.measures_correctness = True  # 1.0: every test passed (grpo logs `accuracy` from it)
