"""Every eval metric against values worked out by hand (the working is in the comments)."""

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from grpo.eval.metrics import (ProblemResult, aggregate, bootstrap_ci, maj_correct, majority_vote, normalize_answer,
                               pass_at_k, per_problem_values, report_ks, summarize)


def result(correct, answers=None, lengths=None, truncated=None):
    n = len(correct)
    return ProblemResult(correct=list(correct), answers=list(answers or [None] * n),
                         lengths=list(lengths or [1] * n), truncated=list(truncated or [False] * n))


# ------------------------------------------------------------------------------------------------ pass@k


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (4, 1, 1, 0.25),  # pass@1 is c/n
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (4, 0, 1, 0.0),  # nothing correct: never passes
    (4, 0, 4, 0.0),
    (4, 4, 1, 1.0),  # all correct
    (4, 2, 3, 1.0),  # n - c = 2 < k = 3: any 3 samples include a correct one
    (4, 1, 4, 1.0),  # k = n: passes iff c >= 1
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(1000, 500) ~ 2.7e299 and C(2000, 1000) overflows a float; the product form stays exact to 1e-12.
    for n, c, k in [(1000, 500, 500), (2000, 3, 1000), (2000, 1997, 2), (1000, 1, 1)]:
        exact = 1 - Fraction(comb(n - c, k), comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)


