"""Comparison policy: is a predicted answer the same answer as the gold one?

Order of work: cheap exact paths first (normalised strings, exact rational numbers, structure), sympy in the
worker process only when they cannot decide. Everything shares one deadline; past it the answer is "not equal".

Policy (see /work/helper_notes/math_readme.md for the user-facing list):
- numbers are compared exactly (0.5 == 1/2 == 50%); a decimal never equals an irrational or a non-terminating
  rational (4.67 is not 14/3); a gold written as a rounded decimal (3.14) accepts an exact prediction that
  rounds to it.
- structure must match: tuple vs tuple in order, sets and lists in any order and of the same length (lists.py),
  intervals with the same bracket kinds, matrices of the same shape.
- a label on one side is dropped ("x = 5", "(p,q) = (3,2)", "|AB| = 1" answer 5, (3,2), 1); every side of a
  chained equality must equal the gold ("6 = 5" is wrong); "a \\approx b" is judged by b.
- an inequality, a hedge ("5 or 6" against one value), a prime that the other side lacks (f' is not f), or
  words absent from the gold make a prediction wrong.
"""

from __future__ import annotations

import re
import threading
import time
from fractions import Fraction

from rewards.mathcheck.lists import (as_list, enclosed, is_label, is_tuple, match_unordered, set_items, split_label,
                                     split_top)
from rewards.mathcheck.normalize import normalize, strip_degrees, strip_units, unwrap_text
from rewards.mathcheck.numbers import Indeterminate, Num, decimal_comma, exact_value, num_equal, parse_number
from rewards.mathcheck.shapes import as_interval, matrix
from rewards.mathcheck.worker import POOL

_STATE = threading.local()
_SYMPY_MAX_LEN = 400
_MAX_DEPTH = 60
_MAX_NESTING = 30  # equal() within equal(): a real answer's structure (a set of tuples of lists...) is a few deep
_MAX_RESTATED = 3  # "\boxed{15\frac{39}{40}}, or \boxed{\frac{639}{40}}": a few forms of one answer, not a list

_CHOICE_GOLD = re.compile(r"\(?([A-Ea-e])\)?")
_CHOICE_PRED = re.compile(r"\(?([A-E])\)?(?:(?=[\s.:),;])(.*))?", re.S)
_OTHER_CHOICE = re.compile(r"\(([A-E])\)|(?:\bor\b|\band\b|,|/)\s*\(?([A-E])\)?(?![A-Za-z])")
_WORDS = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_BASE = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?")
_INT_STR = re.compile(r"-?\d+")
_REL = re.compile(r"\\leq|\\geq|\\neq|<|>|\\ne\b|\\approx|\\lt|\\gt")
_UNDEFINED = re.compile(r"(?<![\d.])0\^\{?0\}?(?![\d.])|\\frac\{0\}\{0\}|(?<![\d.])0/0(?![\d.])|\\infty-\\infty|"
                        r"\\frac\{\\infty\}\{\\infty\}|\\infty/\\infty|(?<![\d.])0(?:\\cdot|\\times)?\\infty|"
                        r"\\infty(?:\\cdot|\\times)0(?![\d.])|(?<![\d.])1\^\{?\\infty\}?|\\infty\^\{?0\}?(?![\d.])")
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


def _percent(s: str) -> tuple[str, bool]:
    t = s.replace("\\%", "").replace("%", "")
    t = re.sub(r"\\text\{\s*(?:percent|percentage|pct)\s*\}|\b(?:percentage|percent|pct)\b", "", t).strip()
    return t, t != s


def _clean_scalar(s: str) -> tuple[str, bool]:
    s, _ = strip_degrees(s)
    s, pct = _percent(s)
    s = strip_units(s)
    s = unwrap_text(s)
    return normalize(s), pct


def _letters_ok(pred: str, gold: str) -> bool:
    """Words in the prediction that the gold lacks ('or', 'approximately', injected text) make it wrong."""
    gold_letters = set(re.sub(r"\\[a-zA-Z]+", "", gold))
    for w in _WORDS.findall(pred):
        if w not in gold and not set(w) <= gold_letters:
            return False
    return True


