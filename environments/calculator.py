"""The calculator environment: the model writes one arithmetic expression between <calc> and </calc>; the
value comes back between <out> and </out>. Evaluated by walking its syntax tree (numbers, + - * / // % **,
parentheses), with every intermediate value bounded: no code runs, and no expression costs more than a few
microseconds whatever the model writes (2**10**10 is refused, not computed)."""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

OPEN, CLOSE = "<calc>", "</calc>"
RESULT = "<out>{}</out>"
MAX_EXPRESSION_CHARS = 200
MAX_DIGITS = 60  # any intermediate value with more digits than this is refused
MAX_EXPONENT = 64

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class CalcError(ValueError):
    """What the model is told back: the expression could not be evaluated, and why."""


def calculator(row: dict, transcript: str) -> dict | None:
    """Evaluate the last <calc>...</calc> of the transcript (the one that ended the turn)."""
    if not transcript.endswith(CLOSE):
        return None
    start = transcript.rfind(OPEN, 0, len(transcript) - len(CLOSE))
    if start < 0:
        return {"observation": RESULT.format("error: no <calc>"), "error": True}
    expression = transcript[start + len(OPEN):len(transcript) - len(CLOSE)]
    try:
        return {"observation": RESULT.format(format_value(evaluate(expression))), "error": False}
    except CalcError as exc:
        return {"observation": RESULT.format(f"error: {exc}"), "error": True}


calculator.stop = [CLOSE]


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression, or CalcError."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalcError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        raise CalcError("not an arithmetic expression") from None
    return _value(tree.body)


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, float) and (node.value != node.value or abs(node.value) == float("inf")):
            raise CalcError("not a finite number")
        return _bounded(Fraction(node.value))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise CalcError("division by zero")
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    raise CalcError("only numbers, + - * / // % ** and parentheses")


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
        raise CalcError(f"exponents must be whole numbers up to {MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise CalcError("division by zero")
    # |base| < 10**60 and exponent <= 64 could still be 3,800 digits: check the size before computing it
    digits = max(len(str(abs(base.numerator))), len(str(base.denominator)))
    if (digits - 1) * abs(int(exponent)) > MAX_DIGITS:
        raise CalcError(f"result over {MAX_DIGITS} digits")
    return _bounded(base ** int(exponent))


def _bounded(value: Fraction) -> Fraction:
    if len(str(abs(value.numerator))) > MAX_DIGITS or len(str(value.denominator)) > MAX_DIGITS:
        raise CalcError(f"result over {MAX_DIGITS} digits")
    return value


def format_value(value: Fraction) -> str:
    """Whole numbers exactly; other values to 10 significant digits."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"
