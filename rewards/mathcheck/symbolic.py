"""Sympy equivalence of two scalar LaTeX answers. Runs only inside the worker process (worker.py), where a
runaway computation can be killed; nothing here bounds its own time."""

from __future__ import annotations

import random
import re

import sympy as sp
from sympy.core.relational import Relational
from latex2sympy2_extended.latex2sympy2 import latex2sympy

_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])")
_BIG = 10 ** 4  # exponents / factorial arguments above this are compared by structure only
_I = sp.Symbol("i")


def _exact_decimals(s: str) -> str:
    """1.25 -> (125/100) before parsing, so decimals stay exact rationals (no float rounding can match pi)."""
    return _DECIMAL.sub(lambda m: "(\\frac{%s}{1%s})" % (m.group(1) + m.group(2), "0" * len(m.group(2))), s)


_PRIMED = re.compile(r"([A-Za-z])('+)")


def _primes_as_names(s: str) -> str:
    """f' -> f_{prime1}: the parser drops primes (f' would be f), so a primed name becomes its own symbol."""
    return _PRIMED.sub(lambda m: "%s_{prime%d}" % (m.group(1), len(m.group(2))), s)


def parse(s: str) -> sp.Basic:
    expr = latex2sympy(_exact_decimals(_primes_as_names(s) if "'" in s else s))
    if isinstance(expr, sp.Basic) and expr.has(_I):
        expr = expr.subs(_I, sp.I)
    return expr


