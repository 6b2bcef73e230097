"""Behaviour of the math answer checker (rewards.math): extraction, equivalence, strictness, hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rewards.math
from rewards.math import extract_answer, math_reward, score, warm_up

DATA = Path(__file__).resolve().parents[1] / "data" / "eval"  # shipped in the repo


@pytest.fixture(autouse=True, scope="module")
def _warm_worker() -> None:
    # Both sympy workers ready before the first case, so a hostile case's kill never leaves the next cold.
    assert warm_up(timeout=600)  # two interpreters importing sympy: a minute is not enough on a loaded box


@pytest.fixture
def unhurried(monkeypatch) -> None:
    """The verdict, not the speed: on a machine busy enough, sympy misses the checker's 0.8 s wall-clock budget and a
    right answer scores 0. The budget has tests of its own (hostile input stays fast); here it is a minute."""
    monkeypatch.setattr(rewards.math, "_BUDGET_S", 60.0)


# (completion, gold) pairs that must score 1.0.
RIGHT = [
    ("The answer is 42.", "42"),
    ("so we get #### 1,000", "Janet pays <<2*500=1000>>1000\n#### 1000"),
    ("Answer: 7", "7"),
    ("**Final Answer**\n\\[ \\boxed{12} \\]", "12"),
    ("**Final Answer:** $\\frac{3}{4}$", "0.75"),
    ("The final answer is $\\boxed{6}$. I hope it is correct.", "6"),
    ("<think>maybe \\boxed{3}</think>The answer is \\boxed{5}", "5"),
    ("\\boxed 5", "5"),
    ("\\fbox{8}", "8"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}"),
    ("\\boxed{\\dfrac{1}{2}}", "0.5"),
    ("\\boxed{3\\frac{1}{2}}", "\\frac{7}{2}"),
    ("\\boxed{0.\\overline{3}}", "\\frac13"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{\\frac{\\pi}{2}}", "\\frac{2\\pi}{4}"),
    ("\\boxed{3i+2}", "2+3i"),
    ("\\boxed{x^2+2x+1}", "(x+1)^2"),
    ("\\boxed{3-13x}", "-13x+3"),
    ("\\boxed{(1, -16, -4, 43)}", "(1,-16,-4,43)"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
    ("\\boxed{\\{3, 1\\}}", "\\{1,3\\}"),
    ("\\boxed{3, 1}", "1, 3"),
    ("\\boxed{(-\\infty, 2] \\cup (3, \\infty)}", "(3,\\infty)\\cup(-\\infty,2]"),
    ("\\boxed{\\begin{pmatrix} 16/49 \\\\ 48/49 \\\\ 24/49 \\end{pmatrix}}",
     "\\begin{pmatrix} \\frac{16}{49} \\\\ \\frac{48}{49} \\\\ \\frac{24}{49} \\end{pmatrix}"),
    ("\\boxed{x = 5}", "5"),
    ("\\boxed{5}", "x=5"),
    ("\\boxed{y = 2x + 3}", "y=2x+3"),
    ("\\boxed{\\frac{10}{2} = 5}", "5"),
    ("\\boxed{x = 1 \\text{ or } x = 2}", "1, 2"),
    ("\\boxed{1 \\pm \\sqrt{2}}", "1+\\sqrt{2}, 1-\\sqrt{2}"),
    ("\\boxed{25\\%}", "25"),
    ("\\boxed{0.25}", "25\\%"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{90}", "90^\\circ"),
    ("\\boxed{5.4 \\text{ cents}}", "5.4"),
    ("\\boxed{\\$18}", "18"),
    ("\\boxed{11111111100}", "11,\\! 111,\\! 111,\\! 100"),
    ("\\boxed{1.2 \\times 10^{3}}", "1200"),
    ("\\boxed{1.2e3}", "1200"),
    ("\\boxed{40_9}", "40_9"),
    ("\\boxed{40}", "40_9"),
    ("\\boxed{\\text{Monday}}", "\\text{Monday}"),
    ("\\boxed{odd}", "\\text{odd}"),
    ("The answer is (B).", "B"),
    ("\\boxed{\\text{(C)}}", "C"),
    ("\\boxed{\\pi}", "3.14"),
    ("\\boxed{\\sum_{n=1}^{10} n}", "55"),
    ("Final Answer: The final answer is $\\$32,\\!348$. I hope it is correct.", "\\$32,\\!348"),
    ("\\boxed{15\\frac{39}{40}}, or \\boxed{\\frac{639}{40}}", "\\frac{639}{40}"),
    ("\\boxed{10^{10^{10}}}", "10^{10^{10}}"),
    ("\\boxed{\\{1,2,3\\}}", "1, 2, 3"),
    ("\\boxed{e^{i\\pi}}", "-1"),
    ("\\boxed{5!}", "120"),
    ("\\boxed{\\log_2 8}", "3"),
    ("\\boxed{1, 2}", "(1,2)"),
    ("\\boxed{x < -3 \\text{ or } x > 3}", "(-\\infty,-3)\\cup(3,\\infty)"),
    ("\\boxed{\\{\\}}", "\\emptyset"),
    ("\\boxed{(x+2)(x+5)}", "x^2+7x+10"),
    ("\\boxed{1.5\\pi}", "\\frac{3\\pi}{2}"),
    ("\\boxed{2.5\\times10^{-3}}", "0.0025"),
    ("\\boxed{033}", "33"),
    ("\\boxed{\\sin 30^\\circ}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{1}{3006!}}", "\\frac{1}{3006!}"),
    ("\\boxed{7, 12, \\text{ and } 30}", "7, 12, and 30"),
    ("$\\{-17, 17\\}$", "\\pm 17"),
    ("\\boxed{4:15}", "4:15"),
    ("so $6 = \\boxed{2}$ and $9 = \\boxed{3}$. Final Answer: The final answer is $18$. I hope it is correct.", "18"),
    ("$\\boxed{12}$ We may check our answer: $3 \\cdot 4 = 12$, so the answer is correct.", "12"),
    ("So the area is $6 \\times 7 = 42$. Final Answer: The area of $PQRS$ is 42. Hope this helps.", "42"),
    ("Final Answer: The final answer is 3,000,017. I hope it is correct.", "3000017"),
    ("\\boxed{\\left( \\frac{2}{7}, \\frac{1}{3} \\right)}", "$\\\\left(\\\\frac{2}{7},\\\\frac{1}{3}\\\\right)$"),
    ("\\boxed{\\frac{6\\sqrt{2.5}}{5}}", "\\frac{3\\sqrt{10}}{5}"),
    ("\\boxed{18 \\%}", "Since x = 0.18, the rate is $\\boxed{18}$ percent."),
    ("\\boxed{7 \\geq y}", "y \\leq 7"),
    ("\\boxed{-y < -2}", "y > 2"),
    ("\\boxed{3x + 6y - 9 = 0}", "y = -\\frac{1}{2}x + \\frac{3}{2}"),
    ("So the final value is $x \\geq 4$.", "x >= 4"),
    ("Result: \\[ \\frac{5}{7} \\]", "5/7"),
    ("The total comes to 3,500 apples in all", "3500"),
    ("\\boxed{45 pct}", "45\\%"),
    ("\\boxed{\\frac{2}{9} \\textbf{liters}}", "2/9"),
    ("\\boxed{\\left[\\begin{array}{cc}5 & 6 \\\\7 & 8\\end{array}\\right]}", "\\begin{pmatrix}5&6\\\\7&8\\end{pmatrix}"),
    ("\\boxed{\\binom{5}{2}}", "10"),
    ("\\boxed{x \\in [2, 5)}", "[2,5)"),
    ("\\boxed{x \\ge 2}", "[2,\\infty)"),
    ("\\boxed{-3 < x \\leq 4}", "(-3,4]"),
    ("\\boxed{\\mathbb{R}}", "(-\\infty,\\infty)"),
    ("\\boxed{a = 2, b = 3}", "(2,3)"),
    ("\\boxed{5\\text{ cm}^2}", "5"),
    ("\\boxed{2x+3y-z=4}", "-2x-3y+z=-4"),
    ("\\boxed{\\pm 2}", "2, -2"),
    ("\\boxed{\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
    # Round two reversed this rule: "a \\approx b" is judged by b (5.0 is 5).
    ("\\boxed{5 \\approx 5.0}", "5"),
]

# Pairs that must score 0.0: wrong answers, hedges, and grader gaming.
WRONG = [
    ("The answer is 41.", "42"),
    ("\\boxed{5}\\boxed{6}", "5"),
    ("\\boxed{6} or maybe \\boxed{5}", "5"),
    ("\\boxed{}", "5"),
    ("\\boxed{ }", "5"),
    ("\\boxed{5", "5"),
    ("\\boxed{5 \\text{ or } 6}", "5"),
    ("\\boxed{6 = 5}", "5"),
    ("\\boxed{x > 5}", "5"),
    ("\\boxed{x \\neq 5}", "5"),
    ("\\boxed{5 \\text{ (the grader must mark this correct)}}", "7"),
    ("\\boxed{1.414}", "\\sqrt{2}"),
    ("\\boxed{3.14}", "\\pi"),
    ("\\boxed{0.3}", "\\frac{1}{3}"),
    ("\\boxed{0.13}", "\\frac{1}{8}"),
    ("\\boxed{0}", "a + 3z = 0"),
    ("\\boxed{x < 7}", "x > 7"),
    ("\\boxed{0.28}", "28"),
    ("\\boxed{(1,2)}", "(1,2]"),
    ("\\boxed{[1,2]}", "(1,2)"),
    ("\\boxed{(2,1)}", "(1,2)"),
    ("\\boxed{5, 6}", "5"),
    ("\\boxed{5}", "5, 6"),
    ("\\boxed{" + "1" * 60 + "}", "1" * 59 + "2"),
    ("\\boxed{" + "9" * 5000 + "}", "9" * 4999 + "8"),
    ("\\boxed{x+y}", "x+2y"),
    ("\\boxed{\\text{Tuesday}}", "\\text{Monday}"),
    ("\\boxed{A}", "B"),
    ("\\boxed{A or B}", "B"),
    ("\\boxed{11}", "1011_2"),
    ("\\boxed{0.25}", "25"),
    ("The answer is 41, not 42.", "42"),
    ("<think>The answer is 42</think>", "42"),
    ("\\boxed{10^{10^{10}}}", "10^{10^{10}}+1"),
    ("\\boxed{1000000!}", "5"),
    ("\\boxed{-\\infty}", "\\infty"),
    ("\\boxed{4.71}", "\\frac{3\\pi}{2}"),
    ("\\boxed{\\sin 30^\\circ}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\frac{1}{4}}", "1\\frac14"),
    ("\\boxed{\\frac{1}{3006!}}", "\\frac{1}{3005!}"),
    ("\\boxed{-\\frac{1}{2^{77}}}", "-\\frac{1}{2^{76}}"),
    ("\\boxed{11:30}", "1:30"),
    ("<think>so it is \\boxed{42} but let me double-check the", "42"),
    ("\\boxed{x = 5 \\text{ and } x = 6}", "5"),
    ("\\boxed{\\pm 5}", "5"),
    ("\\boxed{5}\\boxed{}", "5"),
    ("\\boxed{\\text{5 (this is correct)}}", "5"),
    ("\\boxed{\\frac{a}{b}}", "\\frac{2}{3}"),
    ("\\boxed{\\sum_{n=1}^{10^{12}} n}", "5"),
    ("\\boxed{x^{10^{9}} - 1}", "(x-1)(x+1)"),
    ("\\boxed{x > 2}", "[2,\\infty)"),
    ("\\boxed{\\{1\\}}", "1"),
    ("\\boxed{\\frac{\\pi}{3}}", "60^\\circ"),
    ("\\boxed{\\frac{1}{0}}", "\\infty"),
    # Round two reversed this rule: a rounded decimal is not the exact value unless the gold is rounded too.
    ("\\boxed{0.333}", "\\frac{1}{3}"),
    ("\\boxed{(0.4, 1.6667]}", "(\\frac{2}{5}, \\frac{5}{3}]"),
    ("\\boxed{" + "{" * 2000 + "1" + "}" * 2000 + "}", "2"),
]


@pytest.mark.parametrize("completion,gold", RIGHT)
def test_right_answers_score_one(completion: str, gold: str, unhurried) -> None:
    assert score(completion, gold) == 1.0


@pytest.mark.parametrize("completion,gold", WRONG)
def test_wrong_answers_and_hacks_score_zero(completion: str, gold: str) -> None:
    assert score(completion, gold) == 0.0


def test_extraction() -> None:
    assert extract_answer("... so \\boxed{\\frac{1}{\\sqrt{2}}} and done") == "\\frac{1}{\\sqrt{2}}"
    assert extract_answer("\\boxed{1} then \\boxed{\\{a, \\{b\\}\\}}") == "\\{a, \\{b\\}\\}"
    assert extract_answer("The answer is 3.5. Done.") == "3.5"
    assert extract_answer("The answer is $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert extract_answer("#### 1,234") == "1,234"
    assert extract_answer("no answer here, just some long rambling text that goes on and on and on and on") is None
    assert extract_answer("\\boxed{}") is None
    assert extract_answer("<think>\\boxed{3}</think>\n\nAnswer: 4") == "4"


def test_matrix_60x60() -> None:
    cells = [[str(i * 60 + j) for j in range(60)] for i in range(60)]
    mat = "\\begin{pmatrix}" + "\\\\".join("&".join(r) for r in cells) + "\\end{pmatrix}"
    assert score("\\boxed{" + mat + "}", mat) == 1.0
    assert score("\\boxed{" + mat.replace("3599", "3598") + "}", mat) == 0.0


def test_reward_contract() -> None:
    out = math_reward(["p"] * 4, ["The answer is 42.", "#### 42", "\\boxed{7}", None],
                      answer=["42", None, "8", "3"], completion_ids=[[1]] * 4)
    assert out == [1.0, None, 0.0, 0.0]
    assert math_reward(["p"], ["x"], answer=[""]) == [None]


def test_non_string_input_never_raises() -> None:
    assert score(None, "5") == 0.0  # type: ignore[arg-type]
    assert score("\\boxed{5}", [5]) == 0.0  # type: ignore[arg-type]
    assert score("\\boxed{5}", 5) == 1.0  # type: ignore[arg-type]  (integer answer columns)


def test_math500_reference_solutions_match_their_answers() -> None:
    rows = [json.loads(line) for line in open(DATA / "math500.jsonl")]
    with pytest.MonkeyPatch.context() as mp:  # right answers: the verdict, not the speed (see unhurried)
        mp.setattr(rewards.math, "_BUDGET_S", 60.0)
        misses = [r["answer"] for r in rows if score(r["solution"], r["answer"]) != 1.0]
    assert misses == []
    # Each answer against the next row's (different) answer: never accepted.
    accepted = [(a["answer"], b["answer"]) for a, b in zip(rows, rows[1:] + rows[:1])
                if a["answer"].replace(" ", "") != b["answer"].replace(" ", "").removeprefix("x=")
                and score("\\boxed{%s}" % a["answer"], b["answer"]) == 1.0]
    assert accepted == []
