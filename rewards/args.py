"""Reading a factory reward's recipe args into its settings dataclass: unknown keys named with a "did you mean",
every problem raised together."""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import Any, Callable, TypeVar

from rewards.errors import UserError

Settings = TypeVar("Settings")


def unknown_keys(settings: dict[str, Any], cls: type, where: str) -> list[str]:
    """One problem per key of `settings` that is not a field of the dataclass `cls`, named as where.KEY."""
    known = [f.name for f in fields(cls)]
    problems = []
    for key in settings:
        if key not in known:
            guess = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            problems.append(f"{where}.{key}: unknown key{hint}; its keys are {', '.join(known)}")
    return problems


def read_checked(cls: Callable[..., Settings], settings: dict[str, Any] | None,
                 problems: Callable[[dict[str, Any] | None], list[str]]) -> Settings:
    """cls(**settings) once `problems(settings)` finds nothing; else one UserError with every problem."""
    found = problems(settings)
    if found:
        raise UserError("; ".join(found))
    return cls(**(settings or {}))