@pytest.mark.parametrize("n,c,k", [(4, 1, 5), (4, 5, 1), (4, 1, 0), (4, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_rises_with_k_and_c():
    row = [pass_at_k(8, 2, k) for k in range(1, 9)]
    assert row == sorted(row) and row[0] == pytest.approx(0.25) and row[-1] == 1.0
    col = [pass_at_k(8, c, 3) for c in range(9)]
    assert col == sorted(col) and col[0] == 0.0 and col[-1] == 1.0


# ------------------------------------------------------------------------------------------------ maj@k


def test_majority_vote_plain_majority():
    assert majority_vote(["3", "5", "5", "7"]) == 1  # "5" twice; its first sample is index 1


def test_majority_vote_tie_goes_to_the_earliest_first_appearance():
    assert majority_vote(["1", "2", "2", "1"]) == 0  # 2-2 tie: "1" appeared first
    assert majority_vote(["2", "1", "1", "2"]) == 0  # same counts, order swapped: now "2" wins
    assert majority_vote(["a", "b", "c"]) == 0  # all singletons: the first sample's answer


def test_majority_vote_skips_missing_answers():
    assert majority_vote([None, "3", None, "3", "5"]) == 1
    assert majority_vote([None, None, "4"]) == 2  # one answer beats any number of non-answers
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_maj_correct_uses_the_voted_answers_verdict():
    r = result([False, True, True, False], answers=["1", "2", "2", "1"])
    assert maj_correct(r, 4) == 0.0  # tie 2-2 -> "1" (sample 0) which was graded wrong
    assert maj_correct(r, 3) == 1.0  # first 3: "2" twice -> sample 1, graded right
    assert maj_correct(r, 1) == 0.0  # first sample alone
    assert maj_correct(result([True, False], answers=[None, None]), 2) == 0.0  # no answer: wrong


def test_normalize_answer_merges_spelling_not_meaning():
    assert normalize_answer(" $\\dfrac{1}{2}$ ") == "\\frac{1}{2}"
    assert normalize_answer("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize_answer("12.") == "12"
    assert normalize_answer("12.0") == "12"
    assert normalize_answer("0.50") == "0.5"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("(1,000)") == "(1,000)"  # a tuple, not a thousands separator
    assert normalize_answer("\\text{ blue }") == "blue"
    assert normalize_answer("120") == "120"  # trailing zeros of an integer stay
    assert normalize_answer("") is None and normalize_answer(None) is None
    assert normalize_answer("1/2") != normalize_answer("0.5")  # equivalence is the grader's job


# ------------------------------------------------------------------------------------------------ aggregation


def test_per_problem_values_hand_computed():
    p1 = result([True, False, False, False], answers=["7", "3", "3", "9"])
    p2 = result([True, True, False, False], answers=["4", "4", "5", "5"])
    v = per_problem_values([p1, p2])
    assert set(v) == {"avg@4", "pass@1", "pass@2", "pass@3", "pass@4", "maj@1", "maj@2", "maj@4"}
    assert v["avg@4"].tolist() == [0.25, 0.5]
    assert v["pass@1"].tolist() == pytest.approx([0.25, 0.5])  # pass@1 = c/n
    assert v["pass@2"].tolist() == pytest.approx([1 - 3 / 6, 1 - 1 / 6])  # C(3,2)/C(4,2), C(2,2)/C(4,2)
    assert v["pass@3"].tolist() == pytest.approx([1 - 1 / 4, 1.0])  # C(3,3)/C(4,3); n-c=2<3
    assert v["pass@4"].tolist() == [1.0, 1.0]
    assert v["maj@4"].tolist() == [0.0, 1.0]  # p1: "3" wins (wrong); p2: 2-2 tie -> "4" first (right)
    assert v["maj@2"].tolist() == [1.0, 1.0]  # p1: "7","3" tie -> "7" (right); p2: "4" twice
    assert v["maj@1"].tolist() == [1.0, 1.0]


def test_per_problem_values_rejects_ragged_samples():
    with pytest.raises(ValueError):
        per_problem_values([result([True]), result([True, False])])
    with pytest.raises(ValueError):
        per_problem_values([])


def test_summarize_hand_computed():
    p1 = result([True, False], answers=["1", "2"], lengths=[10, 20], truncated=[False, True])
    p2 = result([False, False], answers=["5", "5"], lengths=[30, 40], truncated=[False, False])
    s = summarize([p1, p2], resamples=0)
    assert s["problems"] == 2 and s["samples_per_problem"] == 2
    assert s["metrics"]["avg@2"] == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert s["metrics"]["pass@2"] == pytest.approx(0.5)  # p1 passes, p2 cannot
    assert s["metrics"]["maj@2"] == pytest.approx(0.5)  # p1 tie -> "1" (right), p2 "5" (wrong)
    assert s["length_mean"] == pytest.approx(25.0)  # (10+20+30+40)/4
    assert s["truncation_rate"] == pytest.approx(0.25)  # one of four samples
    assert s["ci95"] == {}


def test_report_ks():
    assert report_ks(1) == [1]
    assert report_ks(4) == [1, 2, 4]
    assert report_ks(6) == [1, 2, 4, 6]
    assert report_ks(32) == [1, 2, 4, 8, 16, 32]


def test_aggregate_per_key_and_pooled_overall():
    a = [result([True]), result([True])]
    b = [result([False]), result([False]), result([True])]
    out = aggregate(a + b, ["a", "a", "b", "b", "b"], resamples=0)
    assert list(out["by"]) == ["a", "b"]
    assert out["by"]["a"]["metrics"]["avg@1"] == 1.0
    assert out["by"]["b"]["metrics"]["avg@1"] == pytest.approx(1 / 3)
    assert out["overall"]["metrics"]["avg@1"] == pytest.approx(3 / 5)  # pooled over problems, not (1 + 1/3)/2
    assert out["overall"]["problems"] == 5


# ------------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_constant_values_give_a_point_interval():
    ci = bootstrap_ci({"m": np.array([0.5, 0.5, 0.5])}, resamples=200, seed=0)
    assert ci["m"] == (0.5, 0.5)


def test_bootstrap_two_problems_spans_zero_to_one():
    # Resampled means of [0, 1] are 0, 1/2, 1 with probability 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0, 1.
    ci = bootstrap_ci({"m": np.array([0.0, 1.0])}, resamples=4000, seed=1)
    assert ci["m"] == (0.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = {"m": np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=float) * np.linspace(0.5, 1.0, 10)}
    first = bootstrap_ci(values, resamples=500, seed=7)
    assert first == bootstrap_ci(values, resamples=500, seed=7)
    assert first != bootstrap_ci(values, resamples=500, seed=8)
    lo, hi = first["m"]
    assert lo < values["m"].mean() < hi and 0.0 <= lo and hi <= 1.0


def test_bootstrap_narrows_with_more_problems():
    small = np.array([0.0, 1.0] * 5)
    large = np.array([0.0, 1.0] * 500)
    w_small = np.subtract(*bootstrap_ci({"m": small}, 1000, 0)["m"][::-1])
    w_large = np.subtract(*bootstrap_ci({"m": large}, 1000, 0)["m"][::-1])
    assert w_large < w_small / 5  # width shrinks like 1/sqrt(P): 10x fewer problems, ~10x wider


def test_summarize_reports_ci_for_every_metric():
    rs = [result([True, False]), result([False, False]), result([True, True])]
    s = summarize(rs, resamples=300, seed=3)
    assert set(s["ci95"]) == set(s["metrics"])
    for name, (lo, hi) in s["ci95"].items():
        assert lo <= s["metrics"][name] <= hi
