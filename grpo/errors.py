"""Errors a user can fix. The CLI prints them as one clear message and exits non-zero."""

from __future__ import annotations

from rewards.errors import UserError  # one class for both packages; rewards must not import grpo

__all__ = ["UserError", "ConfigError"]


class ConfigError(UserError):
    """Every problem found in a recipe, reported together."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")
