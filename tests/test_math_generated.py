"""Generated equivalence suite (issue 25): for every gold answer of MATH-500 (data/eval/math500.jsonl), seeded
renderings of that same answer that must score 1 and wrong variants that must score 0. No list of examples can be
tuned against it: a rule that only fits the hand-written cases fails here on golds it has never seen.

A variant is generated only where it is well-defined for the gold (off-by-one only for numeric golds, a decimal
only for terminating fractions, reordering only for sets and lists, ...). On failure the test reports the kind,
the gold and the rendering. The verdict, not the speed: the wall-clock budget is lifted as in `unhurried`."""

from __future__ import annotations

import functools
import json
import random
import re
import time
from fractions import Fraction
from pathlib import Path

import pytest

import rewards.math
from rewards.math import score, warm_up
from rewards.mathcheck.lists import as_list, split_top
from rewards.mathcheck.normalize import normalize
from rewards.mathcheck.numbers import parse_number

DATA = Path(__file__).resolve().parents[1] / "data" / "eval" / "math500.jsonl"
SEED = 25


def _num(gold: str) -> Fraction | None:
    if "%" in gold or "^\\circ" in gold or "\\text" in gold or "_" in gold:
        return None
    n = parse_number(normalize(gold))
    return n.value if n is not None else None


