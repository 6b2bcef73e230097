"""Comparison policy: is a predicted answer the same answer as the gold one?

Order of work: cheap exact paths first (normalised strings, exact rational numbers, structure), sympy in the
worker process only when they cannot decide. Everything shares one deadline; past it the answer is "not equal".

Policy (see /work/helper_notes/math_readme.md for the user-facing list):
- numbers are compared exactly (0.5 == 1/2 == 50%); a decimal never equals an irrational or a non-terminating
  rational; a gold written as a rounded decimal (3.14) accepts an exact prediction that rounds to it.
- structure must match: tuple vs tuple in order, sets and comma lists in any order, intervals with the same
  bracket kinds, matrices of the same shape.
- "x = 5" equals "5"; every side of a chained equality must equal the gold ("6 = 5" is wrong).
- an inequality, a hedge ("5 or 6"), or words absent from the gold make a prediction wrong.
"""

from __future__ import annotations

import re
import threading
import time
from fractions import Fraction

from rewards.mathcheck.normalize import normalize, strip_degrees, unwrap_text
from rewards.mathcheck.numbers import parse_number
from rewards.mathcheck.worker import POOL

_STATE = threading.local()
_SYMPY_MAX_LEN = 400
_MAX_DEPTH = 60

_CHOICE_GOLD = re.compile(r"\(?([A-Ea-e])\)?")
_CHOICE_PRED = re.compile(r"\(?([A-E])\)?(?:[\s.:)].*)?", re.S)
_UNITS = ("cm|mm|km|m|meters?|metres?|centimeters?|inches|inch|in|feet|foot|ft|yards?|miles?|mph|kg|g|grams?|"
          "pounds?|lbs?|ounces?|oz|seconds?|sec|s|minutes?|min|hours?|hrs?|h|days?|weeks?|months?|years?|"
          "dollars?|cents?|euros?|units?|sq|square|cubic|liters?|litres?|l|ml|gallons?|degrees?|radians?|rad|"
          "people|persons?|students?|times|percent|points?|pages?|boxes|books?|apples?|eggs?|cups?|items?")
_UNIT_TAIL = re.compile(rf"^(.*?[\d}}])\s*(?:\\(?:text|mbox|mathrm|textrm|textbf|textit)\{{[^{{}}]*\}}(?:\^\{{?[23]\}}?|\^[23])?|(?:(?:{_UNITS})(?:\^\{{?[23]\}}?|\^[23])?\s*)+)$")
_WORDS = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_BASE = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?")
_INT_STR = re.compile(r"-?\d+")
_REL = re.compile(r"\\leq|\\geq|\\neq|<|>|\\ne\b|\\approx|\\lt|\\gt")
_WORD_SEP = re.compile(r"\\text\{\s*(?:or|and)\s*\}|\b(?:or|and)\b|;")


def _deadline_passed() -> bool:
    return time.monotonic() > getattr(_STATE, "deadline", float("inf"))


def _depth_ok(s: str) -> bool:
    depth = 0
    for c in s:
        if c in "{([":
            depth += 1
            if depth > _MAX_DEPTH:
                return False
        elif c in "})]":
            depth -= 1
    return True


def split_top(s: str, seps: tuple[str, ...]) -> list[str]:
    """Split on any of seps where no bracket is open (\\{ counts as a bracket)."""
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
            for sep in seps:
                if s.startswith(sep, i):
                    parts.append(s[start:i])
                    i += len(sep)
                    start = i
                    break
            else:
                i += 1
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _enclosed(s: str, open_: str, close: str) -> bool:
    """True when s is one bracket group open_ ... close (the opening bracket closes only at the end)."""
    if not (s.startswith(open_) and s.endswith(close)) or len(s) < len(open_) + len(close):
        return False
    inner = s[len(open_):len(s) - len(close)]
    depth = 0
    for c in inner:
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _strip_units(s: str) -> str:
    m = _UNIT_TAIL.match(s)
    return m.group(1).strip() if m and m.group(1).strip() else s


def _percent(s: str) -> tuple[str, bool]:
    t = s.replace("\\%", "").replace("%", "")
    t = re.sub(r"\\text\{\s*(?:percent|percentage|pct)\s*\}|\b(?:percentage|percent|pct)\b", "", t).strip()
    return t, t != s