def _sympy(p: str, g: str, tol: str | None = None) -> bool:
    deadline = getattr(_STATE, "deadline", time.monotonic() + 0.8)
    verdict = POOL.equal(p, g, deadline, tol=tol)
    # The worker's first start in this process (lazy, on first use) is not the model's time: move the deadline.
    waited = POOL.take_boot_wait()
    if waited and hasattr(_STATE, "deadline"):
        _STATE.deadline += waited
    return bool(verdict)


def scalar_equal(pred: str, gold: str) -> bool:
    if _deadline_passed():
        return False
    if pred == gold:
        return True
    p, p_pct = _clean_scalar(pred)
    g, g_pct = _clean_scalar(gold)
    if not p or not g:
        return False
    if p.count("'") != g.count("'"):
        return False  # f' is not f, A' is not A
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
    if _UNDEFINED.search(p) and not _UNDEFINED.search(g):
        return False  # 0^0, 0/0, \\infty-\\infty: an undefined form equals nothing (sympy would call 0^0 one)
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None and gn is not None:
        return num_equal(pn, gn, p_pct, g_pct)
    if pn is None or gn is None:
        # Arithmetic on plain numbers, exactly at any size ("2^{2023}-1", "5+5+1"): no float tolerance.
        try:
            pe = pn.value if pn is not None else exact_value(p)
            ge = gn.value if gn is not None else exact_value(g)
        except Indeterminate:
            return False
        if pe is not None and ge is not None:
            return num_equal(pn or Num(pe), gn or Num(ge), p_pct, g_pct)
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
    if gn is not None and gn.decimals and not p_pct and not g_pct:
        # Gold is a rounded decimal (3.14): an exact constant (\pi) that rounds to it is right.
        return _sympy(p, g, tol=str(Fraction(1, 2 * 10 ** gn.decimals)))
    return _sympy(p, g)


def _chain(s: str) -> list[str]:
    """'x = 2+3 = 5' -> ['2+3', '5']; '6 = 5' -> ['6', '5'] (all must match the gold)."""
    parts = split_top(s, ("=",))
    while len(parts) > 1 and is_label(parts[0], loose=True) and not parse_number(parts[0]):
        parts = parts[1:]
    return parts


def _ungroup(s: str) -> str:
    """'{1,3}' is LaTeX grouping around '1,3', not a set (a set is written \\{..\\})."""
    for _ in range(4):  # each layer costs a scan; deeper grouping is left to the depth guard
        if not (enclosed(s, "{", "}") and not s.startswith("\\")):
            break
        s = s[1:-1].strip()
    return s


def _decimal_comma_equal(p: str, g: str) -> bool | None:
    """The decimal-comma reading (numbers.decimal_comma) against a single number; None where it does not apply."""
    pc, gc = decimal_comma(p), decimal_comma(g)
    if pc is not None and gc is None:
        gn = parse_number(g)
        if gn is not None and gn.value.denominator != 1:  # a non-integer gold: "1,5" is not the list 1, 5
            return num_equal(pc, gn, False, False)
    if gc is not None and pc is None:
        pn = parse_number(p)
        if pn is not None and pn.decimals:  # the prediction wrote a decimal point: the gold means a decimal
            return pn.value == gc.value
    return None


_SEMI_TUPLE = re.compile(r"([(\[])([^()\[\]{};,]*(?:;[^()\[\]{};,]*)+)([)\]])")


def _semicolons(s: str) -> str:
    """'(1;2)' is the tuple (1,2); 'p=5,q=2; p=7,q=2' (solutions, each a list of assignments with the same labels
    in the same order) is the list of tuples (5,2), (7,2)."""
    s = _SEMI_TUPLE.sub(lambda m: m.group(1) + m.group(2).replace(";", ",") + m.group(3), s)
    parts = split_top(s, (";",))
    if len(parts) < 2:
        return s
    labels, tuples = None, []
    for part in parts:
        items = [split_top(x, ("=",)) for x in split_top(part, (",",))]
        if len(items) < 2 or any(len(x) != 2 or not x[1] or not is_label(x[0]) for x in items):
            return s
        names = [x[0] for x in items]
        if labels is not None and names != labels:
            return s
        labels = names
        tuples.append("(" + ",".join(x[1] for x in items) + ")")
    return ",".join(tuples)


