"""Structure of an answer string: top-level splitting, bracket groups, lists, labels ("x =", "(p,q) =").

Pure string functions on normalised answers (normalize.normalize has run); nothing here compares values, so the
comparison passes its own item test where one is needed.

List rule: an answer is a list when it has top-level items joined by ",", ";", "and", "or" (bare or in
\\text{..}), or a \\pm; items "a, b, \\ldots, z" with integers in steps are the whole progression.
A list only ever matches a list of the same length (any order), so "3 or 5" never matches 3 and a spray of
guesses never matches one gold.
"""

from __future__ import annotations

import re
from typing import Callable

_MAX_ELLIPSIS = 2000  # "1, 2, ..., 10^9" is not expanded (the items stay literal)

# Top-level list separators in a normalised answer (spaces survive only between word characters).
_LIST_SEP = re.compile(r"\\(?:text|mbox|textrm|mathrm|textnormal)\{,?(?:and|or)\}|,?\b(?:and|or)\b(?![a-zA-Z])|[,;]")
_ELLIPSIS = re.compile(r"\\[lc]?dots[bc]?|\.\.\.|…")


def split_top(s: str, seps: tuple[str, ...] = (), rx: re.Pattern | None = None) -> list[str]:
    """Split on any of seps (or matches of rx) where no bracket is open (\\{ and \\begin count as brackets)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\begin", i):
            depth += 1
            i += 2 if s[i + 1] == "{" else 6
            continue
        if s.startswith("\\}", i) or s.startswith("\\end", i):
            depth -= 1
            i += 2 if s[i + 1] == "}" else 4
            continue
        c = s[i]
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
        elif depth == 0:
            hit = 0
            if rx is not None:
                m = rx.match(s, i)
                hit = m.end() - i if m and m.end() > i else 0
            else:
                for sep in seps:
                    if s.startswith(sep, i):
                        hit = len(sep)
                        break
            if hit:
                parts.append(s[start:i])
                i += hit
                start = i
                continue
            i += 1
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def enclosed(s: str, open_: str, close: str) -> bool:
    """True when s is one bracket group open_ ... close (the opening bracket closes only at the end)."""
    if not (s.startswith(open_) and s.endswith(close)) or len(s) < len(open_) + len(close):
        return False
    depth = 0
    for c in s[len(open_):len(s) - len(close)]:
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def is_tuple(s: str) -> bool:
    """(a, b) or [a, b] with at least two items (a point, a vector, or an interval)."""
    return any(enclosed(s, o, c) and len(split_top(s[1:-1], (",",))) > 1 for o in "([" for c in ")]")


def expand_pm(s: str) -> list[str] | None:
    """'a \\pm b' -> ['a+b', 'a-b']; None when s has no top-level \\pm."""
    parts = split_top(s, ("\\pm",))
    if len(parts) != 2 or not parts[1]:
        return None
    a, b = parts
    neg = f"-{b}" if re.fullmatch(r"[\w.\\{}^]+", b) else f"-({b})"  # -2021 stays a plain number
    if not a:
        return [b, neg]
    return [f"{a}+{b}", f"{a}{neg}"]


def _expand_ellipsis(items: list[str]) -> list[str]:
    """['2', '3', '\\ldots', '13'] -> ['2', ..., '13'] for an integer progression; otherwise unchanged."""
    at = [k for k, it in enumerate(items) if _ELLIPSIS.fullmatch(it)]
    if len(at) != 1 or at[0] < 1 or at[0] != len(items) - 2:
        return items
    k = at[0]
    head, last = items[:k], items[-1]
    if not all(re.fullmatch(r"-?\d{1,9}", x) for x in head + [last]):
        return items
    nums = [int(x) for x in head]
    step = nums[1] - nums[0] if len(nums) > 1 else 1
    if step == 0 or any(b - a != step for a, b in zip(nums, nums[1:])):
        return items
    end = int(last)
    if (end - nums[-1]) % step or (end - nums[-1]) // step < 1 or (end - nums[0]) // step > _MAX_ELLIPSIS:
        return items
    return [str(v) for v in range(nums[0], end + (1 if step > 0 else -1), step)]


def as_list(s: str) -> list[str] | None:
    """The items of a list answer ('1, 2', '1;2', '1 \\text{ and } 2', 'x=1 or x=2', '1 \\pm \\sqrt{2}');
    None when s is one item. A set \\{..\\} is not unwrapped here (the comparison decides set vs list)."""
    items = split_top(s, rx=_LIST_SEP)
    items = [it for it in items if it]
    if len(items) > 1:
        out: list[str] = []
        for it in _expand_ellipsis(items):
            out.extend(expand_pm(it) or [it])
        return out
    return expand_pm(s)


def set_items(s: str) -> list[str] | None:
    """Items of a set \\{a, b\\} (None when s is not one)."""
    if not enclosed(s, "\\{", "\\}"):
        return None
    inner = s[2:-2].strip()
    return as_list(inner) or ([inner] if inner else [])


def match_unordered(ps: list[str], gs: list[str], eq: Callable[[str, str], bool]) -> bool:
    """Same items in any order (each gold item used once)."""
    if len(ps) != len(gs):
        return False
    left = list(gs)
    for p in ps:
        for k, g in enumerate(left):
            if eq(p, g):
                del left[k]
                break
        else:
            return False
    return True


# Commands that denote values or operations, not names: an LHS made only of these and digits is a value.
_VALUE_CMDS = re.compile(r"\\(?:frac|sqrt|pi|cdot|times|div|sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|log|ln|exp|"
                         r"infty|binom|pm|mp|circ|left|right|text|mathrm|operatorname|lfloor|rfloor|lceil|rceil)"
                         r"(?![a-zA-Z])")
_NAME = (r"(?:(?:\\(?:angle|measuredangle|triangle|overline|overrightarrow|vec|bar|hat|widehat|overarc)\s*\{?|m\\angle)?"
         r"(?:[A-Za-z]|\\(?:alpha|beta|gamma|delta|theta|phi|varphi|psi|omega|lambda|mu|sigma|rho|tau|epsilon|"
         r"varepsilon|eta|kappa|xi|zeta|nu|chi|Delta|Omega|Theta|Phi))(?![a-zA-Z]{5})[A-Za-z]{0,3}\}?"
         r"(?:_\{?[\w,]+\}?)?'*(?:\^\{?-?\w+\}?)?(?:\([^()=]*\))?)")
_STRICT_LABEL = re.compile(rf"{_NAME}|\|{_NAME}\||\({_NAME}(?:,{_NAME})+\)|{_NAME}(?::{_NAME})+|{_NAME}/{_NAME}|"
                           rf"\\frac\{{{_NAME}\}}\{{{_NAME}\}}")


def is_label(s: str, loose: bool = False) -> bool:
    """s names the thing being answered: 'x', 'f(2)', 'AB', '|AB|', '(p,q)', 'V_1:V_2', '\\angle ABC'.
    loose (a prediction's left-hand side): any short expression with a letter outside value commands, so
    'x+y = 5' answers 5, while '\\sqrt{25} = 5' is a chain of values that must all be right."""
    s = s.strip()
    if not s or len(s) > 40:
        return False
    if _STRICT_LABEL.fullmatch(s):
        return True
    return loose and bool(re.search(r"[a-zA-Z]", _VALUE_CMDS.sub("", s)))


def split_label(s: str, loose: bool) -> tuple[str | None, str]:
    """'x = 5' -> ('x', '5'); '(p,q)=(3,2)' -> ('(p,q)', '(3,2)'); no label -> (None, s)."""
    parts = split_top(s, ("=",))
    if len(parts) == 2 and parts[1] and is_label(parts[0], loose):
        return parts[0], parts[1]
    return None, s
