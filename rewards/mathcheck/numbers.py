"""Exact parsing of plain numbers (the cheap path): integers, decimals, fractions, mixed numbers, scientific
notation, repeating decimals. Values are Fractions, so 0.1 + 0.2 style rounding never enters a comparison."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_MAX_DIGITS = 4000   # Python refuses int() of longer strings; longer numbers go to the string comparison
_MAX_EXP = 400       # 1e400 as an exact Fraction is fine; 10^{10^{10}} is not a "plain number"

_INT = r"\d+"
_DEC = r"(?:\d+\.\d*|\.\d+|\d+)"
_RE_PLAIN = re.compile(rf"([+-]?)({_DEC})")
_RE_THOUSANDS = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+)(\.\d+)?")
_RE_SCI_E = re.compile(rf"([+-]?)({_DEC})[eE]([+-]?\d+)")
_RE_SCI_TEX = re.compile(rf"([+-]?)(?:({_DEC})(?:\\times|\\cdot|\*|x)\s*)?10\^(?:\{{([+-]?\d+)\}}|([+-]?\d))")
_RE_FRAC = re.compile(rf"([+-]?)\\frac\{{([+-]?{_DEC})\}}\{{([+-]?{_DEC})\}}")
_RE_SLASH = re.compile(rf"([+-]?)\(?([+-]?{_DEC})\)?/\(?([+-]?{_DEC})\)?")
_RE_MIXED = re.compile(rf"([+-]?)({_INT})(?:\\frac\{{({_INT})\}}\{{({_INT})\}}| ({_INT})/({_INT}))")
_RE_REPEAT = re.compile(r"([+-]?)(\d*)\.(\d*)\\overline\{(\d+)\}")


@dataclass(frozen=True)
class Num:
    value: Fraction
    decimals: int | None = None  # digits after the point when written as a plain decimal, else None


def _dec(text: str) -> Fraction:
    if len(text) > _MAX_DIGITS:
        raise ValueError("too long")
    return Fraction(text)


def parse_number(s: str, thousands: bool = True) -> Num | None:
    """The exact value of a normalised answer that is a plain number, else None."""
    s = s.strip()
    if not s or len(s) > _MAX_DIGITS:
        return None
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    if s.startswith("(") and s.endswith(")") and "," not in s:
        s = s[1:-1]
    try:
        m = _RE_PLAIN.fullmatch(s)
        if m:
            v = _dec(m.group(2))
            v = -v if m.group(1) == "-" else v
            dec = len(m.group(2).split(".")[1]) if "." in m.group(2) else None
            return Num(v, dec)
        if thousands:
            m = _RE_THOUSANDS.fullmatch(s)
            if m:
                v = _dec(m.group(2).replace(",", "").replace(" ", "") + (m.group(3) or ""))
                return Num(-v if m.group(1) == "-" else v, len(m.group(3)) - 1 if m.group(3) else None)
        m = _RE_SCI_E.fullmatch(s) or None
        if m:
            e = int(m.group(3))
            if abs(e) > _MAX_EXP:
                return None
            v = _dec(m.group(2)) * Fraction(10) ** e
            return Num(-v if m.group(1) == "-" else v)
        m = _RE_SCI_TEX.fullmatch(s)
        if m:
            e = int(m.group(3) or m.group(4))
            if abs(e) > _MAX_EXP:
                return None
            v = (_dec(m.group(2)) if m.group(2) else Fraction(1)) * Fraction(10) ** e
            return Num(-v if m.group(1) == "-" else v)
        m = _RE_FRAC.fullmatch(s) or _RE_SLASH.fullmatch(s)
        if m:
            den = _dec(m.group(3))
            if den == 0:
                return None
            v = _dec(m.group(2)) / den
            return Num(-v if m.group(1) == "-" else v)
        m = _RE_MIXED.fullmatch(s)
        if m:
            a, b = (m.group(3), m.group(4)) if m.group(3) else (m.group(5), m.group(6))
            if int(b) == 0:
                return None
            v = int(m.group(2)) + Fraction(int(a), int(b))
            return Num(-v if m.group(1) == "-" else v)
        m = _RE_REPEAT.fullmatch(s)
        if m:
            whole, fixed, rep = m.group(2) or "0", m.group(3), m.group(4)
            v = Fraction(int(whole)) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
            v += Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
            return Num(-v if m.group(1) == "-" else v)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


# Decimal comma rule: "1,22" / "1000,99" / "-0,5" is read as a decimal (1.22) only when it is one comma between
# digit runs, no spaces, and the digits after the comma are not exactly three (then "1,234" is a thousands group,
# one thousand two hundred thirty-four). The comparison uses this reading only against a single number (a
# comma between numbers is otherwise a list separator: "-2,1" is the list of -2 and 1).
_RE_DEC_COMMA = re.compile(r"([+-]?)(\d+),(\d{1,2}|\d{4,})")


def decimal_comma(s: str) -> Num | None:
    """The value of a number written with a decimal comma, else None."""
    m = _RE_DEC_COMMA.fullmatch(s.strip())
    if not m or len(s) > _MAX_DIGITS:
        return None
    v = Fraction(f"{m.group(2)}.{m.group(3)}")
    return Num(-v if m.group(1) == "-" else v, len(m.group(3)))


def num_equal(pn: Num, gn: Num, p_pct: bool, g_pct: bool) -> bool:
    """Exact equality of two plain numbers, with percent read either way on the side that has it.

    Rounding: a gold written as a rounded decimal (3.14) accepts an exact prediction that rounds to it; a
    prediction that is a rounded decimal (4.67, 0.33) never equals an exact gold (14/3, 1/3): a rounded value
    is right only where the problem asks for one, and then the gold is written rounded too."""
    pv, gv = pn.value, gn.value
    # x% may be read as x or as x/100, never as 100x; a plain integer gold above 1 is a count or the percent
    # number itself, never the fraction a percent expresses (4000% is not 40; 25% is 0.25 and 25; 100% is 1).
    if p_pct and g_pct:
        return pv == gv
    if g_pct and pv in (gv, gv / 100):
        return True
    if p_pct and (gv == pv or (gv == pv / 100 and (gv.denominator != 1 or abs(gv) <= 1))):
        return True
    if not p_pct and not g_pct and pv == gv:
        return True
    if gn.decimals and pn.decimals is None and not p_pct and not g_pct:
        return abs(pv - gv) <= Fraction(1, 10 ** gn.decimals) / 2
    return False


# Exact arithmetic on plain numbers ("5+5+1", "2^{2023}-1", "(3\\cdot 4)^2", "\\frac{7}{2}-1"): Fractions with a digit
# cap, so huge integers compare exactly (never with a float tolerance) in bounded time.
_MAX_NESTING = 60    # levels of brackets and \\frac; more is not a plain number (and nears the stack's limit)
_MAX_BITS = 40_000   # about 12,000 digits per intermediate value; larger goes to sympy's structural comparison
_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?|\\frac|\\cdot|\\times|\\div|[-+*/^(){}])")


class Indeterminate(ValueError):
    """0^0, 0/0: an undefined form equals nothing."""


def exact_value(s: str) -> Fraction | None:
    """The exact value of an arithmetic expression of plain numbers, None when s is anything else (or too big).
    Raises Indeterminate for 0^0 and 0/0."""
    if len(s) > 300 or not s or not re.fullmatch(r"[\d.\s+\-*/^(){}\\fractimesdiv]+", s):
        return None
    toks, pos = [], 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m:
            return None
        toks.append(m.group(1))
        pos = m.end()
        if pos < len(s) and not s[pos:].strip():
            break
    if not toks or all(t in "+-" for t in toks) or not any(t[0].isdigit() for t in toks):
        return None
    if _nesting(toks) > _MAX_NESTING:
        return None  # not a plain number a model writes; the recursive descent below stays far from the limit
    try:
        val, k = _expr(toks, 0)
    except Indeterminate:
        raise
    except (ValueError, ZeroDivisionError, OverflowError, IndexError):
        return None
    return val if k == len(toks) else None


def _expr(t: list[str], k: int) -> tuple[Fraction, int]:
    v, k = _term(t, k)
    while k < len(t) and t[k] in "+-":
        w, k2 = _term(t, k + 1)
        v, k = (v + w if t[k] == "+" else v - w), k2
    return v, k


def _term(t: list[str], k: int) -> tuple[Fraction, int]:
    v, k = _unary(t, k)
    while k < len(t) and (t[k] in ("*", "/", "\\cdot", "\\times", "\\div") or t[k] == "("):
        op = t[k] if t[k] != "(" else "*"  # 2(3+4); "3\\frac12" is a mixed number, not a product: left alone
        w, k = _unary(t, k + (1 if t[k] != "(" else 0))
        if op in ("/", "\\div"):
            if w == 0:
                if v == 0:
                    raise Indeterminate("0/0")
                raise ZeroDivisionError
            v = v / w
        else:
            v = v * w
        _check(v)
    return v, k


def _unary(t: list[str], k: int) -> tuple[Fraction, int]:
    negative = False
    while t[k] in "+-":  # a loop, not a call per sign: "-+-+...1" costs no stack
        negative ^= t[k] == "-"
        k += 1
    v, k = _power(t, k)
    return (-v if negative else v), k


def _nesting(t: list[str]) -> int:
    """An upper bound on how deep the recursive descent goes for tokens t, in levels of _expr -> _atom (a few
    frames each): an open bracket is a level until it closes; a \\frac (whose operands are atoms parsed within
    it) is counted as a level to the end, as where its operands end is known only to the parse."""
    deepest = depth = 0
    for tok in t:
        if tok in ("(", "{", "\\frac"):
            depth += 1
        elif tok in (")", "}"):
            depth = max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def _power(t: list[str], k: int) -> tuple[Fraction, int]:
    base, k = _atom(t, k)
    if k < len(t) and t[k] == "^":
        if t[k + 1] in ("{", "("):
            e, k = _atom(t, k + 1)
        else:  # ^2 (one digit in LaTeX: ^12 is ^1 then 2)
            if not t[k + 1][0].isdigit():
                raise ValueError
            e, k = Fraction(int(t[k + 1][0])), k + 2
            if len(t[k - 1]) > 1:
                raise ValueError  # 2^12 written bare: ambiguous, leave it to sympy
        if e.denominator != 1:
            raise ValueError
        if base == 0 and e == 0:
            raise Indeterminate("0^0")
        bits = max(abs(base.numerator).bit_length(), abs(base.denominator).bit_length())
        if abs(e) * bits > _MAX_BITS:
            raise OverflowError
        if base == 0 and e < 0:
            raise ZeroDivisionError
        return base ** int(e), k
    return base, k


def _atom(t: list[str], k: int) -> tuple[Fraction, int]:
    tok = t[k]
    if tok in ("(", "{"):
        v, k = _expr(t, k + 1)
        if t[k] != (")" if tok == "(" else "}"):
            raise ValueError
        return v, k + 1
    if tok == "\\frac":
        a, k = _atom(t, k + 1)
        b, k = _atom(t, k)
        if b == 0:
            if a == 0:
                raise Indeterminate("0/0")
            raise ZeroDivisionError
        return a / b, k
    if tok[0].isdigit():
        if len(tok) > _MAX_DIGITS:
            raise OverflowError
        return Fraction(tok), k + 1
    raise ValueError


def _check(v: Fraction) -> None:
    if v.numerator.bit_length() > _MAX_BITS or v.denominator.bit_length() > _MAX_BITS:
        raise OverflowError
