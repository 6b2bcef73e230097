"""Plain data across the sandbox boundary: `encode` turns a value into JSON-able plain data, `decode` is its strict,
bounded inverse. One file for both sides: the trainer's judge imports it, and launch.py puts its source in front
of _inside.py, so the worker that encodes, the judge process inside the sandbox that decodes a program's answers,
and the trainer all read values the same way.

Standard library only, no `from __future__` (the source is concatenated), and no import that costs time at start
(fractions, decimal and collections load on first use): every sandbox launch runs this file's top level.
"""

import sys

# Bounds on numbers crossing back: int() of a decimal string and Fraction/Decimal parsing are quadratic, and an
# exponent is a size in disguise (Decimal('1e200000') is small until int() expands it).
MAX_DIGITS = 5000
MAX_EXPONENT = 5000  # decimal digits: int(Decimal('1e200000')) costs about a second, 1e3000000 minutes
MAX_DEPTH = 100
MAX_ITEMS = 1_000_000  # what one iterator may yield before it counts as endless


def encode(x, depth=0):
    """Plain data out of whatever the program returned, read by structure: an object that merely claims to equal
    something contributes only its contents, and whoever decodes it, not the object, does the comparing."""
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    if x is None or x is True or x is False:
        return x
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        x = int.__add__(x, 0)
        return {"i": str(x)} if abs(x) > 2 ** 53 else x
    if isinstance(x, float):
        return {"f": repr(float.__add__(x, 0.0))}
    if isinstance(x, str):
        return str.__getitem__(x, slice(None))
    if isinstance(x, complex):
        return {"c": [repr(x.real), repr(x.imag)]}
    if isinstance(x, (bytes, bytearray)):
        return {"b": bytes(x).hex()}
    if isinstance(x, tuple):
        return {"t": [encode(v, depth + 1) for v in tuple.__iter__(x)]}
    if isinstance(x, list):
        return [encode(v, depth + 1) for v in list.__iter__(x)]
    if isinstance(x, (set, frozenset)):
        return {"s": [encode(v, depth + 1) for v in x], "frozen": isinstance(x, frozenset)}
    if isinstance(x, dict):
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(x)]}
    name = type(x).__module__ + "." + type(x).__qualname__
    # By identity, never by name: a class of the program's may call itself fractions.Fraction.
    if type(x) is getattr(sys.modules.get("fractions"), "Fraction", None):
        num, den = int.__add__(x._numerator, 0), int.__add__(x._denominator, 0)
        return {"n": ["fractions.Fraction", f"{num}/{den}"]}
    if type(x) is getattr(sys.modules.get("decimal"), "Decimal", None):
        return {"n": ["decimal.Decimal", type(x).__str__(x)]}
    if name == "collections.deque":
        return {"q": [encode(v, depth + 1) for v in x]}
    if hasattr(x, "__next__") or name in ("builtins.range", "builtins.dict_keys", "builtins.dict_values",
                                           "builtins.dict_items"):
        import itertools
        items = list(itertools.islice(iter(x), MAX_ITEMS + 1))
        if len(items) > MAX_ITEMS:
            raise ValueError("iterator too long")
        return {"it": [encode(v, depth + 1) for v in items]}
    raise TypeError(f"not plain data: {name}")


class Iterated(tuple):
    """What an iterator, generator, range or dict view yielded. list(), sorted(), set() and friends accept it; like
    the original it equals nothing but itself, so `gen() == [1, 2]` fails as it would in Python."""

    __hash__ = tuple.__hash__

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other


def decode(x, depth=0):
    """Strict inverse of encode: anything else is garbage and raises (ValueError, ArithmeticError, ...), which the
    caller turns into a failed probe. Every number is size-checked before it is converted."""
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    if x is None or type(x) in (bool, str):
        return x
    if type(x) is int:
        return x
    if type(x) is list:
        return [decode(v, depth + 1) for v in x]
    if type(x) is dict and len(x) in (1, 2):
        (tag, v), *rest = x.items()
        if tag == "i" and isinstance(v, str):
            return _int(v)
        if tag == "f" and isinstance(v, str) and len(v) < 64:
            return float(v)
        if tag == "t" and isinstance(v, list):
            return tuple(decode(e, depth + 1) for e in v)
        if tag == "s" and isinstance(v, list):
            items = [decode(e, depth + 1) for e in v]
            return frozenset(items) if x.get("frozen") else set(items)
        if tag == "d" and isinstance(v, list):
            return {decode(k, depth + 1): decode(w, depth + 1) for k, w in v}
        if tag == "b" and isinstance(v, str):
            return bytes.fromhex(v)
        if tag == "c" and isinstance(v, list) and len(v) == 2 and all(isinstance(p, str) and len(p) < 64 for p in v):
            return complex(float(v[0]), float(v[1]))
        if tag == "n" and isinstance(v, list) and len(v) == 2 and isinstance(v[1], str):
            return _fraction(v[1]) if v[0] == "fractions.Fraction" else _decimal(v[1])
        if tag == "q" and isinstance(v, list):
            from collections import deque
            return deque(decode(e, depth + 1) for e in v)
        if tag == "it" and isinstance(v, list):
            return Iterated(decode(e, depth + 1) for e in v)
    raise ValueError("not an encoded value")


def _int(text):
    body = text[1:] if text[:1] == "-" else text
    if not (0 < len(body) <= MAX_DIGITS and body.isascii() and body.isdigit()):
        raise ValueError("not a bounded integer")
    return int(text)


def _fraction(text):
    from fractions import Fraction
    num, _, den = text.partition("/")
    return Fraction(_int(num), _int(den or "1"))  # ZeroDivisionError for n/0: the caller fails the probe


def _decimal(text):
    from decimal import Decimal
    if len(text) > MAX_DIGITS + 32 or not text.isascii():
        raise ValueError("decimal too long")
    value = Decimal(text)
    if value.is_finite() and value and abs(value.adjusted()) > MAX_EXPONENT:
        raise ValueError("decimal exponent too large")
    return value