_MATRIX_BLOCK = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?.*?\\end\{\1\}", re.S)


def matrix_expr(s: str) -> list[list[str]] | None:
    """The cells of a sum/difference/product of matrices with optional scalar factors, written out unevaluated
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}+\\begin{pmatrix}3\\\\4\\end{pmatrix}"); None for anything else.
    Cells are exact numbers where they all are, else expression strings the comparison hands to sympy."""
    if len(s) > 4000:
        return None
    terms: list[tuple[str, str]] = []
    for plus in split_top(s, ("+",)):
        for k, piece in enumerate(split_top(plus, ("-",))):
            if piece or k:
                terms.append(("-" if k else "", piece))
    total: list[list[str]] | None = None
    for sign, term in terms:
        mats, pos, scalar = [], 0, None
        for m in _MATRIX_BLOCK.finditer(term):
            between = term[pos:m.start()].strip()
            if not mats:
                scalar = re.sub(r"(?:\\cdot|\\times)$", "", between).strip() or None
            elif between not in ("", "\\cdot", "\\times"):
                return None
            cells = matrix(m.group(0))
            if cells is None or any(len(r) != len(cells[0]) for r in cells):
                return None
            mats.append(cells)
            pos = m.end()
        if not mats or term[pos:].strip():
            return None
        acc = mats[0]
        for b in mats[1:]:
            if len(acc[0]) != len(b):
                return None
            acc = [[_cell_sum([_cell_mul(acc[i][k], b[k][j]) for k in range(len(b))]) for j in range(len(b[0]))]
                   for i in range(len(acc))]
        if scalar or sign:
            factor = (sign + "1") if not scalar else (sign + "(" + scalar + ")" if sign else scalar)
            acc = [[_cell_mul(factor, c) for c in row] for row in acc]
        if total is None:
            total = acc
        elif len(total) != len(acc) or len(total[0]) != len(acc[0]):
            return None
        else:
            total = [[_cell_sum([a, b]) for a, b in zip(ra, rb)] for ra, rb in zip(total, acc)]
    return total


def _cell_value(c: str) -> Fraction | None:
    n = parse_number(c)
    return n.value if n is not None else None


