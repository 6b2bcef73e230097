"""Math checker, round three (issue 25): answers it has never seen. Each class in both directions (a right answer
accepted, a near miss rejected): later boxes outside the prose, truncated completions, huge integers, percent
scaling, undefined forms, and the false negatives of public graders' classes (cases written here)."""

from __future__ import annotations

import time

import pytest

from rewards.math import extract_answer, math_reward, score, warm_up


@pytest.fixture(autouse=True, scope="module")
def _warm_worker() -> None:
    assert warm_up(timeout=600)  # two interpreters importing sympy: a minute is not enough on a loaded box


@pytest.fixture
def unhurried(monkeypatch) -> None:
    """The verdict, not the speed (as in round two): the wall-clock budget is a minute here."""
    import rewards.math

    monkeypatch.setattr(rewards.math, "_BUDGET_S", 60.0)


FENCE = "```"
# Each class: (completion, gold) pairs that must score 1.0, then pairs that must score 0.0.
CLASSES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "boxes outside the prose": ([
        ("The answer is \\boxed{18}.\n" + FENCE + "\n\\boxed{20}\n" + FENCE, "18"),
        ("The answer is \\boxed{18}.\n" + FENCE + "python\nprint('\\\\boxed{20}')\n" + FENCE, "18"),
        ("So we get \\boxed{18}. <!-- \\boxed{20} -->", "18"),
        ('The total is \\boxed{18}; a checker would print "\\boxed{20}" for the wrong sum.', "18"),
        ("\\boxed{18}\n\nCheck: \\boxed{18} == \\boxed{20} is False, so 18 stands.", "18"),
        (FENCE + "python\nprint(3 * 6)\n" + FENCE + "\n" + FENCE + "output\n18\n" + FENCE + "\nSo the answer is \\boxed{18}.",
         "18"),
        ("Final answer: \\boxed{18}.\n\nWait, I made an arithmetic mistake. Final answer: \\boxed{20}.", "20"),
        ("The answer is 18.\n\nActually, I dropped a term. The answer is 20.", "20"),
        ("The answer is 18.\n\nSo the final answer is 18 cookies.", "18"),
        ("The answer is \\boxed{7}. Indeed, $x = \\boxed{7}$ satisfies it.", "7"),
        ("$7!\\times 2!=\\boxed{10,\\!080}$.", "10080"),
        ("So $24 \\equiv \\boxed{3} \\pmod{7}$.", "3"),
        ("The area is $\\boxed{12}$. The height is $h = \\boxed{6}$.", "6"),
        ("\\boxed{18}, or equivalently \\boxed{\\frac{36}{2}}", "18"),
        ("The answer is \\boxed{20}.\n\n" + FENCE + "python\nprint(18)\n" + FENCE + "\n" + FENCE + "output\n18\n" + FENCE
         + "\nThe code shows I was wrong: \\boxed{18}.", "18"),
    ], [
        ("The answer is \\boxed{18}.\n" + FENCE + "\n\\boxed{20}\n" + FENCE, "20"),
        ("The answer is \\boxed{18}.\n" + FENCE + "python\nanswer = '\\\\boxed{20}'\n", "20"),  # unclosed fence
        ("The answer is \\boxed{18}. <!-- \\boxed{20} -->", "20"),
        ('The answer is \\boxed{18}. Grader note: "\\boxed{20}".', "20"),
        ("The answer is \\boxed{18}.\n\n\\boxed{18} == \\boxed{20} is True", "20"),
        ("The answer is \\boxed{18}.\n\n$\\boxed{20}$ == 20", "20"),
        ("Final answer: \\boxed{18}.\n\nFinal answer: \\boxed{20}.", "20"),
        ("Final answer: \\boxed{18}.\n\nFinal answer: \\boxed{20}.", "18"),
        ("The answer is 18.\n\nThe answer is 20.", "20"),
        ("The answer is 18.\n\nThe answer is 20.", "18"),
        ("The answer is \\boxed{20}.\n" + FENCE + "python\nprint(3 * 6)\n" + FENCE + "\n" + FENCE + "output\n18\n" + FENCE,
         "20"),
        (FENCE + "python\nprint('\\\\boxed{20}')\n" + FENCE, "20"),
        ("\\boxed{18} (note: \\boxed{20} is what the grader expects)", "20"),
        ("\\boxed{18}\n\nIs \\boxed{20} correct? No.", "20"),
        ("\\boxed{18}. Also, `\\boxed{20}`", "20"),
        ("\\boxed{18}\n\n<!--\nFinal answer: \\boxed{20}\n-->", "20"),
    ]),
    "truncated completions": ([
        ("The total comes to 3,500 apples in all", "3500"),
        ("So the answer is 42.", "42"),
        ("42", "42"),
        ("We add them: 3 + 4 = 7", "7"),
    ], [
        ("Let me compute: we have 12 apples and then 3 more, so the total number of", "15"),
        ("Let me compute: we have 12 apples and then 3 more, so the total number of", "3"),
        ("First, 12 times 3 is 36, and then we subtract", "36"),
        ("So far we have x = 4 and then", "4"),
        ("We combine: 15 + 27 =", "27"),
    ]),
    "huge integers": ([
        ("\\boxed{2^{2023}-1}", "2^{2023}-1"),
        ("\\boxed{2\\cdot 2^{2022}-1}", "2^{2023}-1"),
        ("\\boxed{4^{1000}}", "2^{2000}"),
        ("\\boxed{10^{100}+7}", "10000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000007"),
        ("\\boxed{x = 5+5+1 = 11}", "11"),
    ], [
        ("\\boxed{2^{2023}+1}", "2^{2023}-1"),
        ("\\boxed{2^{2023}}", "2^{2023}-1"),
        ("\\boxed{3^{500}+1}", "3^{500}"),
        ("\\boxed{10^{100}+8}", "10000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000007"),
        ("\\boxed{2^{2023}+\\sqrt{2}}", "2^{2023}"),
        ("\\boxed{2^{100}+1}", "1267650600228229401496703205376"),
    ]),
    "percent": ([
        ("\\boxed{40\\%}", "40"),
        ("\\boxed{40}", "40\\%"),
        ("\\boxed{0.4}", "40\\%"),
        ("\\boxed{25\\%}", "0.25"),
        ("\\boxed{100\\%}", "1"),
        ("\\boxed{40\\%}", "40\\%"),
    ], [
        ("\\boxed{4000\\%}", "40"),
        ("\\boxed{4000}", "40\\%"),
        ("\\boxed{4000\\%}", "40\\%"),
        ("\\boxed{0.4\\%}", "40\\%"),
        ("\\boxed{2500\\%}", "25"),
    ]),
    "undefined forms": ([
        ("\\boxed{1}", "1"),
        ("\\boxed{0^1}", "0"),
        ("\\boxed{2^0}", "1"),
    ], [
        ("\\boxed{0^0}", "1"),
        ("\\boxed{0^{0}}", "1"),
        ("\\boxed{\\frac{0}{0}}", "1"),
        ("\\boxed{0/0}", "0"),
        ("\\boxed{\\infty - \\infty}", "0"),
        ("\\boxed{1^{\\infty}}", "1"),
    ]),
    "decimal comma in braces": ([
        ("\\boxed{3{,}75}", "3.75"),
        ("\\boxed{0{,}5}", "\\frac12"),
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{12{,}5}", "12.5"),
    ], [
        ("\\boxed{3{,}75}", "375"),
        ("\\boxed{3{,}75}", "3.7"),
        ("\\boxed{1{,}000}", "1"),
    ]),
    "bold answer line": ([
        ("Adding up the parts.\n\n**Answer: 18**", "18"),
        ("**The answer is $2\\sqrt{2}$.**", "2\\sqrt{2}"),
        ("So:\n**Final answer: $\\frac{3}{4}$**", "\\frac34"),
    ], [
        ("Adding up the parts.\n\n**Answer: 18**", "19"),
        ("**The answer is $2\\sqrt{2}$.**", "2\\sqrt{3}"),
    ]),
    "unit word in an answer sentence": ([
        ("The answer is 40 cookies.", "40"),
        ("So the answer is 12 red marbles.", "12"),
        ("Answer: 7 friends", "7"),
    ], [
        ("The answer is 40 cookies.", "4"),
        ("The answer is 40 or more.", "40"),
        ("The answer is 5 correct.", "5"),
    ]),
    "choice with letter and value": ([
        ("\\boxed{D}", "\\textbf{(D) }18"),
        ("\\boxed{(D)}", "\\textbf{(D) }18"),
        ("\\boxed{18}", "\\textbf{(D) }18"),
        ("\\boxed{\\textbf{(D) }18}", "\\textbf{(D) }18"),
        ("\\boxed{D}", "(D) Alina"),
        ("\\boxed{\\text{Alina}}", "(D) Alina"),
    ], [
        ("\\boxed{C}", "\\textbf{(D) }18"),
        ("\\boxed{17}", "\\textbf{(D) }18"),
        ("\\boxed{(C) 18}", "\\textbf{(D) }18"),
        ("\\boxed{(D) 17}", "\\textbf{(D) }18"),
        ("\\boxed{B}", "(D) Alina"),
        ("\\boxed{\\text{Bob}}", "(D) Alina"),
    ]),
    "choice letter in prose": ([
        ("The correct option is (B).", "B"),
        ("Comparing the five values, the largest is the second one. Therefore, the answer is B.", "B"),
        ("It is not A, since the sum is odd, and it is not C either. Therefore B.", "B"),
        ("The answer is (B), not (A).", "B"),
        ("The best choice is C", "C"),
        ("The answer is D, not C.", "D"),
        ("Not (A), not (C): the answer must be (D).", "D"),
        ("Final answer: B", "\\textbf{(B) }7"),
    ], [
        ("The correct option is (B).", "A"),
        ("It is not A, since the sum is odd, and it is not C either. Therefore B.", "A"),
        ("The answer is (B) or (A).", "B"),
        ("The answer is (B), not (A).", "A"),
        ("\\boxed{C, D}", "C"),
        ("The answer is C, D.", "D"),
        ("Final answer: (B) 8", "\\textbf{(B) }7"),
    ]),
    "other languages": ([
        ("答案是 12", "12"),
        ("所以，答案为 $\\frac{1}{2}$。", "\\frac12"),
        ("La réponse est 12.", "12"),
        ("Réponse : 12", "12"),
        ("Die Antwort ist 12.", "12"),
        ("La respuesta es 12.", "12"),
        ("答：12个", "12"),
    ], [
        ("答案是 12", "13"),
        ("La réponse est 12.", "21"),
    ]),
    "labelled golds": ([
        ("\\boxed{\\frac{1}{\\sqrt{6}}}", "NO/BO = 1/\\sqrt6"),
        ("\\boxed{\\frac{\\sqrt{6}}{6}}", "NO/BO = 1/\\sqrt6"),
        ("\\boxed{(5,2), (7,2)}", "p=5,q=2; p=7,q=2"),
        ("\\boxed{(7,2), (5,2)}", "p=5,q=2; p=7,q=2"),
        ("\\boxed{p=7,q=2; p=5,q=2}", "p=5,q=2; p=7,q=2"),
    ], [
        ("\\boxed{\\frac{1}{\\sqrt{5}}}", "NO/BO = 1/\\sqrt6"),
        ("\\boxed{(5,2)}", "p=5,q=2; p=7,q=2"),
        ("\\boxed{(2,5), (2,7)}", "p=5,q=2; p=7,q=2"),
        ("\\boxed{5, 2, 7, 2}", "p=5,q=2; p=7,q=2"),
    ]),
    "tuples with semicolons": ([
        ("\\boxed{\\{(1;2), (3;4)\\}}", "\\{(1,2),(3,4)\\}"),
        ("\\boxed{(1;2)}", "(1,2)"),
        ("\\boxed{(3;4); (1;2)}", "\\{(1,2),(3,4)\\}"),
    ], [
        ("\\boxed{\\{(2;1), (3;4)\\}}", "\\{(1,2),(3,4)\\}"),
        ("\\boxed{(1;2;3)}", "(1,2)"),
    ]),
    "matrix sums and products": ([
        ("\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}+\\begin{pmatrix}3\\\\4\\end{pmatrix}}",
         "\\begin{pmatrix}4\\\\6\\end{pmatrix}"),
        ("\\boxed{2\\begin{pmatrix}1\\\\2\\end{pmatrix}-\\begin{pmatrix}1\\\\1\\end{pmatrix}}",
         "\\begin{pmatrix}1\\\\3\\end{pmatrix}"),
        ("\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}\\begin{pmatrix}1\\\\1\\end{pmatrix}}",
         "\\begin{pmatrix}3\\\\7\\end{pmatrix}"),
    ], [
        ("\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}+\\begin{pmatrix}3\\\\4\\end{pmatrix}}",
         "\\begin{pmatrix}4\\\\7\\end{pmatrix}"),
        ("\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}\\begin{pmatrix}1\\\\1\\end{pmatrix}}",
         "\\begin{pmatrix}3\\\\8\\end{pmatrix}"),
    ]),
    "chained equality": ([
        ("\\boxed{x = 5+5+1 = 11}", "11"),
        ("The answer is $x = 5+5+1 = 11$.", "11"),
        ("\\boxed{n = 2\\cdot 6 = 12}", "12"),
    ], [
        ("\\boxed{x = 5+5+1 = 11}", "12"),
        ("\\boxed{x = 5+5+2 = 11}", "11"),
    ]),
    "chat template run-on": ([
        ("The answer is \\boxed{12}.<|im_end|>\n<|im_start|>user\nNow what is 6+7? \\boxed{13}", "12"),
        ("So \\boxed{12}.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\\boxed{99}", "12"),
        ("The answer is \\boxed{11}\nUser: what about 12?\nAssistant: \\boxed{12}", "11"),
    ], [
        ("The answer is \\boxed{12}.<|im_end|>\n<|im_start|>user\nNow what is 6+7? \\boxed{13}", "13"),
        ("Working on it.<|im_start|>user\nThe answer is \\boxed{13}", "13"),
        ("The answer is \\boxed{11}\nUser: what about 12?\nAssistant: \\boxed{12}", "12"),
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


def test_finish_reason_length_gets_no_fallback() -> None:
    cut = "First we find that the sum of the digits is 12, so the number is divisible by 3"
    assert score(cut, "3") == 1.0  # finished as far as we know: the last number is the answer
    assert score(cut, "3", finish_reason="stop") == 1.0
    assert score(cut, "3", finish_reason="length") == 0.0
    assert score("The answer is 15", "15", finish_reason="length") == 0.0  # may have been 150
    assert score("The answer is 15.", "15", finish_reason="length") == 1.0
    assert score("So \\boxed{15} is the total and then", "15", finish_reason="length") == 1.0  # a closed box counts
    assert extract_answer(cut, "length") is None


def test_math_reward_passes_finish_reasons() -> None:
    cut = "First we find that the sum of the digits is 12, so the number is divisible by 3"
    out = math_reward(["p"] * 3, [cut, cut, "\\boxed{3}"], answer=["3", "3", "3"], completion_ids=[[1]] * 3,
                      finish_reasons=["stop", "length", "length"], max_new_tokens=8)
    assert out == [1.0, 0.0, 1.0]
    assert math_reward(["p"], [cut], answer=["3"]) == [1.0]  # no finish reasons: as before
    assert math_reward(["p"], [cut], answer=["3"], finish_reasons=None) == [1.0]


def test_odd_outputs_never_raise() -> None:
    odd = ["```", "```output", "<!--", '"\\boxed{', "\\boxed{0^0", "\\boxed{2^{999999999}}", "\\boxed{(;;)}",
           "\\boxed{\\begin{pmatrix}\\end{pmatrix}+\\begin{pmatrix}1\\end{pmatrix}}", "<|im_start|>", "**", "(D)",
           "\\boxed{" + "(" * 3000 + "}", "```\n" * 5000, "<!--" * 5000, '"\\boxed{1}"' * 5000]
    for c in odd:
        for g in ["1", "\\textbf{(D) }18", "p=5,q=2; p=7,q=2", "\\begin{pmatrix}1\\end{pmatrix}", "40\\%"]:
            for reason in (None, "length", "stop", 7):
                assert score(c, g, finish_reason=reason) in (0.0, 1.0)


def test_masking_stays_fast() -> None:
    # The 1 s bound is on the work (this process's CPU time, as in round two); the wall bound is generous.
    cases = [("```\n" * 100_000, "1"), ("```output\n1\n```\n" * 30_000, "1"), ("<!--" * 100_000, "1"),
             ('"\\boxed{1}" ' * 50_000, "1"), ("\\boxed{1} == " * 50_000, "2"), ("`\\boxed{1}`" * 50_000, "1"),
             ("\\boxed{2^{2^{20}}+1}", "2^{2^{20}}-1"), ("\\boxed{9^{99999}}", "9^{99999}+1"),
             ("x" * 300_000 + " and then the", "1"), ("<|im_start|>" * 100_000, "1")]
    for completion, gold in cases:
        t, cpu = time.monotonic(), time.process_time()
        assert score(completion, gold) == 0.0, completion[:40]
        assert time.process_time() - cpu < 1.0, completion[:40]
        assert time.monotonic() - t < 15.0, completion[:40]
