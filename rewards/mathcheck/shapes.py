"""Answer shapes that are not scalars: intervals (and the inequalities that denote them) and matrices.

Pure string functions on normalised answers."""

from __future__ import annotations

import re

from rewards.mathcheck.lists import enclosed

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


def matrix(s: str) -> list[list[str]] | None:
    """Cells of a pmatrix/bmatrix/array (rows of cells), or None when s is not one."""
    if (enclosed(s, "(", ")") or enclosed(s, "[", "]")) and s[1:].startswith("\\begin"):
        s = s[1:-1]  # \left[\begin{array}..\end{array}\right]
    m = re.fullmatch(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", s, re.S)
    if not m:
        return None
    rows = [r for r in m.group(2).split("\\\\")]
    rows = [r for r in rows if r.strip()]
    return [[c.strip() for c in r.split("&")] for r in rows]
