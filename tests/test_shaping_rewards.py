import math

import pytest

from rewards.format import format_reward
from rewards.length import cosine_length_reward, length_penalty, overlong_penalty


def test_format_answer_style_needs_a_marked_final_answer():
    got = format_reward([""] * 5, ["so \\boxed{4}", "The answer is 7.", "#### 12", "it is 4", "\\boxed{}"])
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_format_think_style():
    got = format_reward([""] * 3, ["<think>a+b</think> 5", "<think></think> 5", "no tags 5"], style="think")
    assert got == [1.0, 0.0, 0.0]


def test_overlong_penalty_ramps_to_minus_one_in_the_buffer():
    ids = [[0] * n for n in (10, 16, 18, 20, 25)]
    got = overlong_penalty([""] * 5, [""] * 5, completion_ids=ids, max_new_tokens=20, buffer_tokens=4)
    assert got == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])


def test_kimi_length_penalty_within_each_group():
    prompts = ["p", "p", "p", "q"]
    completions = ["The answer is 3", "The answer is 3 because ...", "The answer is 9", "The answer is 1"]
    ids = [[0] * 10, [0] * 30, [0] * 20, [0] * 5]
    got = length_penalty(prompts, completions, answer=["3", "3", "3", "1"], completion_ids=ids)
    # group p: min 10, max 30 -> lambda = 0.5 - (len - 10) / 20
    assert got[0] == pytest.approx(0.5)  # right and shortest
    assert got[1] == pytest.approx(-0.5)  # right but longest
    assert got[2] == pytest.approx(0.0)  # wrong: min(0, lambda=0.0)
    assert got[3] == pytest.approx(0.0)  # a group of one length: no signal


def test_cosine_length_reward_prefers_short_right_and_long_wrong():
    kw = dict(max_new_tokens=100, answer=["3", "3", "3", "3", "3"], finish_reasons=["stop"] * 4 + ["length"])
    ids = [[0] * 0, [0] * 100, [0] * 0, [0] * 100, [0] * 100]
    comps = ["The answer is 3", "The answer is 3", "The answer is 4", "The answer is 4", "The answer is 4"]
    got = cosine_length_reward([""] * 5, comps, completion_ids=ids, **kw)
    assert got[0] == pytest.approx(2.0) and got[1] == pytest.approx(1.0)
    assert got[2] == pytest.approx(-10.0) and got[3] == pytest.approx(0.0)
    assert got[4] == -10.0  # truncated and wrong
    mid = cosine_length_reward([""], ["The answer is 3"], completion_ids=[[0] * 50], max_new_tokens=100, answer=["3"])
    assert mid[0] == pytest.approx(1.0 + 0.5 * (2.0 - 1.0) * (1 + math.cos(math.pi * 0.5)))


def test_without_a_reference_answer_correctness_shaping_does_not_apply():
    assert length_penalty(["p"], ["x"], answer=[None]) == [None]
    assert cosine_length_reward(["p"], ["x"], answer=None, max_new_tokens=10) == [None]
