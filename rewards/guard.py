"""Calling a reward without trusting it: a time limit, and no way for it to end the trainer.

grpo's own rewards are called here, in a thread: they must see the same interpreter state they always have
(module globals, their caches, the math reward's sympy worker), so scores stay bit-identical to an inline call.
A daemon thread can be abandoned at the deadline: the trainer stops waiting, counts the batch as failed and goes
on; the stuck call is left to finish (or not) on its own and never blocks exit. SystemExit and KeyboardInterrupt
raised in the thread end only that thread, and are reported like any other raise. What a thread cannot stop is
os._exit or a crash of the interpreter: that is why a user's plugin reward runs in a worker process of its own
(rewards/plugin_pool.py; the call here then waits on that worker), the code reward runs programs in its sandbox,
and math runs sympy in its own worker.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class RewardTimeout(Exception):
    """The call did not return within its time limit (it was abandoned, still running)."""


class RewardExit(Exception):
    """The reward raised SystemExit or KeyboardInterrupt: reported as a failure, never obeyed."""


def call_with_limit(fn: Callable[..., Any], args: tuple, kwargs: dict, timeout_s: float | None) -> Any:
    """fn(*args, **kwargs), raising RewardTimeout after `timeout_s` seconds (None: inline, no limit).
    Exceptions of the call are raised here; SystemExit / KeyboardInterrupt come back as RewardExit."""
    if timeout_s is None:
        try:
            return fn(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise RewardExit(_exit_text(exc)) from exc
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - carried to the caller's thread, which decides
            box["error"] = exc

    thread = threading.Thread(target=target, name="grpo-reward", daemon=True)
    thread.start()
    thread.join(max(timeout_s, 1e-3))
    if thread.is_alive():
        raise RewardTimeout(f"no result after {timeout_s:g} s (the call was abandoned)")
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise RewardExit(_exit_text(exc)) from exc
        raise exc
    return box["value"]


def _exit_text(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}); a reward must return scores, not end the process"
    return "raised KeyboardInterrupt"


class Deadline:
    """The time left of one reward's budget for one batch, shared by the batch call and its retries."""

    def __init__(self, seconds: float | None):
        self.limited = bool(seconds and seconds > 0)
        self.end = time.monotonic() + seconds if self.limited else float("inf")

    def left(self) -> float | None:
        return max(self.end - time.monotonic(), 0.0) if self.limited else None

    def passed(self) -> bool:
        return self.limited and time.monotonic() >= self.end
