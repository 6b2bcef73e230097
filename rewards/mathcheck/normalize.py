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
           ("√", "\\sqrt"), ("≤", "\\leq"), ("≥", "\\geq"), ("∪", "\\cup"), ("\\bmatrix", "\\pmatrix"),
           ("≈", "\\approx"), ("\\thickapprox", "\\approx"), ("\\simeq", "\\approx"),
           # A prime is part of the name (f' is not f): one spelling, "'", that the comparison counts.
           ("^{\\prime\\prime}", "''"), ("^{\\prime}", "'"), ("^\\prime", "'"), ("\\prime", "'"), ("′", "'"),
           ("″", "''"), ("\\textnormal", "\\text")]
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree|\{\}\^\{?\\circ\}?")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF = re.compile(r"\\frac\s*(\d)\s*(?=\{)")
_FRAC_HALF2 = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d|[a-zA-Z](?![a-zA-Z]))")
# Font commands carry no meaning in an answer (\\mathcal{B} is B); \\mathbb stays (\\mathbb{R} is the reals).
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|textsf|textup|textnormal|mathrm|mathbf|mathit|"
                       r"mathsf|mathtt|mathcal|mathscr|mathfrak|mathnormal|mbox|operatorname|boldsymbol|bm)\s*\{")
_SPACES = re.compile(r"\s+")
_BRACED_COMMA = re.compile(r"(?<=\d)\{,\}(?=(\d+))")


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
    if len(s) <= _PY_MAX and _PY_HINT.search(s):
        s = python_to_latex(s)
    if "{,}" in s:  # 3{,}75 is LaTeX's decimal comma (3.75); 1{,}000 a thousands group (1000)
        s = _BRACED_COMMA.sub(lambda m: "" if len(m.group(1)) == 3 else ".", s)
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


# Python-style answers (2**(1/4), sqrt(3), 3*pi) spelled in LaTeX, so both spellings meet one parser.
_PY_HINT = re.compile(r"\*|\^\(|\\sqrt\(|(?<![\\a-zA-Z])(?:sqrt|exp|pi)(?![a-zA-Z])")
_PY_MAX = 2000  # Python-style answers are short; the paren matching below is quadratic in the worst case
_PY_FUNC = re.compile(r"(?<![a-zA-Z])\\?(sqrt|exp)\(")
_PY_POW_TOKEN = re.compile(r"\^([\w.]+)")


def _close_paren(s: str, open_at: int) -> int:
    depth = 0
    for j in range(open_at, len(s)):
        depth += {"(": 1, ")": -1}.get(s[j], 0)
        if depth == 0:
            return j
    return -1


def python_to_latex(s: str) -> str:
    """'2**(1/4)' -> '2^{(1/4)}', 'sqrt(3)' -> '\\sqrt{3}', '3*x' -> '3\\cdot x', 'pi' -> '\\pi'."""
    if "\\" in s and "**" not in s and "sqrt(" not in s:
        return s  # LaTeX already (a \cdot-free "*" there is a conjugate or a footnote, left alone)
    for _ in range(20):  # sqrt(..) / exp(..) -> \sqrt{..} / e^{..}, innermost last
        m = _PY_FUNC.search(s)
        if not m:
            break
        end = _close_paren(s, m.end() - 1)
        if end < 0:
            break
        inner = s[m.end():end]
        s = s[:m.start()] + ("\\sqrt{%s}" % inner if m.group(1) == "sqrt" else "e^{%s}" % inner) + s[end + 1:]
    s = s.replace("**", "^")
    out, i = [], 0
    while i < len(s):  # ^(..) and ^12 -> ^{..}: LaTeX reads ^12 as ^1 2
        if s[i] == "^" and i + 1 < len(s) and s[i + 1] == "(":
            end = _close_paren(s, i + 1)
            if end > 0:
                out.append("^{" + s[i + 1:end + 1] + "}")
                i = end + 1
                continue
        out.append(s[i])
        i += 1
    s = _PY_POW_TOKEN.sub(r"^{\1}", "".join(out))
    s = re.sub(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])", r"\\pi ", s)
    return re.sub(r"\s*\*\s*", r"\\cdot ", s)


