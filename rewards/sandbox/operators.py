"""What a test expression may use: the operators, calls and names that plan.py accepts when it compiles a test
and judge.py applies when it evaluates one, in the trainer's process. One table each, so the two can never
disagree; every entry is bounded (a number too large to expand is refused, not computed)."""

from __future__ import annotations

import ast
import math
import operator
from decimal import Decimal

from rewards.sandbox.wire import MAX_EXPONENT


def _to_int(fn):
    """int(), round(), floor() and ceil() expand a number's exponent into digits: refuse one that would be huge."""
    def bounded(x, *rest, **kw):
        if isinstance(x, Decimal) and x.is_finite() and x and x.adjusted() > MAX_EXPONENT:
            raise OverflowError("number too large to convert")
        return fn(x, *rest, **kw)
    return bounded


SAFE_CALLS = {"abs": abs, "round": _to_int(round), "len": len, "sorted": sorted, "set": set, "frozenset": frozenset,
              "list": list, "tuple": tuple, "sum": sum, "min": min, "max": max, "int": _to_int(int), "float": float,
              "str": str, "bool": bool, "any": any, "all": all, "dict": dict, "reversed": reversed,
              "math.isclose": math.isclose, "math.fabs": math.fabs, "math.sqrt": math.sqrt,
              "math.floor": _to_int(math.floor), "math.ceil": _to_int(math.ceil), "math.isnan": math.isnan, "math.isinf": math.isinf}
SAFE_NAMES = {"math.pi": math.pi, "math.e": math.e, "math.inf": math.inf, "math.nan": math.nan}
BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: pow}
CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
          ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
          ast.NotIn: lambda a, b: a not in b, ast.Is: lambda a, b: a == b if a is None or b is None else a is b,
          ast.IsNot: lambda a, b: not (a == b if a is None or b is None else a is b)}
UNOPS = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}