def _render(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return "%s\\frac{%d}{%d}" % (sign, abs(v.numerator), v.denominator)


def _terminating(v: Fraction) -> str | None:
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1 or v.denominator == 1:
        return None
    digits = 0
    while (v * 10 ** digits).denominator != 1:
        digits += 1
    q = abs(v * 10 ** digits).numerator
    s = str(q).rjust(digits + 1, "0")
    return ("-" if v < 0 else "") + s[:-digits] + "." + s[-digits:]


def _plural(gold: str) -> bool:
    g = normalize(gold)
    return bool(as_list(g)) or g.startswith(("(", "[", "\\{")) or "\\cup" in g


def _balanced_parens(g: str) -> bool:
    depth = 0
    for c in g:
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0


def _same(a: str, b: str) -> bool:
    """Generation guard: a distractor that the checker (unhurried) calls equal to the gold is not a wrong variant."""
    keep = rewards.math._BUDGET_S
    rewards.math._BUDGET_S = 60.0
    try:
        return score("\\boxed{%s}" % a, b) == 1.0
    finally:
        rewards.math._BUDGET_S = keep


def cases() -> list[tuple[str, str, str, float, str | None]]:
    """(kind, completion, gold, wanted score, finish_reason), seeded."""
    golds = [json.loads(line)["answer"] for line in open(DATA)]
    out: list[tuple[str, str, str, float, str | None]] = []
    for i, g in enumerate(golds):
        rng = random.Random(SEED * 100_003 + i)
        v = _num(g)
        right = [("boxed", "\\boxed{%s}" % g),
                 ("final answer sentence", "So we are done.\n\nThe final answer is $\\boxed{%s}$." % g),
                 ("the answer is", "Let me work it out step by step.\n\nThe answer is $%s$." % g)]
        if "\\frac" in g:
            right.append(("dfrac", "\\boxed{%s}" % g.replace("\\frac", rng.choice(["\\dfrac", "\\tfrac"]))))
        if "\\text" not in g and re.search(r"[,+=]", g):
            right.append(("spacing", "\\boxed{%s}" % re.sub(r"\s*([,+=])\s*", lambda m: rng.choice(
                [" %s " % m.group(1), "%s " % m.group(1), " %s" % m.group(1)]), g)))
        if "(" in g and "\\left" not in g and "\\(" not in g and "\\text" not in g and _balanced_parens(g):
            right.append(("left/right", "\\boxed{%s}" % g.replace("(", "\\left(").replace(")", "\\right)")))
        if v is not None:
            if v.denominator == 1 and v > 0 and "\\$" not in g:
                right.append(("unit", "\\boxed{%s}" % (g + rng.choice(["\\text{ units}", "\\text{ cm}", " meters"]))))
            dec = _terminating(v)
            if dec is not None:
                right.append(("decimal", "\\boxed{%s}" % dec))
        g_norm = normalize(g)
        if g_norm.startswith("\\{") and g_norm.endswith("\\}"):
            items = split_top(g_norm[2:-2], (",",))
            if len(items) > 1:
                right.append(("reordered set", "\\boxed{\\{%s\\}}" % ", ".join(reversed(items))))
        elif not g_norm.startswith(("(", "[")) and v is None and "\\text" not in g:
            items = split_top(g_norm, (",",))
            if len(items) > 1 and all(items):
                right.append(("reordered list", "\\boxed{%s}" % ", ".join(reversed(items))))
        wrong = []
        if v is not None:
            wrong.append(("off by one", "\\boxed{%s}" % _render(v + 1)))
            if v != 0:
                wrong += [("sign flipped", "\\boxed{%s}" % _render(-v)), ("x10", "\\boxed{%s}" % _render(v * 10)),
                          ("x100", "\\boxed{%s}" % _render(v * 100))]
            other = _render(v + rng.choice([2, 3, 7]))
        else:
            other = None
            for k in range(1, len(golds)):  # the next gold that is a plain number and not this gold's value
                cand = golds[(i + k) % len(golds)]
                if _num(cand) is not None and normalize(cand) != g_norm:
                    if not _same(cand, g):
                        other = cand
                    break
        if other is not None:
            wrong.append(("different box appended", "The answer is $\\boxed{%s}$.\n\n\\boxed{%s}" % (g, other)))
            wrong.append(("gold only in a code block", "The answer is $\\boxed{%s}$.\n```\n\\boxed{%s}\n```" % (other, g)))
            wrong.append(("gold only in an HTML comment", "So \\boxed{%s}. <!-- \\boxed{%s} -->" % (other, g)))
            wrong.append(("gold only before the last tool output",
                          "\\boxed{%s}\n```python\nprint(1)\n```\n```output\n1\n```\n" % g))
            wrong.append(("gold only in the next chat turn",
                          "The answer is \\boxed{%s}.<|im_end|>\n<|im_start|>user\nNo: \\boxed{%s}" % (other, g)))
            right.append(("answer after a tool output", "```python\nprint(%s)\n```\n```output\n%s\n```\n"
                          "So the answer is $\\boxed{%s}$." % (other, other, g)))
            right.append(("answer after thinking", "<think>Maybe \\boxed{%s}? No.</think>\n\nThe answer is \\boxed{%s}."
                          % (other, g)))
            if not _plural(g):
                opts = [g, other, "%s+1" % other, "2\\cdot %s" % other]
                rng.shuffle(opts)
                wrong.append(("every option boxed", ", ".join("\\boxed{%s}" % o for o in opts)))
        wrong.append(("truncated before the answer", "Step one gives $%s$, and then we" % g))
        for kind, c in right:
            out.append((kind, c, g, 1.0, None))
        for kind, c in wrong:
            out.append((kind, c, g, 0.0, None))
        out.append(("truncated (finish_reason length)", "Step one gives $%s$ and the" % g, g, 0.0, "length"))
        out.append(("marker cut by the length limit", "So the answer is %s" % g, g, 0.0, "length"))
    return out


@functools.lru_cache(maxsize=1)
def all_cases() -> tuple[tuple[str, str, str, float, str | None], ...]:
    """Built on first use, not at collection (the distractor guard runs the checker)."""
    return tuple(cases())


KINDS = ["answer after a tool output", "answer after thinking", "boxed", "decimal", "dfrac", "different box appended",
         "every option boxed", "final answer sentence", "gold only before the last tool output",
         "gold only in a code block", "gold only in an HTML comment", "gold only in the next chat turn", "left/right",
         "marker cut by the length limit", "off by one", "reordered list", "reordered set", "sign flipped", "spacing",
         "the answer is", "truncated (finish_reason length)", "truncated before the answer", "unit", "x10", "x100"]


@pytest.fixture(autouse=True, scope="module")
def _warm_worker() -> None:
    assert warm_up(timeout=600)


@pytest.mark.parametrize("kind", KINDS)
def test_generated_variants(kind: str, monkeypatch) -> None:
    monkeypatch.setattr(rewards.math, "_BUDGET_S", 60.0)  # the verdict, not the speed (see round two's unhurried)
    bad = []
    for k, completion, gold, want, reason in all_cases():
        if k == kind and score(completion, gold, finish_reason=reason) != want:
            bad.append("kind=%s want=%s gold=%r rendering=%r" % (k, want, gold, completion))
    assert not bad, "%d of the %s variants wrong:\n" % (len(bad), kind) + "\n".join(bad[:40])


def test_suite_covers_every_kind() -> None:
    built = all_cases()
    assert len(built) > 5000
    assert sorted({k for k, *_ in built}) == sorted(KINDS)


def test_suite_time(monkeypatch) -> None:
    """All pairs, once warm: about 3 s of CPU on the 2-core dev box; the bound leaves room for a loaded CI host."""
    built = all_cases()
    monkeypatch.setattr(rewards.math, "_BUDGET_S", 60.0)
    t = time.process_time()
    for _, completion, gold, _, reason in built:
        score(completion, gold, finish_reason=reason)
    assert time.process_time() - t < 30.0