# Unit words after a value: "125 miles", "5\text{ cm}^2", "12\pi \text{ inches}".
_UNITS = ("cm|mm|km|m|meters?|metres?|centimeters?|millimeters?|kilometers?|inches|inch|in|feet|foot|ft|yards?|"
          "miles?|mph|kph|kg|g|grams?|kilograms?|pounds?|lbs?|ounces?|oz|tons?|seconds?|sec|s|minutes?|min|hours?|"
          "hrs?|h|days?|weeks?|months?|years?|dollars?|cents?|euros?|units?|sq|square|cubic|liters?|litres?|l|ml|"
          "gallons?|degrees?|radians?|rad|people|persons?|students?|times|percent|points?|pages?|boxes|books?|"
          "apples?|eggs?|cups?|items?")
_UNIT_TAIL = re.compile(rf"^(.*?[\d}}])\s*(?:(?:{_UNITS})(?:\^\{{?[23]\}}?|\^[23])?\s*)+$")
# After a value that ends in a letter (12\\pi) only whole unit words count: "2\\pi h" keeps its h.
_LONG_UNITS = "|".join(u for u in _UNITS.split("|") if len(u.rstrip("?s")) >= 3)
_WORD_TAIL = re.compile(rf"^(.*?[a-zA-Z}}])\s+(?:(?:{_LONG_UNITS})\s*)+$")
_CJK_TAIL = re.compile(r"^(.*?[\d}])\s*[\u4e00-\u9fff]{1,3}$")  # "12 个", "5 米": a measure word
_TEXT_TAIL = re.compile(r"^(.*?\S)\s*\\(?:text|mbox|mathrm|textrm|textbf|textit)\{([^{}]*)\}(?:\^\{?[23]\}?|\^[23])?$")
# Words that qualify or hedge a value rather than name its unit: "5 \text{ or more}" is not 5.
_NOT_UNITS = {"or", "and", "not", "no", "more", "less", "fewer", "least", "most", "about", "approx", "approximately",
              "around", "nearly", "almost", "roughly", "maybe", "perhaps", "possibly", "probably", "than", "plus",
              "minus", "over", "under", "above", "below", "between", "to", "except", "if", "unless", "when", "only",
              "correct", "wrong", "right", "true", "false", "answer", "grader", "mark", "is", "are", "each", "per"}


# Any word after a plain number in an answer sentence ("40 cookies", "12 red marbles") names what was counted.
_NUM_WORDS = re.compile(r"^([+-]?\d[\d,]*(?:\.\d+)?(?:/\d+)?|\\frac\{\d+\}\{\d+\})\s*(?:\\text\{\s*)?"
                        r"([A-Za-z]{3,}(?:\s+[A-Za-z]{3,})?)\s*\}?$")
_MATH_WORDS = {"pi", "sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "mod", "pmod", "choose",
               "factorial", "infty", "infinity", "cdot", "times", "frac", "dfrac", "text", "mbox", "circ", "deg"}


def strip_units(s: str) -> str:
    """'5\\text{ cm}^2' -> '5'; the tail must be unit words (letters only, no hedge or qualifier word)."""
    m = _NUM_WORDS.match(s) if len(s) < 80 else None
    if m and not any(w.lower() in _NOT_UNITS or w.lower() in _MATH_WORDS for w in m.group(2).split()):
        return m.group(1)
    m = _TEXT_TAIL.match(s)
    if m:
        words = re.findall(r"[A-Za-z]+", m.group(2))
        if (re.fullmatch(r"[A-Za-z .,/-]*", m.group(2)) and 1 <= len(words) <= 4
                and not any(w.lower() in _NOT_UNITS for w in words)
                and not m.group(1).rstrip().endswith(("\\text{", "=", "\\approx"))):
            return m.group(1).strip()
    for rx in (_UNIT_TAIL, _WORD_TAIL, _CJK_TAIL):
        m = rx.match(s)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return s
