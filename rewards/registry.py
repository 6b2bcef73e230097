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
    found: dict[str, RewardSource] = {}
    seen_targets: set[tuple[str, str]] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown distribution"
        if (ep.name, ep.value) in seen_targets:  # the same distribution seen twice on sys.path (editable + build)
            continue
        seen_targets.add((ep.name, ep.value))
        if ep.name in found:
            other = found[ep.name]
            raise UserError(
                f"reward '{ep.name}' is registered twice in entry-point group '{ENTRY_POINT_GROUP}': "
                f"{other.target} (from {other.origin}) and {ep.value} (from {origin}). "
                f"Uninstall one of them, or rename the entry point in one package."
            )
        found[ep.name] = RewardSource(ep.name, ep.value, origin)
    return found


def load_reward(name: str) -> RewardFn:
    """Resolve a reward name from a recipe to a callable."""
    if ":" in name:
        return _import_target(name, f"reward '{name}'")
    source = find_installed(name)
    return _import_target(source.target, f"reward '{name}' ({source.origin})")


def find_installed(name: str) -> RewardSource:
    """Where an installed reward comes from, without importing it (some rewards start workers on import)."""
    known = installed_rewards()
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
