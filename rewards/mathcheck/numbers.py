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
    p_alts = {pv, pv / 100} if p_pct else {pv}
    g_alts = {gv, gv / 100} if g_pct else {gv}
    if p_alts & g_alts:
        return True
    if gn.decimals and pn.decimals is None and not p_pct and not g_pct:
        return abs(pv - gv) <= Fraction(1, 10 ** gn.decimals) / 2
    return False
