"""What a reward returns, checked: one value per completion, and optionally named sub-scores and counts.

A reward returns either a list (one float or None per completion), or a mapping that says more:

    {"rewards": [N floats | None],              # what the reward pays, as the list form
     "parts":   {name: [N floats | None]},     # named sub-scores (a judge's principles): reward/<reward>/<name>/mean
     "counts":  {name: number},                # this call's counts (calls, seconds): summed into reward/<reward>/<name>
     "failed":  int,                           # completions it scored 0 because something it relies on failed
     "failure": str}                           # the latest such failure, said once and kept for the guard's message

Only "rewards" is required. `failed` counts like a raise does (reward/<name>/errors, rewards[].max_error_fraction),
so a judge whose server died stops the run by the same guard as a reward that crashes.

Everything here is checked with bounded cost and raises ValueError (never anything else) with the counts of the
call, so the scorer can retry one completion at a time, as it does for a raise.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

# reward/<name>/<key> figures the trainer writes itself: a count of that name would overwrite one.
RESERVED_COUNTS = ("mean", "std", "errors", "crashes")
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}(/[A-Za-z0-9_.\-]{1,64})?")
KEYS = ("rewards", "parts", "counts", "failed", "failure")
MAX_NAMES = 256  # parts and counts each: a reward that returns thousands of names is broken, not informative


@dataclass
class RewardOutput:
    values: list[float | None]  # [N]
    parts: dict[str, list[float | None]] = field(default_factory=dict)  # name -> [N]
    counts: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    failure: str = ""

    def plain(self) -> list | dict:
        """The same as plain data (lists, dicts, numbers), for the pipe from a plugin's worker."""
        if not (self.parts or self.counts or self.failed or self.failure):
            return self.values
        return {"rewards": self.values, "parts": self.parts, "counts": self.counts, "failed": self.failed,
                "failure": self.failure}


def concatenated(outputs: list[RewardOutput]) -> RewardOutput:
    """One output from the outputs of consecutive slices of a batch (the scorer's one-at-a-time retries): values
    and parts in order (a part missing from a slice is None there), counts and failures summed."""
    merged = RewardOutput([])
    names = list(dict.fromkeys(name for o in outputs for name in o.parts))
    for name in names:
        merged.parts[name] = []
    for o in outputs:
        merged.values.extend(o.values)
        for name in names:
            merged.parts[name].extend(o.parts.get(name, [None] * len(o.values)))
        for name, count in o.counts.items():
            merged.counts[name] = merged.counts.get(name, 0.0) + count
        merged.failed += o.failed
        merged.failure = o.failure or merged.failure
    return merged


def checked(result: Any, n: int, max_abs: float = math.inf) -> RewardOutput:
    """The reward's result for n completions, or a ValueError saying what is wrong with it."""
    if isinstance(result, dict):
        return _checked_mapping(result, n, max_abs)
    return RewardOutput(checked_values(result, n, max_abs))


def _checked_mapping(result: dict, n: int, max_abs: float) -> RewardOutput:
    unknown = [k for k in result if k not in KEYS]
    if unknown:
        raise ValueError(f"returned a mapping with the unknown key {_short(unknown[0])}; its keys are "
                         f"{', '.join(KEYS)} (only 'rewards' is required)")
    if "rewards" not in result:
        raise ValueError("returned a mapping without 'rewards'; give {'rewards': [one float (or None) per "
                         "completion], ...}")
    out = RewardOutput(checked_values(result["rewards"], n, max_abs))
    parts, counts = result.get("parts") or {}, result.get("counts") or {}
    for what, table in (("parts", parts), ("counts", counts)):
        if not isinstance(table, dict):
            raise ValueError(f"returned '{what}' as a {type(table).__name__}; it is a mapping of name -> values")
        if len(table) > MAX_NAMES:
            raise ValueError(f"returned {len(table)} {what}; at most {MAX_NAMES}")
        for name in table:
            if not isinstance(name, str) or not NAME.fullmatch(name):
                raise ValueError(f"returned the {what[:-1]} name {_short(name)}; a name is letters, digits, _ . - "
                                 f"(one / at most), up to 64 characters")
    for name, values in parts.items():
        out.parts[name] = checked_values(values, n, math.inf, f"part '{name}'")
    for name, value in counts.items():
        if name in RESERVED_COUNTS or name.endswith("/mean"):
            raise ValueError(f"returned the count '{name}', a name the trainer logs itself; rename it")
        number = _number(value, f" as count '{name}'")
        if not math.isfinite(number):
            raise ValueError(f"returned the non-finite count {value!r} for '{name}'")
        out.counts[name] = number
    failed = result.get("failed", 0)
    if isinstance(failed, bool) or not isinstance(failed, int) or not 0 <= failed <= n:
        raise ValueError(f"returned 'failed' = {_short(failed)}; it is a whole number of completions, 0 to {n}")
    out.failed = failed
    failure = result.get("failure", "")
    if not isinstance(failure, str):
        raise ValueError(f"returned 'failure' as a {type(failure).__name__}; it is the text of the latest failure")
    out.failure = failure[:500]
    return out


def checked_values(values: Any, n: int, max_abs: float = math.inf, what: str = "") -> list[float | None]:
    """One float (or None) per completion, or a ValueError saying what is wrong with it, with the counts of this
    call. `what` names a part ("part 'safety'") when these are not the reward's own values."""
    of = f" in {what}" if what else ""
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"returned {type(values).__name__}{of}, expected a list of {n} floats (or None); convert "
                         f"a numpy array or tensor with .tolist()")
    if len(values) != n:
        raise ValueError(f"returned {len(values)} value{'s' * (len(values) != 1)}{of} for {_count(n)}; expected one "
                         f"float (or None) per completion, in the order given")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        where = (f" as value {i + 1} of {n}" if n > 1 else "") + of
        f = _number(v, where)
        if not math.isfinite(f):
            raise ValueError(f"returned the non-finite value {v!r}{where}")
        if abs(f) > max_abs:
            raise ValueError(f"returned {f:g}{where}, beyond rewards[].max_abs = {max_abs:g} (it would swamp the "
                             f"advantages)")
        out.append(f)
    return out


def _number(v: Any, where: str) -> float:
    """A reward's value as a float. Text is refused, even "1.0": float() would take it, and a reward that returns
    its dataset's column of strings (or a grader's verdict as text) would then train on whatever the text says.
    bool is taken as 1.0 / 0.0: True is an int in Python, and a "was it right?" reward means exactly that.
    Numbers of other kinds (int, numpy scalars, a 0-d tensor) are what float() makes of them."""
    if isinstance(v, (str, bytes, bytearray)):
        raise ValueError(f"returned the text {_short(v)}{where}, not a number; a reward returns floats (or None): "
                         f"convert in the reward, e.g. float(x), and return 1.0, not \"1.0\"")
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"returned {_short(v)} (a {type(v).__name__}){where}, not a number; a reward returns one "
                         f"float (or None) per completion") from None


def _count(n: int) -> str:
    return f"{n} completion{'s' * (n != 1)}"


def _short(v: Any, limit: int = 60) -> str:
    """repr of a value a reward returned, cut to `limit` characters (it may be a whole completion, or worse)."""
    if isinstance(v, (str, bytes, bytearray)) and len(v) > limit:
        v = v[:limit]  # cut before repr: repr of a huge string costs its size
        return repr(v) + "..."
    try:
        text = repr(v)
    except Exception:  # noqa: BLE001 - a value whose repr raises is still only reported
        text = f"<{type(v).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."
