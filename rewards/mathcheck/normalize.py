"""String normalisation of LaTeX answers: presentation is dropped, meaning is kept.

Only rewrites that can never change a value live here (spacing, \\left/\\right, \\dfrac, delimiters, degree
signs, currency signs). Units and percent are decided by the comparison, which knows both sides.
"""

from __future__ import annotations

import re

_DROP = [
    "\\left", "\\right", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\big", "\\Big",
    "\\displaystyle", "\\textstyle", "\\!", "\\,", "\\;", "\\:", "\\>", "\\quad", "\\qquad", "~",
    "\\$", "$", "\\mathrm{ }", "{,}",
]
_RENAME = [("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"), ("\\le ", "\\leq "),
           ("\\ge ", "\\geq "), ("\\leqslant", "\\leq"), ("\\geqslant", "\\geq"), ("\\ne ", "\\neq "),
           ("\\lbrack", "["), ("\\rbrack", "]"), ("\\lbrace", "\\{"), ("\\rbrace", "\\}"),
           ("\\emptyset", "\\varnothing"), ("\\lvert", "|"), (">=", "\\geq "), ("<=", "\\leq "), ("!=", "\\neq "), ("\\lt ", "<"),
           ("\\gt ", ">"), ("\\lt", "<"), ("\\gt", ">"), ("\\neq ", "\\neq "), ("\\rvert", "|"), ("\\vert", "|"),
           ("−", "-"), ("–", "-"), ("×", "\\times"), ("·", "\\cdot"), ("π", "\\pi"), ("∞", "\\infty"),
           ("√", "\\sqrt"), ("≤", "\\leq"), ("≥", "\\geq"), ("∪", "\\cup"), ("\\bmatrix", "\\pmatrix")]
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree|\{\}\^\{?\\circ\}?")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF = re.compile(r"\\frac\s*(\d)\s*(?=\{)")
_FRAC_HALF2 = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d|[a-zA-Z](?![a-zA-Z]))")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|mathrm|mathbf|mathit|mbox|operatorname|boldsymbol)\s*\{")
_SPACES = re.compile(r"\s+")


def unwrap_text(s: str) -> str:
    """\\text{abc} -> abc (brace-matched, so nested groups survive)."""
    for _ in range(20):
        m = _TEXT_CMD.search(s)
        if not m:
            return s
        start = m.end() - 1
        depth, j = 0, start
        while j < len(s):
            if s[j] == "{":
                depth += 1
            elif s[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if j >= len(s):
            return s
        s = s[:m.start()] + s[start + 1:j] + s[j + 1:]
    return s


_TRIG_DEG = re.compile(r"\\(sin|cos|tan|sec|csc|cot)\s*\(?\s*(\d+(?:\.\d+)?)\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°)\s*\)?")


def strip_degrees(s: str) -> tuple[str, bool]:
    """Drop degree signs (90^\\circ is 90); inside a trig function they become radians (\\sin 30^\\circ = 1/2)."""
    s = _TRIG_DEG.sub(lambda m: "\\%s(\\frac{%s\\pi}{180})" % (m.group(1), m.group(2)), s)
    t = _DEGREES.sub("", s)
    return t, t != s


def normalize(s: str) -> str:
    """Canonical spelling of a LaTeX answer (whitespace-free); equal strings here mean equal answers."""
    if "\\begin" not in s:
        s = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", s)  # '\\frac' from a doubly escaped string is \frac
    s = s.replace("\\\\", "\0")  # keep matrix row breaks away from the "\\," style drops
    s = s.replace("\\ ", " ")
    for a in _DROP:
        s = s.replace(a, "")
    for a, b in _RENAME:
        s = s.replace(a, b)
    s = s.replace("\0", "\\\\")
    s = re.sub(r"^\\\{\s*\\\}$", r"\\varnothing", s)  # {} written as a set is the empty set
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF.sub(r"\\frac{\1}", s)
    s = _FRAC_HALF2.sub(r"\\frac\1{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = _SPACES.sub(" ", s).strip()
    # Drop spaces except between two word characters ("\pi r", "\log_2 8" is not "\log_28").
    s = re.sub(r"(?<![a-zA-Z0-9]) | (?![a-zA-Z0-9])", "", s)
    return s.rstrip(".").strip()
