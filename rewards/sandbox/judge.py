"""Grade what the sandbox sent back, in the trusted process: decode plain data strictly, evaluate the parent's
half of each assert, compare stdout and return values. The program's objects never take part in a verdict."""

from __future__ import annotations

import ast
import json
import math
from fractions import Fraction
from typing import Any

from rewards.sandbox.operators import BINOPS
from rewards.sandbox.plan import Test
from rewards.sandbox.wire import Iterated, decode  # noqa: F401 - Iterated: re-exported for callers of the judge

# ------------------------------------------------------------------ the trusted expression evaluator

class _NoAnswer(Exception):
    pass


def evaluate(tree: tuple, answers: dict[int, Any]) -> Any:
    kind = tree[0]
    if kind == "const":
        return tree[1]
    if kind == "probe":
        if tree[1] not in answers:
            raise _NoAnswer(tree[1])
        return answers[tree[1]]
    if kind == "cmp":
        values = [evaluate(t, answers) for t in tree[2]]
        return all(op(a, b) for op, a, b in zip(tree[1], values, values[1:]))
    if kind == "and":
        return all(evaluate(t, answers) for t in tree[1])
    if kind == "or":
        return any(evaluate(t, answers) for t in tree[1])
    if kind == "un":
        return tree[1](evaluate(tree[2], answers))
    if kind == "bin":
        a, b = evaluate(tree[2], answers), evaluate(tree[3], answers)
        _guard_size(tree[1], a, b)
        return BINOPS[tree[1]](a, b)
    if kind in ("list", "tuple", "set"):
        items = [evaluate(t, answers) for t in tree[1]]
        return {"list": list, "tuple": tuple, "set": set}[kind](items)
    if kind == "call":
        return tree[1](*[evaluate(t, answers) for t in tree[2]], **{k: evaluate(v, answers) for k, v in tree[3].items()})
    raise ValueError(kind)


def _guard_size(op: type, a: Any, b: Any) -> None:
    # Values come from the program: keep a crafted huge power or repetition from eating the trainer's memory.
    if op is ast.Pow and isinstance(b, int) and _bits(a) * abs(b) > 1 << 20:
        raise OverflowError("power too large")
    if op is ast.Mult and isinstance(a, (int, str, list, tuple)) and isinstance(b, (int, str, list, tuple)):
        sizes = [len(x) if not isinstance(x, int) else 1 for x in (a, b)]
        counts = [x for x in (a, b) if isinstance(x, int)]
        if counts and max(sizes) * max(abs(c) for c in counts) > 10_000_000 and any(not isinstance(x, int) for x in (a, b)):
            raise OverflowError("repetition too large")


def _bits(a: Any) -> int:
    """Size of an exact number for the power guard; 0 for what a power cannot blow up (0, 1, -1, floats)."""
    if isinstance(a, Fraction):
        return 0 if abs(a.numerator) <= 1 and a.denominator == 1 else a.numerator.bit_length() + a.denominator.bit_length()
    if isinstance(a, int):
        return 0 if abs(a) <= 1 else a.bit_length()
    return 0


# ------------------------------------------------------------------ decoding what the sandbox sent
# decode (strict, bounded) and Iterated live in wire.py, shared with the sandbox's own judge process.


def read_answers(lines: list[str], asked: set[int] | None = None) -> dict[int, Any]:
    """Decoded answers to the probes in `asked` (all, when None). A malformed, undecodable or repeated line for a
    probe fails that probe; lines for probes nobody asked are ignored. Never raises on what the sandbox sent."""
    answers: dict[int, Any] = {}
    seen: set[int] = set()
    bad: set[int] = set()
    for line in lines:
        k = None
        try:
            if len(line) > 1 << 24:
                raise ValueError("answer line too long")
            msg = json.loads(line)
            k = msg.get("k") if type(msg) is dict else None
            if type(k) is not int or (asked is not None and k not in asked):
                continue
            if k in seen:
                raise ValueError("a second answer to one probe")
            seen.add(k)
            if "v" in msg:
                answers[k] = decode(msg["v"])
        except Exception:  # noqa: BLE001 - whatever the line is, it costs that probe only
            if type(k) is int:
                bad.add(k)
    for k in bad:
        answers.pop(k, None)
    return answers


# ------------------------------------------------------------------ comparisons

def same_stdout(got: str, want: str) -> bool:
    g = [ln.rstrip() for ln in got.strip().splitlines()]
    w = [ln.rstrip() for ln in want.strip().splitlines()]
    if g == w:
        return True
    gt, wt = got.split(), want.split()
    if len(gt) != len(wt):
        return False
    for a, b in zip(gt, wt):
        if a == b:
            continue
        try:
            fa, fb = float(a), float(b)
        except ValueError:
            return False
        if not math.isclose(fa, fb, rel_tol=1e-6, abs_tol=1e-6):
            return False
    return True


def _lists(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    return x


def same_value(got: Any, want: Any) -> bool:
    """Call-based (APPS) outputs: JSON has no tuples, and APPS often wraps the answer in a one-element list."""
    got, want = _lists(got), _lists(want)
    try:
        if got == want or (isinstance(want, list) and len(want) == 1 and got == want[0]):
            return True
        if isinstance(want, str) and not isinstance(got, str):  # LiveCodeBench keeps outputs as JSON text
            return got == _lists(json.loads(want))
        return False
    except (TypeError, ValueError, RecursionError):
        return False


def grade(test: Test, run_ok: bool, stdout: str, answers: dict[int, Any]) -> bool:
    try:
        if test.kind == "stdin":
            return run_ok and same_stdout(stdout, test.expected)
        if test.kind == "call":
            return test.probe in answers and same_value(answers[test.probe], test.expected)
        if test.kind == "check":
            return answers.get(test.probe) is True
        return bool(evaluate(test.expected, answers)) is True
    except Exception:  # noqa: BLE001 - whatever the program's values make the judge do, it is that test's 0
        return False