def explosive(expr: sp.Basic) -> bool:
    """True when evaluating expr could take unbounded time or memory (10^{10^{10}}, 1000000!)."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Pow):
            e = node.exp
            if e.is_Number and abs(e) > _BIG:
                return True
            if e.has(sp.Pow) and e.free_symbols == set():
                return True
        elif isinstance(node, (sp.Sum, sp.Product)):
            for lim in node.limits:
                if any(not b.is_Number or abs(b) > _BIG for b in lim[1:]):
                    return True
        elif isinstance(node, (sp.factorial, sp.factorial2, sp.gamma, sp.binomial)):
            a = node.args[0]
            if a.is_Number and abs(a) > _BIG:
                return True
            if not a.is_Number and not a.free_symbols:
                return True
    return False


def _num_close(a: sp.Expr, b: sp.Expr, digits: int) -> bool | None:
    """Numeric comparison at `digits` precision; None when evaluation does not give numbers."""
    try:
        va, vb = sp.N(a, digits), sp.N(b, digits)
    except (TypeError, ValueError, ArithmeticError):
        return None
    if not (va.is_number and vb.is_number):
        return None
    if not (va.is_finite and vb.is_finite):
        return va == vb  # oo - (-oo) is oo, and oo <= oo * tol would say "close"
    if va == vb:
        return True
    # Relative to the values themselves (not to 1): 1/2004! and 1/2006! are both ~0 yet different.
    # mpmath floats keep tiny magnitudes that Python floats would flush to zero.
    try:
        diff = abs(va - vb)
        scale = max(abs(va), abs(vb))
        return bool(diff <= scale * sp.Float(10, digits) ** (-(digits - 10)))
    except (TypeError, ValueError, OverflowError):
        return None


def expr_equal(a: sp.Basic, b: sp.Basic) -> bool:
    if a == b:
        return True
    if isinstance(a, sp.MatrixBase) or isinstance(b, sp.MatrixBase):
        if not (isinstance(a, sp.MatrixBase) and isinstance(b, sp.MatrixBase)) or a.shape != b.shape:
            return False
        return all(expr_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, sp.Set) or isinstance(b, sp.Set):
        if not (isinstance(a, sp.Set) and isinstance(b, sp.Set)):
            return False
        try:
            return bool(sp.simplify(a.symmetric_difference(b)) == sp.EmptySet)
        except (TypeError, ValueError, AttributeError):
            return False
    if isinstance(a, Relational) or isinstance(b, Relational):
        if not (isinstance(a, Relational) and isinstance(b, Relational)):
            return False
        if isinstance(a, sp.Equality) or isinstance(b, sp.Equality) or isinstance(a, sp.Unequality) \
                or isinstance(b, sp.Unequality):
            if type(a) is not type(b):
                return False
            da, db = a.lhs - a.rhs, b.lhs - b.rhs
            return expr_equal(da, db) or expr_equal(da, -db) or _proportional(da, db)
        # Inequalities as "d < 0" / "d <= 0": same strictness, d's a positive multiple of each other.
        sa, fa = _as_negative(a)
        sb, fb = _as_negative(b)
        if sa != sb:
            return False
        return expr_equal(fa, fb) or _proportional(fa, fb, positive=True)
    if not (isinstance(a, sp.Expr) and isinstance(b, sp.Expr)):
        return False
    if explosive(a) or explosive(b):
        return False
    syms = a.free_symbols | b.free_symbols
    if not syms:
        if a.is_Rational and b.is_Rational:
            return False  # exact values that differ (2^{2023}+1 is not 2^{2023}-1: no tolerance on integers)
        close = _num_close(a, b, 40)
        if close is False and not (a.is_zero or b.is_zero):
            return False  # (a value against an exact 0 falls through to simplify: evalf noise is not a value)
        if close and _num_close(a, b, 120):
            return _close_at_scale(a, b)
        try:
            return sp.simplify(a - b) == 0
        except (TypeError, ValueError, ArithmeticError):
            return False
    d = a - b
    try:
        if sp.expand(d) == 0:
            return True
    except (TypeError, ValueError, ArithmeticError):
        return False
    # Identity on several random points (complex-safe, high precision) ~ equal as functions.
    rng = random.Random(0)
    ok = 0
    for _ in range(4):
        point = {s: sp.Rational(rng.randint(1, 97), rng.randint(2, 29)) for s in syms}
        try:
            close = _num_close(a.subs(point), b.subs(point), 60)
        except (TypeError, ValueError, ArithmeticError):
            close = None
        if close is False:
            return False
        if close:
            ok += 1
    if ok >= 3:
        return True
    try:
        return sp.simplify(d) == 0
    except (TypeError, ValueError, ArithmeticError):
        return False


_MAX_SCALE_DIGITS = 5000


def _close_at_scale(a: sp.Expr, b: sp.Expr) -> bool:
    """Values that agree to 120 significant digits: for a huge value (2^{2023}+\\sqrt2 against 2^{2023}) that is
    not equality; compare again with digits enough to see the units place (up to 5000 digits, else simplify)."""
    try:
        mag = abs(sp.N(a, 15))
        if not (mag.is_number and mag.is_finite) or mag < sp.Float("1e100"):
            return True
        digits = int(sp.log(mag, 10)) + 40
    except (TypeError, ValueError, ArithmeticError):
        return False
    if digits <= _MAX_SCALE_DIGITS:
        return bool(_num_close(a, b, digits))
    try:
        return sp.simplify(a - b) == 0
    except (TypeError, ValueError, ArithmeticError):
        return False


def _as_negative(r: Relational) -> tuple[bool, sp.Expr]:
    """(strict, d) with r equivalent to d < 0 (strict) or d <= 0."""
    if isinstance(r, (sp.StrictLessThan, sp.LessThan)):
        return isinstance(r, sp.StrictLessThan), r.lhs - r.rhs
    return isinstance(r, sp.StrictGreaterThan), r.rhs - r.lhs


def _proportional(da: sp.Expr, db: sp.Expr, positive: bool = False) -> bool:
    try:
        r = sp.simplify(da / db)
    except (TypeError, ValueError, ArithmeticError, ZeroDivisionError):
        return False
    if positive:
        return bool(r.is_number and r.is_positive and r.is_finite)
    return bool(r.is_number and r != 0 and r.is_finite)


def latex_equal(p: str, g: str) -> bool:
    try:
        a, b = parse(p), parse(g)
    except Exception:  # noqa: BLE001 - the parser raises many types on a model's malformed LaTeX
        return False
    try:
        return expr_equal(a, b)
    except Exception:  # noqa: BLE001 - sympy raises many types on odd expressions; a bad answer is just wrong
        return False


def latex_close(p: str, g: str, tol: str) -> bool:
    """|value(p) - value(g)| <= tol, for a constant prediction against a gold written as a rounded decimal."""
    try:
        a, b = parse(p), parse(g)
        if not (isinstance(a, sp.Expr) and isinstance(b, sp.Expr)) or a.free_symbols or b.free_symbols:
            return False
        if explosive(a) or explosive(b):
            return False
        va = sp.N(a, 30)
        if not va.is_real:
            return False
        return bool(abs(va - b) <= sp.Rational(tol))
    except Exception:  # noqa: BLE001 - sympy raises many types on odd expressions; a bad answer is just wrong
        return False
