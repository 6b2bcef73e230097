"""Math checker, round two: each verdict class from the issue, in both directions (a right answer accepted and
a near miss rejected), with the anti-gaming cases beside them."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from rewards.math import extract_answer, score, warm_up


@pytest.fixture(autouse=True, scope="module")
def _warm_worker() -> None:
    assert warm_up(timeout=600)  # two interpreters importing sympy: a minute is not enough on a loaded box


@pytest.fixture
def unhurried(monkeypatch) -> None:
    """The verdict, not the speed: on a machine busy enough, sympy misses the checker's 0.8 s wall-clock budget and a
    right answer scores 0. The budget has tests of its own (hostile input stays fast); here it is a minute."""
    import rewards.math

    monkeypatch.setattr(rewards.math, "_BUDGET_S", 60.0)


# Each class: (completion, gold) pairs that must score 1.0, then pairs that must score 0.0.
CLASSES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "primes": ([
        ("\\boxed{f'}", "f'"),
        ("\\boxed{f^{\\prime}(x)}", "f'(x)"),
        ("\\boxed{f''(x)}", "f^{\\prime\\prime}(x)"),
        ("\\boxed{A'}", "A'"),
        ("\\boxed{x'+y}", "y+x'"),
        ("\\boxed{y' = 2x}", "y'=2x"),
    ], [
        ("\\boxed{f'}", "f"),
        ("\\boxed{f'(x)}", "f(x)"),
        ("\\boxed{x'}", "x"),
        ("\\boxed{A}", "A'"),
        ("\\boxed{f''(x)}", "f'(x)"),
        ("\\boxed{x'+y}", "x+y'"),
        ("\\boxed{A'B}", "AB"),
        ("\\boxed{y = 2x}", "y'=2x"),
    ]),
    "several boxes in a completion": ([
        ("First attempt: \\boxed{6}. Checking it again, that is wrong: the sum is 9, so \\boxed{9}", "9"),
        ("The area is $\\boxed{12}$, so the height is $h = \\frac{2 \\cdot 12}{4} = \\boxed{6}$.", "6"),
        ("\\boxed{1}, \\boxed{2} and \\boxed{3}", "\\{1,2,3\\}"),
        ("The pairs are $\\boxed{(2,2)}$ and $\\boxed{(6,2)}$.", "(2,2),(6,2)"),
        ("$x = \\boxed{1}$ or $x = \\boxed{-2}$", "1, -2"),
        ("\\boxed{3}; \\boxed{1}", "1, 3"),
        ("\\boxed{15\\frac{39}{40}}, or \\boxed{\\frac{639}{40}}", "\\frac{639}{40}"),
        ("\\boxed{\\frac{3}{2}} = \\boxed{1.5}", "\\frac32"),
        ("Thus $a=\\boxed{3}$ and $b=\\boxed{4}$.", "(3,4)"),
        ("\\boxed{(0,9)} \\text{ and } \\boxed{(9,36)}", "(0,9) \\cup (9,36)"),
    ], [
        ("First attempt: \\boxed{6}. Checking it again, that is wrong: the sum is 9, so \\boxed{9}", "6"),
        ("\\boxed{1}, \\boxed{2} and \\boxed{3}", "1"),
        ("\\boxed{1}, \\boxed{2} and \\boxed{3}", "3"),
        ("\\boxed{1}, \\boxed{2}", "\\{1,2,3\\}"),
        ("\\boxed{(C) or (D)}", "C"),
        ("\\boxed{C} or \\boxed{D}", "C"),
        ("\\boxed{(C)}, \\boxed{(D)}", "D"),
        ("\\boxed{3} or \\boxed{5}", "3"),
        ("\\boxed{5} or maybe \\boxed{6}", "5, 6"),
        ("\\boxed{5}, perhaps \\boxed{5.5}", "5"),
        ("\\boxed{1}, \\boxed{2}, \\boxed{3}, \\boxed{4}, \\boxed{5}", "3"),
        ("".join("\\boxed{%d}, " % k for k in range(500)) + "\\boxed{7}", "7"),
        ("\\boxed{(2,2)} and \\boxed{(6,3)}", "(2,2),(6,2)"),
        ("\\boxed{\\text{(C)}} or \\boxed{288 \\pi}", "\\text{(C)}"),
        ("\\boxed{\\text{Evelyn}} and \\boxed{9}", "\\text{Evelyn}"),
        ("\\boxed{12} and \\boxed{5}", "12"),
    ]),
    "hedges in words": ([
        ("The answer is 3 or 5", "3, 5"),
    ], [
        ("The answer is 3 or 5", "3"),
        ("The answer is 3 or 5", "5"),
        ("\\boxed{3 \\text{ or } 5}", "5"),
        ("\\boxed{C \\text{ or } D}", "D"),
        ("\\boxed{A, B}", "A"),
    ]),
    "golds with several boxes": ([
        ("\\boxed{1, -2}", "so $\\boxed{1}$ and $\\boxed{-2}$"),
        ("\\boxed{-2 \\text{ and } 1}", "$\\boxed{1}$ and $\\boxed{-2}$"),
        ("The answer is $1$ or $-2$.", "$\\boxed{1}$ and $\\boxed{-2}$"),
        ("\\boxed{2,3,4,5,6,7,8,9,10,11,12,13}", "\\boxed{2}, \\boxed{3}, \\ldots, \\boxed{13}"),
        ("\\boxed{2, 3, \\dots, 13}", "\\boxed{2}, \\boxed{3}, \\ldots, \\boxed{13}"),
        ("\\boxed{6}", "First $\\boxed{2}$ apples. In total there are $\\boxed{6}$."),
    ], [
        ("\\boxed{-2}", "$\\boxed{1}$ and $\\boxed{-2}$"),
        ("\\boxed{1}", "$\\boxed{1}$ and $\\boxed{-2}$"),
        ("\\boxed{1, 2}", "$\\boxed{1}$ and $\\boxed{-2}$"),
        ("\\boxed{2,3,4,5,6,7,8,9,10,11,12}", "\\boxed{2}, \\boxed{3}, \\ldots, \\boxed{13}"),
        ("\\boxed{13}", "\\boxed{2}, \\boxed{3}, \\ldots, \\boxed{13}"),
    ]),
    "labels": ([
        ("\\boxed{(p,q)=(3,2)}", "(3,2)"),
        ("\\boxed{(3,2)}", "(p,q)=(3,2)"),
        ("\\boxed{P=(8,-2)}", "(8,-2)"),
        ("\\boxed{(8,-2)}", "P=(8,-2)"),
        ("\\boxed{(p,q,r)=(6,31,-1)}", "(6,31,-1)"),
        ("\\boxed{AB=4, CD=5}", "4, 5"),
        ("\\boxed{4, 5}", "AB=4, CD=5"),
        ("\\boxed{CD=5, AB=4}", "AB=4, CD=5"),
        ("\\boxed{V_1:V_2=11:21}", "11:21"),
        ("\\boxed{11:21}", "V_1:V_2=11:21"),
        ("\\boxed{|AB|=1}", "1"),
        ("\\boxed{\\angle ABC = 30^\\circ}", "30"),
        ("\\boxed{m\\angle A = 40}", "40"),
        ("\\boxed{f(2)=7}", "7"),
        ("\\boxed{(2,3)}", "x=2, y=3"),
        ("\\boxed{(1,2,3)}", "1,2,3"),
        ("\\boxed{\\frac{x-1}{2}}", "f^{-1}(x)=\\frac{x-1}{2}"),
        ("\\boxed{3:4}", "\\frac{3}{4}"),
    ], [
        ("\\boxed{(p,q)=(2,3)}", "(3,2)"),
        ("\\boxed{(2,3)}", "(p,q)=(3,2)"),
        ("\\boxed{P=(8,2)}", "(8,-2)"),
        ("\\boxed{AB=5, CD=4}", "AB=4, CD=5"),
        ("\\boxed{AB=4}", "AB=4, CD=5"),
        ("\\boxed{V_1:V_2=21:11}", "11:21"),
        ("\\boxed{|AB|=2}", "1"),
        ("\\boxed{y=5}", "x=5"),
        ("\\boxed{0}", "a+3z=0"),
        ("\\boxed{x = 5 = 6}", "5"),
        ("\\boxed{(3,2)}", "x=2, y=3"),
        ("\\boxed{(3,2,1)}", "1,2,3"),
        ("\\boxed{4:3}", "\\frac{3}{4}"),
    ]),
    "lists in prose": ([
        ("\\boxed{1; 2}", "1, 2"),
        ("\\boxed{1 \\text{ and } 2}", "\\{1,2\\}"),
        ("\\boxed{2 \\text{ or } 1}", "1,2"),
        ("\\boxed{\\{2, 1\\}}", "1 \\text{ and } 2"),
        ("\\boxed{1, 2 \\text{ and } 3}", "\\{3,2,1\\}"),
        ("The solutions are $x=1$ and $x=2$.", "1, 2"),
        ("\\boxed{1-\\sqrt{2}, 1+\\sqrt{2}}", "1\\pm\\sqrt{2}"),
        ("\\boxed{1+\\sqrt{2} \\text{ and } 1-\\sqrt{2}}", "1\\pm\\sqrt{2}"),
        ("\\boxed{\\{1-\\sqrt{2},1+\\sqrt{2}\\}}", "1\\pm\\sqrt{2}"),
        ("\\boxed{3, -3}", "\\pm 3"),
    ], [
        ("\\boxed{1+\\sqrt{2}}", "1\\pm\\sqrt{2}"),
        ("\\boxed{1+\\sqrt{2}, 1+\\sqrt{2}}", "1\\pm\\sqrt{2}"),
        ("\\boxed{1; 2; 3}", "1, 2"),
        ("\\boxed{1 \\text{ or } 2}", "1"),
        ("\\boxed{1, 1}", "1, 2"),
        ("\\boxed{\\pm 3}", "3"),
        ("\\boxed{1 \\text{ and } 3}", "\\{1,2\\}"),
        ("The solutions are $x=1$ and $x=3$.", "1, 2"),
    ]),
    "units and text": ([
        ("\\boxed{125\\textnormal{ miles}}", "125"),
        ("\\boxed{12\\pi \\text{ inches}}", "12\\pi"),
        ("\\boxed{125}", "$125$ miles"),
        ("\\boxed{6 \\text{ square units}}", "6"),
        ("\\boxed{15\\text{ marbles}}", "15"),
        ("\\boxed{2.5 \\text{ km/h}}", "2.5"),
        ("\\boxed{12\\pi}", "$12\\pi$ square inches"),
        ("答：12 个", "12"),
    ], [
        ("\\boxed{5 \\text{ or more}}", "5"),
        ("\\boxed{12\\pi \\text{ inches}}", "12"),
        ("\\boxed{125 \\text{ miles}}", "126"),
        ("\\boxed{5 \\text{ (this is correct)}}", "5"),
        ("\\boxed{5\\text{ approximately}}", "5"),
        ("\\boxed{5 \\text{ less than } x}", "5"),
        ("\\boxed{2\\pi h}", "2\\pi"),
        ("答：13 个", "12"),
    ]),
    "rounded decimals": ([
        ("\\boxed{0.5}", "1/2"),
        ("\\boxed{0.125}", "\\frac18"),
        ("\\boxed{\\frac{14}{3}}", "4.67"),
        ("\\boxed{4.67}", "4.67"),
        ("\\boxed{0.\\overline{3}}", "\\frac13"),
        ("\\boxed{2.50}", "\\frac52"),
    ], [
        ("\\boxed{4.67}", "\\frac{14}{3}"),
        ("\\boxed{0.33}", "\\frac13"),
        ("\\boxed{0.333}", "\\frac13"),
        ("\\boxed{13.29}", "\\frac{3840}{289}"),
        ("\\boxed{0.67}", "\\frac23"),
        ("\\boxed{(0.4, 1.6667]}", "(\\frac{2}{5}, \\frac{5}{3}]"),
        ("\\boxed{1.41}", "\\sqrt2"),
    ]),
    "notation": ([
        ("\\boxed{2**(1/4)}", "\\sqrt[4]{2}"),
        ("\\boxed{2^(1/4)}", "\\sqrt[4]{2}"),
        ("\\boxed{sqrt(3)}", "\\sqrt{3}"),
        ("\\boxed{(3*sqrt(5))/7}", "\\frac{3\\sqrt5}{7}"),
        ("\\boxed{\\sqrt(3)}", "\\sqrt{3}"),
        ("\\boxed{b}", "\\text{(B)}"),
        ("\\boxed{pi/2}", "\\frac{\\pi}{2}"),
        ("\\boxed{3*x**2}", "3x^2"),
        ("\\boxed{4.5 \\times 10^{33}}", "4.5e33"),
        ("\\boxed{4.5e33}", "4.5 \\cdot 10^{33}"),
        ("\\boxed{\\mathcal{B}}", "B"),
        ("\\boxed{\\text{e}}", "e"),
        ("\\boxed{\\mathrm{e}^{2}}", "e^2"),
        ("\\boxed{x \\approx 4.67}", "4.67"),
        ("\\boxed{\\frac{14}{3} \\approx 4.67}", "\\frac{14}{3}"),
        ("\\boxed{5 \\approx 5.0}", "5"),
        ("\\boxed{\\sqrt{2}\\cdot 3 + 2\\sqrt{3}}", "3\\sqrt2+2\\sqrt3"),
        ("\\boxed{cb+ba}", "ab+bc"),
        ("\\boxed{\\pi r^2 + 2\\pi r h}", "2 \\pi hr+r^2\\pi"),
    ], [
        ("\\boxed{2**(1/3)}", "\\sqrt[4]{2}"),
        ("\\boxed{sqrt(2)}", "\\sqrt{3}"),
        ("\\boxed{\\sqrt(2)}", "\\sqrt{3}"),
        ("\\boxed{c}", "\\text{(B)}"),
        ("\\boxed{4.5e32}", "4.5 \\times 10^{33}"),
        ("\\boxed{\\mathcal{C}}", "B"),
        ("\\boxed{x \\approx 4.68}", "4.67"),
        ("\\boxed{\\frac{14}{3} \\approx 4.6}", "\\frac{14}{3}"),
        ("\\boxed{\\frac{13}{3} \\approx 4.67}", "\\frac{14}{3}"),
        ("\\boxed{7 \\approx 5}", "7"),
        ("\\boxed{\\sqrt{2}\\cdot 3 + 3\\sqrt{3}}", "3\\sqrt2+2\\sqrt3"),
    ]),
    "answers found": ([
        ("Some work.\nAnswer $ \\frac{1}{2} $", "\\frac12"),
        ("**Answer** \\(12\\)", "12"),
        ("Calculons.\nRéponse : $7$", "7"),
        ("计算过程……\n答案：$\\frac{1}{2}$", "\\frac12"),
        ("答：7", "7"),
        ("Respuesta: 12", "12"),
        ("So the answer is $\\frac{1}{\n2}$.", "\\frac12"),
        ("Adding the parts gives $\\frac{1}{\n2}$ of the cake.", "\\frac12"),
        ("It costs $5 and\nthen $6 more, so 6 in all", "6"),
    ], [
        ("Calculons.\nRéponse : 8", "7"),
        ("答案：8", "7"),
        ("Check the answer $x = 3$ works.\nAnswer $ 4 $", "3"),
    ]),
    "decimal commas": ([
        ("\\boxed{1,22}", "1.22"),
        ("\\boxed{1000,99}", "1000.99"),
        ("\\boxed{0,5}", "\\frac12"),
        ("\\boxed{-0,25}", "-\\frac{1}{4}"),
        ("\\boxed{1.22}", "1,22"),
        ("\\boxed{1,234}", "1234"),
        ("\\boxed{1, 22}", "1,22"),
    ], [
        ("\\boxed{1,220}", "1.22"),
        ("\\boxed{1,234}", "1.234"),
        ("\\boxed{1,22}", "122"),
        ("\\boxed{1,5}", "15"),
        ("\\boxed{1,5}", "2"),
        ("\\boxed{1,22}", "1.23"),
    ]),
    "more phrasings": ([
        ("So the two solutions are $\\boxed{2}$ and $\\boxed{-3}$.", "-3, 2"),
        ("The roots are \\boxed{2} \\text{ and } \\boxed{-3}.", "\\{2,-3\\}"),
        ("We get \\boxed{5}. Wait, I made an error. Recomputing gives \\boxed{7}.", "7"),
        ("The answer is $(p, q) = (3, 2)$.", "(3,2)"),
        ("The answer is $p = 3, q = 2$.", "(3,2)"),
        ("The answer is $x = 1$ or $x = 2$.", "1,2"),
        ("The answer is $1$; $2$.", "1, 2"),
        ("\\boxed{x=\\pm 2}", "\\pm 2"),
        ("\\boxed{x=2 \\text{ or } x=-2}", "\\pm 2"),
        ("\\boxed{x = -2, 2}", "\\pm 2"),
        ("The answer is $125$ miles.", "125"),
        ("He drives $\\boxed{125 \\text{ miles}}$.", "$125$ miles"),
        ("\\boxed{125 \\mathrm{~miles}}", "125"),
        ("\\boxed{12\\pi\\text{ in}^2}", "12\\pi"),
        ("\\boxed{4.\\overline{6}}", "\\frac{14}{3}"),
        ("\\boxed{4\\frac{2}{3}}", "\\frac{14}{3}"),
        ("\\boxed{3^(1/2)}", "\\sqrt{3}"),
        ("\\boxed{x**2 - 1}", "x^2-1"),
        ("\\boxed{exp(2)}", "e^2"),
        ("\\boxed{45\\times 10^{32}}", "4.5e33"),
        ("\\boxed{\\mathrm{e}}", "2.718"),
        ("Réponse finale : 12", "12"),
        ("答案是 $\\frac{1}{2}$", "\\frac12"),
        ("最终答案：12", "12"),
        ("**答案**：12", "12"),
        ("Ответ: 12", "12"),
        ("答案是 12。", "12"),
        ("\\boxed{12,3456}", "12.3456"),
        ("\\boxed{3}", "f'(2)=3"),
        ("\\boxed{f'(x)=2x}", "2x"),
    ], [
        ("So the two solutions are $\\boxed{2}$ and $\\boxed{-3}$.", "2"),
        ("We get \\boxed{5}. Wait, I made an error. Recomputing gives \\boxed{7}.", "5"),
        ("The answer is \\boxed{5} or \\boxed{7}.", "7"),
        ("The answer is \\boxed{5}, or possibly \\boxed{7}.", "5, 7"),
        ("Final answer: \\boxed{(C)} or \\boxed{(D)}", "D"),
        ("The answer is either 3 or 5.", "3"),
        ("The answer is (C) or (D).", "C"),
        ("The answers are 1, 2, 3, 4, 5, 6", "3"),
        ("\\boxed{\\text{(A)}, \\text{(B)}, \\text{(C)}}", "B"),
        ("\\boxed{x=2}", "\\pm 2"),
        ("\\boxed{\\approx 4.67}", "\\frac{14}{3}"),
        ("\\boxed{4.5 \\times 10^{32}}", "4.5e33"),
        ("\\boxed{\\mathrm{e}}", "3"),
        ("\\boxed{3,14}", "\\pi"),
        ("\\boxed{12,345}", "12.345"),
        ("\\boxed{f(x)=2x}", "f'(x)=2x"),
        ("\\boxed{B'=(1,2)}", "A'=(1,2)"),
        ("\\boxed{6} \\boxed{9}", "9"),
    ]),
}

RIGHT = [(k, c, g) for k, (right, _) in CLASSES.items() for c, g in right]
WRONG = [(k, c, g) for k, (_, wrong) in CLASSES.items() for c, g in wrong]


@pytest.mark.parametrize("cls,completion,gold", RIGHT)
def test_right_answer_scores_one(cls: str, completion: str, gold: str, unhurried) -> None:
    assert score(completion, gold) == 1.0


@pytest.mark.parametrize("cls,completion,gold", WRONG)
def test_near_miss_scores_zero(cls: str, completion: str, gold: str) -> None:
    assert score(completion, gold) == 0.0


def test_extract_answer_gives_the_whole_list_of_boxes() -> None:
    assert extract_answer("\\boxed{1}, \\boxed{2} and \\boxed{3}") == "1, 2, 3"
    assert extract_answer("First try \\boxed{6}. That is wrong; redo it: \\boxed{9}") == "9"


def test_hostile_box_sprays_stay_fast() -> None:
    cases = [("\\boxed{1}, " * 100_000, "1"), ("\\boxed{1} or maybe " * 50_000 + "\\boxed{1}", "1"),
             ("$1$ and " * 100_000, "1"), ("(p,q)=" * 20_000 + "(1,2)", "(1,2)"),
             ("\\boxed{" + "sqrt(" * 3000 + "2" + ")" * 3000 + "}", "2"), ("\\boxed{2**" * 2000 + "}" * 2000, "1")]
    for completion, gold in cases:
        # The 1 s bound is on the work: this process's CPU time (extraction, parsing) is what a spray could blow
        # up, and a loaded machine does not inflate it as it does the wall clock. The sympy worker's share is cut
        # at its budget (wall clock) and the worker killed; a generous wall bound says that cut happened.
        t, cpu = time.monotonic(), time.process_time()
        score(completion, gold)
        assert time.process_time() - cpu < 1.0, completion[:40]
        assert time.monotonic() - t < 15.0, completion[:40]


def test_import_starts_no_worker_and_first_check_is_right() -> None:
    # A fresh interpreter: importing starts no process; the first check that needs sympy still gets its verdict.
    code = ("import rewards.math as m, rewards.mathcheck.worker as w; assert w.POOL.active is None; "
            "assert m.score('\\\\boxed{\\\\sqrt{8}}', '2\\\\sqrt{2}') == 1.0; "
            "assert m.score('\\\\boxed{\\\\sqrt{8}}', '3\\\\sqrt{2}') == 0.0; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
