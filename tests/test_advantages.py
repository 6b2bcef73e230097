import math

import pytest
import torch

from grpo.objectives.advantages import ADVANTAGES, dr_grpo_advantages, grpo_advantages, rloo_advantages, zero_variance_groups


def test_grpo_normalises_each_group_by_its_own_mean_and_sample_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 4.0, 4.0])  # two groups of G=4
    adv = grpo_advantages(rewards, 4, eps=0.0)
    # group 1: mean 0.25, sample std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5
    assert adv[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    # group 2: mean 3, sample std sqrt(4 / 3)
    s = math.sqrt(4 / 3)
    assert adv[4:].tolist() == pytest.approx([-1 / s, -1 / s, 1 / s, 1 / s])


def test_grpo_equal_rewards_give_zero_advantage_not_nan():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0]), 3)
    assert adv.tolist() == [0.0, 0.0, 0.0]


def test_dr_grpo_only_subtracts_the_group_mean():
    adv = dr_grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 5.0]), 3)
    assert adv.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, -8 / 3, 1 / 3, 7 / 3])


def test_rloo_subtracts_the_mean_of_the_others():
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    # 1 - mean(0,0,0) = 1; 0 - mean(1,0,0) = -1/3
    assert adv.tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])


def test_every_variant_is_registered_under_its_recipe_name():
    assert set(ADVANTAGES) == {"grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"}


def test_zero_variance_groups_are_flagged():
    flags = zero_variance_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2)
    assert flags.tolist() == [True, False, True]