def _clean_scalar(s: str) -> tuple[str, bool]:
    s, _ = strip_degrees(s)
    s, pct = _percent(s)
    s = _strip_units(s)
    s = unwrap_text(s)
    return normalize(s), pct


def _matrix(s: str) -> list[list[str]] | None:
    if (_enclosed(s, "(", ")") or _enclosed(s, "[", "]")) and s[1:].startswith("\\begin"):
        s = s[1:-1]  # \left[\begin{array}..\end{array}\right]
    m = re.fullmatch(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", s, re.S)
    if not m:
        return None
    rows = [r for r in m.group(2).split("\\\\")]
    rows = [r for r in rows if r.strip()]
    return [[c.strip() for c in r.split("&")] for r in rows]


def _letters_ok(pred: str, gold: str) -> bool:
    """Words in the prediction that the gold lacks ('or', 'approximately', injected text) make it wrong."""
    gold_letters = set(re.sub(r"\\[a-zA-Z]+", "", gold))
    for w in _WORDS.findall(pred):
        if w not in gold and not set(w) <= gold_letters:
            return False
    return True


def _num_equal(pn, gn, p_pct: bool, g_pct: bool) -> bool:
    pv, gv = pn.value, gn.value
    p_alts = {pv, pv / 100} if p_pct else {pv}
    g_alts = {gv, gv / 100} if g_pct else {gv}
    if p_pct and not g_pct:
        p_alts = {pv, pv / 100}
    if p_alts & g_alts:
        return True
    # A gold written as a rounded decimal (3.14) accepts an exact (non-decimal) prediction that rounds to it.
    if gn.decimals and pn.decimals is None and not p_pct and not g_pct:
        q = Fraction(1, 10 ** gn.decimals)
        return abs(pv - gv) <= q / 2
    # A rational gold with no finite decimal form (1/3, 8/3) accepts its decimal rounded to 2+ places
    # (0.33, 2.6667); a terminating gold (1/8) needs the exact decimal (0.125, not 0.13).
    if pn.decimals and pn.decimals >= 2 and gn.decimals is None and not _terminates(gv) and p_pct == g_pct:
        return abs(pv - gv) <= Fraction(1, 2 * 10 ** pn.decimals)
    return False


def _terminates(v: Fraction) -> bool:
    d = v.denominator
    for f in (2, 5):
        while d % f == 0:
            d //= f
    return d == 1


def scalar_equal(pred: str, gold: str) -> bool:
    if _deadline_passed():
        return False
    if pred == gold:
        return True
    p, p_pct = _clean_scalar(pred)
    g, g_pct = _clean_scalar(gold)
    if not p or not g:
        return False
    if p == g and p_pct == g_pct:
        return True
    # Base subscripts: 1011_2 vs 1011 (digits) or 11_{10} (value).
    pb, gb = _BASE.fullmatch(p), _BASE.fullmatch(g)
    if gb or pb:
        if gb and pb:
            try:
                return int(pb.group(1), int(pb.group(2))) == int(gb.group(1), int(gb.group(2)))
            except ValueError:
                return False
        digits = gb.group(1) if gb else pb.group(1)
        other = p if gb else g
        return other.lower() == digits.lower()
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None and gn is not None:
        return _num_equal(pn, gn, p_pct, g_pct)
    if _INT_STR.fullmatch(p) and _INT_STR.fullmatch(g):
        return p.lstrip("-").lstrip("0") == g.lstrip("-").lstrip("0") and p.startswith("-") == g.startswith("-")
    if gn is not None and pn is None and re.fullmatch(r"[\d.,+\-\s]*", p):
        return False
    if _REL.search(p) and not _REL.search(g):
        return False
    if not _letters_ok(p, g):
        return False
    if p_pct != g_pct:
        return False
    if len(p) > _SYMPY_MAX_LEN or len(g) > _SYMPY_MAX_LEN or not _depth_ok(p) or not _depth_ok(g):
        return False
    deadline = getattr(_STATE, "deadline", time.monotonic() + 0.8)
    if gn is not None and gn.decimals and not p_pct and not g_pct:
        # Gold is a rounded decimal (3.14): an exact constant (\pi) that rounds to it is right.
        return bool(POOL.equal(p, g, deadline, tol=str(Fraction(1, 2 * 10 ** gn.decimals))))
    return bool(POOL.equal(p, g, deadline))


def _is_simple_lhs(s: str) -> bool:
    """A name being assigned: x, y_1, f(2), \\theta, a+b (letters present, no digits-only)."""
    return bool(s) and bool(re.search(r"[a-zA-Z]", s)) and len(s) <= 40


def _is_variable(s: str) -> bool:
    """A gold equation 'x = 5' / 'f(3) = 5' may be answered by '5'; 'a + 3z = 0' may not be answered by '0'."""
    return bool(re.fullmatch(r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\([^()]*\))?", s))


def _match_unordered(ps: list[str], gs: list[str]) -> bool:
    if len(ps) != len(gs):
        return False
    left = list(gs)
    for p in ps:
        for k, g in enumerate(left):
            if equal(p, g):
                del left[k]
                break
        else:
            return False
    return True


def _expand_pm(s: str) -> list[str] | None:
    parts = split_top(s, ("\\pm",))
    if len(parts) != 2 or not parts[1]:
        return None
    a, b = parts
    neg = f"-{b}" if re.fullmatch(r"[\w.\\{}^]+", b) else f"-({b})"  # -2021 stays a plain number
    if not a:
        return [b, neg]
    return [f"{a}+{b}", f"{a}{neg}"]


def _as_list(s: str) -> list[str] | None:
    """Bare comma list / pm expansion / 'a or b'; None when s is one item."""
    items = split_top(s, (",",))
    if len(items) > 1:
        out: list[str] = []
        for it in items:
            it = re.sub(r"^(?:\\text\{\s*and\s*\}|and\b)\s*", "", it)  # "19, 46, and 82"
            out.extend(_expand_pm(it) or [it])
        return out
    return _expand_pm(s)


def _drop_assign(s: str) -> list[str]:
    """'x = 5' -> ['5']; 'x = 2+3 = 5' -> ['2+3', '5']; '6 = 5' -> ['6', '5'] (all must match)."""
    parts = split_top(s, ("=",))
    if len(parts) == 1:
        return parts
    while len(parts) > 1 and _is_simple_lhs(parts[0]) and not parse_number(normalize(parts[0])):
        parts = parts[1:]
    return parts


_INEQ = r"(<|>|\\leq|\\geq|\\lt|\\gt)"
_VAR = r"([a-zA-Z]|\\[a-zA-Z]+)"
_RE_VAR_OP = re.compile(rf"{_VAR}\s*{_INEQ}\s*(.+)")
_RE_OP_VAR = re.compile(rf"(.+?)\s*{_INEQ}\s*{_VAR}")
_RE_BETWEEN = re.compile(rf"(.+?)\s*{_INEQ}\s*{_VAR}\s*{_INEQ}\s*(.+)")
_LESS = {"<": True, "\\lt": True, "\\leq": False}
_MORE = {">": True, "\\gt": True, "\\geq": False}


def as_interval(s: str) -> str:
    """'x \\geq 2' -> '[2,\\infty)', 'x \\in [2,5)' -> '[2,5)', '\\mathbb{R}' -> '(-\\infty,\\infty)'; else s."""
    s = re.sub(r"^[a-zA-Z]\\in", "", s)
    s = s.replace("\\mathbb{R}", "(-\\infty,\\infty)")
    m = _RE_BETWEEN.fullmatch(s)
    if m and m.group(2) in _LESS and m.group(4) in _LESS and not re.search(r"[<>]|\\[lg]", m.group(1) + m.group(5)):
        return ("(" if _LESS[m.group(2)] else "[") + m.group(1) + "," + m.group(5) + (")" if _LESS[m.group(4)] else "]")
    m = _RE_VAR_OP.fullmatch(s)
    if m and not re.search(_INEQ, m.group(3)) and "\\infty" != m.group(1):
        op, a = m.group(2), m.group(3)
        if op in _LESS:
            return "(-\\infty," + a + (")" if _LESS[op] else "]")
        return ("(" if _MORE[op] else "[") + a + ",\\infty)"
    m = _RE_OP_VAR.fullmatch(s)
    if m and not re.search(_INEQ, m.group(1)):
        a, op = m.group(1), m.group(2)
        if op in _LESS:  # a < x
            return ("(" if _LESS[op] else "[") + a + ",\\infty)"
        return "(-\\infty," + a + (")" if _MORE[op] else "]")
    return s


def _ungroup(s: str) -> str:
    """'{1,3}' is LaTeX grouping around '1,3', not a set (a set is written \\{..\\})."""
    for _ in range(4):  # each layer costs a scan; deeper grouping is left to the depth guard
        if not (_enclosed(s, "{", "}") and not s.startswith("\\")):
            break
        s = s[1:-1].strip()
    return s


def equal(pred: str, gold: str) -> bool:
    """Structural comparison; scalars go to scalar_equal."""
    if _deadline_passed():
        return False
    p, g = _ungroup(normalize(pred)), _ungroup(normalize(gold))
    if _REL.search(p) and _REL.search(g):
        pi, gi = as_interval(p), as_interval(g)
        if _REL.search(pi) or _REL.search(gi):
            return scalar_equal(p, g)  # relations sympy compares (5 \\geq x, -x > -1)
    p, g = as_interval(p), as_interval(g)
    if not p or not g:
        return False
    if p == g:
        return True
    # Matrices.
    pm_, gm_ = _matrix(p), _matrix(g)
    if gm_ is not None or pm_ is not None:
        if gm_ is None or pm_ is None:
            other, mat = (p, gm_) if gm_ is not None else (g, pm_)
            flat = [c for row in mat for c in row]
            if len(mat) != 1 and any(len(r) != 1 for r in mat):
                return False
            if _enclosed(other, "(", ")") or _enclosed(other, "[", "]"):
                items = split_top(other[1:-1], (","))
                return len(items) == len(flat) and all(
                    equal(a, b) if gm_ is not None else equal(b, a) for a, b in zip(items, flat))
            return False
        if len(pm_) != len(gm_) or any(len(a) != len(b) for a, b in zip(pm_, gm_)):
            return False
        return all(a == b or equal(a, b) for ra, rb in zip(pm_, gm_) for a, b in zip(ra, rb))
    # A bare list gold ("1, 2", "1 \\pm \\sqrt{2}"): the prediction may spell it "x = 1 or x = 2".
    gl = _as_list(g) if "=" not in g and parse_number(g) is None else None
    if gl is not None:
        pl = split_top(p[2:-2], (",",)) if _enclosed(p, "\\{", "\\}") else _as_list(p)
        if pl is None:
            pl = [normalize(unwrap_text(x)) for x in _WORD_SEP.split(pred) if x and x.strip()]
            if len(pl) <= 1:
                return False
        pl = [(_drop_assign(x) or [x])[-1] for x in pl]
        return _match_unordered(pl, gl)
    # Equations: strip assignments; a real equation gold is compared as an equation.
    g_eq = split_top(g, ("=",))
    p_eq = split_top(p, ("=",))
    if len(g_eq) == 2 and len(p_eq) == 2:
        if g_eq[0] == p_eq[0] and _is_simple_lhs(g_eq[0]):
            return equal(p_eq[1], g_eq[1])
        if _is_simple_lhs(g_eq[0]) and re.fullmatch(r"[a-zA-Z](?:_\{?\w+\}?)?", g_eq[0]) and \
                re.fullmatch(r"[a-zA-Z](?:_\{?\w+\}?)?", p_eq[0]):
            return p_eq[0] == g_eq[0] and equal(p_eq[1], g_eq[1])
        return scalar_equal(p, g)
    if len(g_eq) == 2 and len(p_eq) == 1 and _is_variable(g_eq[0]):
        return equal(p, g_eq[1])
    g_tuple = any(_enclosed(g, o, c) and len(split_top(g[1:-1], (",",))) > 1 for o in "([" for c in ")]")
    if len(g_eq) == 1 and len(p_eq) > 1 and not g_tuple:
        sides = _drop_assign(p)
        return bool(sides) and all(equal(s, g) for s in sides)
    if len(g_eq) > 2:
        return scalar_equal(p, g)
    # Times and ratios (12:00, 3:4): part by part.
    if ":" in g or ":" in p:
        gc, pc = split_top(g, (":",)), split_top(p, (":",))
        return len(gc) == len(pc) and all(a == b or equal(a, b) for a, b in zip(pc, gc))
    # Unions of intervals/sets: same pieces in any order.
    g_u, p_u = split_top(g, ("\\cup",)), split_top(p, ("\\cup",))
    if len(g_u) > 1 and len(p_u) == 1:  # "x < -3 or x > 3" for (-\infty,-3)\cup(3,\infty)
        words = [as_interval(normalize(unwrap_text(x))) for x in _WORD_SEP.split(pred) if x and x.strip()]
        if len(words) > 1:
            p_u = words
    if len(g_u) > 1 or len(p_u) > 1:
        return _match_unordered(p_u, g_u)
    # Sets: any order.
    if _enclosed(g, "\\{", "\\}"):
        if not _enclosed(p, "\\{", "\\}"):
            pl = _as_list(p)
            return pl is not None and _match_unordered(pl, split_top(g[2:-2], (",",)))
        return _match_unordered(split_top(p[2:-2], (",",)), split_top(g[2:-2], (",",)))
    # Tuples and intervals: same brackets, in order.
    for o in "([":
        for c in ")]":
            if _enclosed(g, o, c) and len(split_top(g[1:-1], (",",))) > 1:
                gi = split_top(g[1:-1], (",",))
                if _enclosed(p, o, c):
                    pi = split_top(p[1:-1], (",",))
                elif o + c == "()" and "=" not in p and len(split_top(p, (",",))) == len(gi):
                    pi = split_top(p, (",",))  # the point (1,3) written bare or in grouping braces: 1,3
                else:  # "a = 2, b = 3" for the point (2,3): every item an assignment, in order
                    items = [split_top(x, ("=",)) for x in split_top(p, (",",))]
                    if len(items) < 2 or any(len(x) != 2 or not _is_simple_lhs(x[0]) for x in items):
                        return False
                    pi = [x[1] for x in items]
                return len(pi) == len(gi) and all(equal(a, b) for a, b in zip(pi, gi))
    pl = _as_list(p)
    if pl is not None:
        # A gold that is one number: "1,000" may be thousands.
        if parse_number(p) is not None:
            return scalar_equal(p, g)
        return False
    if any(_enclosed(p, o, c) and len(split_top(p[1:-1], (",",))) > 1 for o in "([" for c in ")]"):
        return False
    if _enclosed(p, "\\{", "\\}"):
        return False
    return scalar_equal(p, g)


def _choice(pred: str, gold: str) -> bool | None:
    g = unwrap_text(gold).strip()
    m = _CHOICE_GOLD.fullmatch(g)
    if not m:
        return None
    pm_ = _CHOICE_PRED.fullmatch(unwrap_text(pred).strip())
    return bool(pm_) and pm_.group(1).upper() == m.group(1).upper()


def _text_gold(gold: str) -> str | None:
    """A gold that is words (\\text{Monday}, 'odd'), lower-cased; None for a math gold."""
    g = normalize(gold)
    t = unwrap_text(g).strip().lower()
    if "\\text" in g or "\\mbox" in g or re.fullmatch(r"[a-z][a-z ,'-]{2,}", t):
        if re.fullmatch(r"[a-z][a-z ,.'-]*", t) and len(re.sub(r"[^a-z]", "", t)) >= 2:
            return t
    return None


def equivalent(pred: str, gold: str, budget_s: float = 0.75) -> bool:
    """pred and gold (answer strings, already extracted) denote the same answer."""
    _STATE.deadline = time.monotonic() + budget_s
    try:
        ch = _choice(pred, gold)
        if ch is not None:
            return ch
        tg = _text_gold(gold)
        if tg is not None:
            tp = re.sub(r"\s+", " ", unwrap_text(normalize(pred)).strip().lower()).strip(" .")
            return re.sub(r"\s+", " ", tp) == re.sub(r"\s+", " ", tg).strip(" .")
        return equal(pred, gold)
    finally:
        _STATE.deadline = float("inf")
