"""Sandboxed execution of untrusted programs: capability detection, executor, pool, and the far-side harness."""

from rewards.sandbox.capabilities import Capabilities, detect, require
from rewards.sandbox.executor import Executor, RunResult
from rewards.sandbox.limits import Limits
from rewards.sandbox.pool import Pool

__all__ = ["Capabilities", "Executor", "Limits", "Pool", "RunResult", "detect", "require"]
