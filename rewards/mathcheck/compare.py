"""Comparison policy: is a predicted answer the same answer as the gold one?"""

from __future__ import annotations

from rewards.mathcheck.normalize import normalize
from rewards.mathcheck.numbers import parse_number


def equivalent(pred: str, gold: str) -> bool:
    p, g = normalize(pred), normalize(gold)
    if p == g:
        return True
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None and gn is not None:
        return pn.value == gn.value
    return False
