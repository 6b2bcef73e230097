"""Find reward functions by name: the `grpo.rewards` entry-point group (built-ins and plugins alike) or
`module:function`. Unknown names fail with the known list and a suggestion; a name claimed by two
distributions fails showing both."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from rewards.errors import UserError

ENTRY_POINT_GROUP = "grpo.rewards"
RewardFn = Callable[..., list]


@dataclass(frozen=True)
class RewardSource:
    name: str
    target: str  # "module:function"
    origin: str  # distribution name and version, or "module path"


def installed_rewards() -> dict[str, RewardSource]:
    """name -> where it comes from, for every entry point in the group. Raises on a duplicate name."""
    found, clashes = _scan()
    if clashes:
        raise UserError(next(iter(clashes.values())))
    return found


def _scan() -> tuple[dict[str, RewardSource], dict[str, str]]:
    """Every entry point of the group, and for each name claimed twice the message that says by whom."""
    found: dict[str, RewardSource] = {}
    clashes: dict[str, str] = {}
    seen_targets: set[tuple[str, str]] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown distribution"
        if (ep.name, ep.value) in seen_targets:  # the same distribution seen twice on sys.path (editable + build)
            continue
        seen_targets.add((ep.name, ep.value))
        if ep.name in found:
            other = found[ep.name]
            clashes.setdefault(ep.name,
                f"reward '{ep.name}' is registered twice in entry-point group '{ENTRY_POINT_GROUP}': "
                f"{other.target} (from {other.origin}) and {ep.value} (from {origin}). "
                f"Uninstall one of them, or rename the entry point in one package.")
            continue
        found[ep.name] = RewardSource(ep.name, ep.value, origin)
    return found, clashes


def load_reward(name: str) -> RewardFn:
    """Resolve a reward name from a recipe to a callable."""
    if ":" in name:
        return _import_target(name, f"reward '{name}'")
    source = find_installed(name)
    return _import_target(source.target, f"reward '{name}' ({source.origin})")


# The package whose rewards are grpo's own (math, code, format, length, ...: the entry points of pyproject.toml).
# They run in the trainer's process: proven safe there (math checks in its own sympy worker, code in its sandbox).
# Every other reward is a user's plugin and runs in a worker process (rewards/plugin_pool.py).
BUILTIN_PACKAGE = "rewards"


def reward_target(name: str) -> tuple[str, str]:
    """("module:function", how to name it in a message) for a recipe's reward name, without importing it."""
    if ":" in name:
        return name, f"reward '{name}'"
    source = find_installed(name)
    return source.target, f"reward '{name}' ({source.origin})"


def is_builtin(target: str) -> bool:
    """A "module:function" of grpo's own rewards package (see BUILTIN_PACKAGE)."""
    module = target.partition(":")[0]
    return module == BUILTIN_PACKAGE or module.startswith(BUILTIN_PACKAGE + ".")


def find_installed(name: str) -> RewardSource:
    """Where an installed reward comes from, without importing it (some rewards start workers on import)."""
    known, clashes = _scan()  # a clash on another name is not this reward's problem
    if name in clashes:
        raise UserError(clashes[name])
    if name not in known:
        guess = difflib.get_close_matches(name, list(known), n=1)
        hint = f" Did you mean '{guess[0]}'?" if guess else ""
        listing = ", ".join(sorted(known)) or "none (is grpo installed with `pip install -e .`?)"
        raise UserError(
            f"reward '{name}' is not installed.{hint} Installed rewards: {listing}. "
            f"A reward of your own can be named as module:function, or registered under the "
            f"'{ENTRY_POINT_GROUP}' entry-point group of your package."
        )
    return known[name]


def _import_target(target: str, what: str) -> RewardFn:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UserError(f"{what}: '{target}' is not of the form module:function, e.g. my_rewards:brevity")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{what}: cannot import module '{module_name}' ({exc}). Is it installed or on PYTHONPATH?") from exc
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise UserError(f"{what}: module '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise UserError(f"{what}: '{target}' is not callable")
    return fn


# Keyword arguments the trainer passes besides the dataset's own columns (rewards/scoring.reward_columns).
TRAINER_KEYWORDS = ("answer", "completion_ids", "finish_reasons", "max_new_tokens", "tool_calls", "final_text")


def check_reward_signature(fn: RewardFn, name: str, args: dict | None = None) -> None:
    """Recipe `args` the function does not take, or a function without **kwargs (the trainer passes every
    column): either would make every call raise and every completion score 0, so say it before training."""
    problems = reward_signature_problems(fn, name, args)
    if problems:
        raise UserError("; ".join(problems))


def reward_signature_problems(fn: RewardFn, name: str, args: dict | None = None) -> list[str]:
    import inspect

    target = fn.func if hasattr(fn, "func") and hasattr(fn, "keywords") else fn  # functools.partial
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return []
    named = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    options = [p for p in named[2:] if p not in TRAINER_KEYWORDS]  # what a recipe's args can set
    problems = []
    # An arg that is not a named parameter would vanish into **kwargs (a misspelt option silently ignored) or
    # make every call raise; the function's own signature is the list of its options.
    unknown = [a for a in (args or {}) if a not in options]
    if unknown:
        guesses = {a: difflib.get_close_matches(a, options, n=1) for a in unknown}
        hint = "".join(f" (did you mean '{g[0]}' for '{a}'?)" for a, g in guesses.items() if g)
        problems.append(f"reward '{name}' takes no option {', '.join(map(repr, unknown))}{hint}; its options are "
                        f"{', '.join(options) or 'none'}. Fix or remove them in the recipe's args")
    if inspect.Parameter.VAR_KEYWORD not in {v.kind for v in params.values()}:
        problems.append(f"reward '{name}' has no **kwargs in its signature; the trainer passes every dataset column "
                        f"and {', '.join(TRAINER_KEYWORDS)} as keywords, so every call would fail. Add **kwargs: "
                        f"def {getattr(target, '__name__', 'reward')}(prompts, completions, ..., **kwargs)")
    return problems