def _render(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else "\\frac{%d}{%d}" % (v.numerator, v.denominator) \
        if v >= 0 else "-\\frac{%d}{%d}" % (-v.numerator, v.denominator)


def _cell_mul(a: str, b: str) -> str:
    va, vb = _cell_value(a), _cell_value(b)
    if va is not None and vb is not None:
        return _render(va * vb)
    return "(%s)\\cdot(%s)" % (a, b)


def _cell_sum(cells: list[str]) -> str:
    vals = [_cell_value(c) for c in cells]
    if all(v is not None for v in vals):
        return _render(sum(vals, Fraction(0)))
    return "+".join("(%s)" % c for c in cells)


def _matrix_equal(p: str, g: str, pm_: list[list[str]] | None, gm_: list[list[str]] | None) -> bool:
    if gm_ is None or pm_ is None:
        other, mat = (p, gm_) if gm_ is not None else (g, pm_)
        flat = [c for row in mat for c in row]
        if len(mat) != 1 and any(len(r) != 1 for r in mat):
            return False
        if enclosed(other, "(", ")") or enclosed(other, "[", "]"):
            items = split_top(other[1:-1], (","))
            return len(items) == len(flat) and all(
                equal(a, b) if gm_ is not None else equal(b, a) for a, b in zip(items, flat))
        return False
    if len(pm_) != len(gm_) or any(len(a) != len(b) for a, b in zip(pm_, gm_)):
        return False
    return all(a == b or equal(a, b) for ra, rb in zip(pm_, gm_) for a, b in zip(ra, rb))


def _approx_equal(p: str, g: str) -> bool:
    """'x \\approx 4.67': the value after \\approx is the answer; 'exact \\approx rounded' is also right when the
    exact part equals the gold and the rounding is correct (14/3 \\approx 4.67 for 14/3)."""
    parts = split_top(p, ("\\approx",))
    if len(parts) < 2 or not all(parts):
        return False
    if equal(parts[-1], g):
        return True
    first = split_label(parts[0], loose=True)[1]
    return len(parts) == 2 and "=" not in first and scalar_equal(first, parts[-1]) and equal(first, g)


def equal(pred: str, gold: str) -> bool:
    """Structural comparison; scalars go to scalar_equal. It calls itself on the parts of a structure (items,
    sides, pieces), each a part of its caller's: the nesting is bounded here so that no input, however it is
    written, can take it past Python's recursion limit."""
    depth = getattr(_STATE, "nesting", 0)
    if _deadline_passed() or depth >= _MAX_NESTING:
        return False
    _STATE.nesting = depth + 1
    try:
        return _equal(pred, gold)
    finally:
        _STATE.nesting = depth


def _equal(pred: str, gold: str) -> bool:
    p, g = _ungroup(normalize(pred)), _ungroup(normalize(gold))
    if ";" in p or ";" in g:
        p, g = _semicolons(p), _semicolons(g)
    if "\\approx" in p and "\\approx" not in g:
        return _approx_equal(p, g)
    if _REL.search(p) and _REL.search(g):
        pi, gi = as_interval(p), as_interval(g)
        if _REL.search(pi) or _REL.search(gi):
            return scalar_equal(p, g)  # relations sympy compares (5 \\geq x, -x > -1)
    # A label on one side only: the value is the answer ("(p,q)=(3,2)" for (3,2); (3,2) for "(p,q)=(3,2)").
    g_eq, p_eq = split_top(g, ("=",)), split_top(p, ("=",))
    if len(g_eq) == 1 and len(p_eq) == 2 and is_label(p_eq[0], loose=True) and p_eq[1]:
        p, p_eq = p_eq[1], [p_eq[1]]
    elif len(g_eq) == 2 and len(p_eq) == 1 and is_label(g_eq[0]) and g_eq[1]:
        g, g_eq = g_eq[1], [g_eq[1]]
    p, g = as_interval(p), as_interval(g)
    if not p or not g:
        return False
    if p == g:
        return True
    dc = _decimal_comma_equal(p, g)
    if dc is not None:
        return dc
    gm_ = matrix(g)
    pm_ = matrix_expr(p) if gm_ is not None and p.count("\\begin") > 1 else None  # unevaluated matrix sum/product
    pm_ = pm_ if pm_ is not None else matrix(p)
    if gm_ is not None or pm_ is not None:
        return _matrix_equal(p, g, pm_, gm_)
    # A list gold ("1, 2", "x=1, y=2", "1 \\pm \\sqrt{2}"): same items in any order; "1,000" stays a number.
    gl = as_list(g) if parse_number(g) is None else None
    if gl is not None:
        pl = set_items(p) or as_list(p)
        if pl is None and is_tuple(p) and enclosed(p, "(", ")"):
            # The point (2,3) for "x=2, y=3" / "2, 3": a tuple is ordered, so item by item.
            pi = split_top(p[1:-1], (",",))
            return len(pi) == len(gl) and all(equal(a, b) for a, b in zip(pi, gl))
        return pl is not None and match_unordered(pl, gl, equal)
    if len(g_eq) == 2 and len(p_eq) == 2:
        if g_eq[0] == p_eq[0] and is_label(g_eq[0], loose=True):
            return equal(p_eq[1], g_eq[1])
        one_letter = r"[a-zA-Z](?:_\{?\w+\}?)?"
        if re.fullmatch(one_letter, g_eq[0]) and re.fullmatch(one_letter, p_eq[0]):
            return False  # x = 5 is not y = 5
        return scalar_equal(p, g)  # equations: sympy compares them as equations
    if len(g_eq) == 1 and len(p_eq) > 1 and not is_tuple(g):
        sides = _chain(p)
        return bool(sides) and all(equal(s, g) for s in sides)
    if len(g_eq) > 2:
        return scalar_equal(p, g)
    # Times and ratios (12:00, 3:4): part by part. A ":" only inside brackets ("(1:2)", "f(x:y)") splits neither
    # side: no ratio, so the checks below judge the whole (comparing the unsplit sides here recursed forever).
    gc = split_top(g, (":",)) if ":" in g else [g]
    pc = split_top(p, (":",)) if ":" in p else [p]
    if len(gc) > 1 or len(pc) > 1:
        if sorted((len(gc), len(pc))) == [1, 2]:
            # A ratio of two numbers against one number: 3:4 is 3/4.
            a, b = gc if len(gc) == 2 else pc
            other = p if len(gc) == 2 else g
            if parse_number(a) is not None and parse_number(b) is not None and parse_number(other) is not None:
                return equal("\\frac{%s}{%s}" % (a, b), other)
        return len(gc) == len(pc) and all(a == b or equal(a, b) for a, b in zip(pc, gc))
    # Unions of intervals/sets: same pieces in any order.
    g_u, p_u = split_top(g, ("\\cup",)), split_top(p, ("\\cup",))
    if len(g_u) > 1 and len(p_u) == 1:  # "x < -3 or x > 3" for (-\infty,-3)\cup(3,\infty)
        words = [as_interval(x) for x in as_list(p) or []] or \
            [as_interval(normalize(unwrap_text(x))) for x in _WORD_SEP.split(pred) if x and x.strip()]
        if len(words) > 1:
            p_u = words
    if len(g_u) > 1 or len(p_u) > 1:
        return match_unordered(p_u, g_u, equal)
    # Sets: any order; a set gold may be answered by a bare list ("1, 2 and 3").
    gs = set_items(g)
    if gs is not None:
        ps = set_items(p)
        if ps is None:
            ps = as_list(p)
        return ps is not None and match_unordered(ps, gs, equal)
    # Tuples and intervals: same brackets, in order.
    for o in "([":
        for c in ")]":
            if enclosed(g, o, c) and len(split_top(g[1:-1], (",",))) > 1:
                gi = split_top(g[1:-1], (",",))
                if enclosed(p, o, c):
                    pi = split_top(p[1:-1], (",",))
                elif o + c == "()" and "=" not in p and len(split_top(p, (",",))) == len(gi):
                    pi = split_top(p, (",",))  # the point (1,3) written bare or in grouping braces: 1,3
                else:  # "a = 2, b = 3" for the point (2,3): every item an assignment, in order
                    items = [split_top(x, ("=",)) for x in split_top(p, (",",))]
                    if len(items) < 2 or any(len(x) != 2 or not is_label(x[0], loose=True) for x in items):
                        return False
                    pi = [x[1] for x in items]
                return len(pi) == len(gi) and all(equal(a, b) for a, b in zip(pi, gi))
    if as_list(p) is not None:
        # A gold that is one number: "1,000" may be thousands; any other list is a hedge or a spray.
        return parse_number(strip_units(p)) is not None and scalar_equal(p, g)  # "10,080 meters" too
    if is_tuple(p) or enclosed(p, "\\{", "\\}"):
        return False
    return scalar_equal(p, g)


_CHOICE_VALUE_GOLD = re.compile(r"\(([A-E])\)\s*(\S.*)", re.S)
_NEGATED_CHOICE = re.compile(r"(?:\bnot|\brather than|\binstead of|\bexcept)\s+(?:option\s+|choice\s+)?\(?[A-E]\)?(?![A-Za-z])")
_CHOICE_WORD = re.compile(r"^(?:the\s+)?(?:option|choice|answer)\s*:?\s*", re.I)


def _choice_value(pred: str, gold: str) -> bool | None:
    """An AMC-style gold holding both the letter and the value ("\\textbf{(D) }18", "(D) Alina"): the letter, the
    value, or both together answer it. None when the gold is not of that form."""
    m = _CHOICE_VALUE_GOLD.fullmatch(unwrap_text(gold).strip())
    if not m:
        return None
    want, value = m.group(1), m.group(2).strip()
    p = _CHOICE_WORD.sub("", unwrap_text(pred).strip())
    lone = re.fullmatch(r"\(?([A-Ea-e])\)?[.:]?", p)
    if lone:
        return lone.group(1).upper() == want
    pm_ = re.fullmatch(r"\(([A-E])\)\s*(.*)|([A-E])[.):]\s*(.*)", p, re.S)
    if pm_:
        letter, rest = (pm_.group(1), pm_.group(2)) if pm_.group(1) else (pm_.group(3), pm_.group(4))
        return letter == want and (not rest.strip() or _equivalent(rest.strip(), value))
    return _equivalent(pred, value)


def _choice(pred: str, gold: str) -> bool | None:
    """Multiple choice: a gold that is one option letter. None when the gold is not one (or is a lower-case
    letter the prediction answers as math: e, the number)."""
    g = unwrap_text(gold).strip()
    m = _CHOICE_GOLD.fullmatch(g)
    if not m:
        return _choice_value(pred, gold)
    pred = _CHOICE_WORD.sub("", unwrap_text(pred).strip())
    if re.fullmatch(r"\(?[a-e]\)?", pred):
        pred = pred.upper()  # a lone (b) is option B
    pm_ = _CHOICE_PRED.fullmatch(pred)
    if not pm_:
        return None if m.group(1).islower() else False
    want = m.group(1).upper()
    if pm_.group(1) != want:
        return False
    # "(C) or (D)", "C, D": two options offered is a hedge.
    rest = _NEGATED_CHOICE.sub(" ", pm_.group(2) or "")  # "(B), not (A)": A is ruled out, not offered
    others = {x for hit in _OTHER_CHOICE.finditer(rest) for x in hit.groups() if x}
    return not (others - {want})


def _text_gold(gold: str) -> str | None:
    """A gold that is words (\\text{Monday}, 'odd'), lower-cased; None for a math gold."""
    g = normalize(gold)
    t = unwrap_text(g).strip().lower()
    if "\\text" in g or "\\mbox" in g or re.fullmatch(r"[a-z][a-z ,'-]{2,}", t):
        if re.fullmatch(r"[a-z][a-z ,.'-]*", t) and len(re.sub(r"[^a-z]", "", t)) >= 2:
            return t
    return None


def _equivalent(pred: str, gold: str) -> bool:
    ch = _choice(pred, gold)
    if ch is not None:
        return ch
    tg = _text_gold(gold)
    if tg is not None:
        tp = re.sub(r"\s+", " ", unwrap_text(normalize(pred)).strip().lower()).strip(" .")
        return re.sub(r"\s+", " ", tp) == re.sub(r"\s+", " ", tg).strip(" .")
    return equal(pred, gold)


def equivalent(pred: str, gold: str, budget_s: float = 0.75) -> bool:
    """pred and gold (answer strings, already extracted) denote the same answer."""
    _STATE.deadline = time.monotonic() + budget_s
    try:
        return _equivalent(pred, gold)
    finally:
        _STATE.deadline = float("inf")


def _plural(gold: str) -> bool:
    """The gold has several items (a list, a set, a tuple, a union): only then may several boxes answer it.
    A choice letter or a word never does ("\\boxed{(C)} or \\boxed{288\\pi}" is not (C))."""
    g = _ungroup(normalize(gold))
    if _choice("A", gold) is not None or _text_gold(gold) is not None:
        return False
    items = set_items(g) or as_list(g)
    return bool(items and len(items) > 1) or is_tuple(g) or len(split_top(g, ("\\cup",))) > 1


def judge(items: list[str], hedge: bool, gold_items: list[str], budget_s: float = 0.75) -> bool:
    """The verdict on a completion's final answer (extract.final_answer) against a gold's answer items.

    Several items (boxes that together state the answer): right when each is a restatement of the gold
    (15 39/40 and 639/40), else they are one list compared with the gold as a list; an offered alternative
    (hedge: "\\boxed{6} or maybe \\boxed{5}") is never a list. Several gold items are one list gold unless
    they restate one answer."""
    _STATE.deadline = time.monotonic() + budget_s
    try:
        gold = gold_items[-1]
        if len(gold_items) > 1 and not all(_equivalent(g, gold) for g in gold_items[:-1]):
            gold = ", ".join(gold_items)
        if len(items) == 1:
            return _equivalent(items[0], gold)
        if len(items) <= _MAX_RESTATED and all(_equivalent(x, gold) for x in reversed(items)):
            return True
        return not hedge and _plural(gold) and _equivalent(", ".join(items), gold)
    finally:
        _STATE.deadline = float("inf")
