"""Find an environment by name: the `grpo.environments` entry-point group (built-ins and plugins alike) or
`module:function`, the way rewards are found (rewards/registry.py, whose import and message helpers this reuses)."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from rewards.errors import UserError
from rewards.registry import _import_target

ENTRY_POINT_GROUP = "grpo.environments"


@dataclass(frozen=True)
class Environment:
    """A loaded environment: the function, the strings that end a tool call, and the recipe's args."""

    name: str
    fn: Callable[..., object]
    stop: tuple[str, ...]
    args: dict

    def __call__(self, row: dict, transcript: str) -> object:
        return self.fn(row, transcript, **self.args)


def installed_environments() -> dict[str, str]:
    """name -> "module:function" for every entry point of the group."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_environment(name: str, args: dict | None = None, stop: list[str] | None = None,
                     setup: bool = True) -> Environment:
    """The environment a recipe names, checked: its stop strings (the recipe's, else its own), its args (unknown
    ones refused unless it takes **kwargs), and its own setup hook (fn.setup(**args): e.g. the python environment
    checks that this host can sandbox; setup=False skips it, to check a recipe for another machine). Raises
    UserError naming the key and the fix."""
    args = dict(args or {})
    what = f"environment '{name}'"
    if ":" in name:
        fn = _import_target(name, what)
    else:
        known = installed_environments()
        if name not in known:
            guess = difflib.get_close_matches(name, list(known), n=1)
            hint = f" Did you mean '{guess[0]}'?" if guess else ""
            raise UserError(f"environment.name: '{name}' is not installed.{hint} Installed: "
                            f"{', '.join(sorted(known)) or 'none'}; or name your own as module:function.")
        fn = _import_target(known[name], what)
    stops = tuple(stop) if stop else tuple(getattr(fn, "stop", None) or ())
    if not stops or not all(isinstance(s, str) and s for s in stops):
        raise UserError(f"environment.stop: {what} declares no stop strings (fn.stop) and the recipe gives none; "
                        f"set environment.stop to the text that ends a tool call, e.g. ['</call>'].")
    _check_args(fn, what, args)
    hook = getattr(fn, "setup", None)
    if setup and callable(hook):
        hook(**args)
    return Environment(name, fn, stops, args)


def _check_args(fn: Callable, what: str, args: dict) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if len([p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) < 2 and not any(
            p.kind == p.VAR_POSITIONAL for p in params.values()):
        raise UserError(f"{what}: it must take (row, transcript, **args); write def env(row, transcript, **args)")
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in args if k not in params]
    if unknown:
        raise UserError(f"environment.args: {what} takes no argument {', '.join(map(repr, unknown))}; "
                        f"it takes {', '.join(list(params)[2:]) or 'none'}. Remove or rename it.")
