"""The objectives menu, against numbers worked out by hand from each paper's formula: values and gradients of
GSPO (sequence and token), CISPO, dual clip, the k1/k2/k3 KL estimators (clamped), the KL penalty as a reward,
the sampler correction (TIS / MIS at token, sequence and geometric level), and REINFORCE++ advantages."""

import math
import threading

import pytest
import torch
from conftest import recipe_config

from grpo.config import RewardConfig, TrainConfig
from grpo.objectives.advantages import (ADVANTAGES, compute_advantages, reinforce_pp_advantages,
                                        reinforce_pp_baseline_advantages)
from grpo import resolve
from grpo.objectives.correction import correction_weights
from grpo.objectives.kl import KL_ESTIMATORS, clamped, kl_reward_advantages
from grpo.objectives.loss import aggregate, clipped_surrogate
from grpo.objectives.surrogates import SURROGATES, cispo, gspo, gspo_token, sequence_log_ratio
from grpo.rules import recipe_rules


def leaf(values):
    return torch.tensor(values, dtype=torch.float64).requires_grad_(True)


# ------------------------------------------------------------------------------------------------ dual clip

def test_dual_clip_caps_the_loss_of_a_negative_advantage_by_hand():
    # ratios 5 and 2 with A = -1, clip [0.8, 1.2], c = 3: min(-5, -1.2) = -5 < -3 -> -3 (no gradient);
    # min(-2, -1.2) = -2 >= -3 -> kept, loss 2, d loss / d logp = ratio = 2.
    logp = leaf([[math.log(5.0), math.log(2.0)]])
    out = clipped_surrogate(logp, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64),
                            0.2, 0.2, clip_ratio_c=3.0)
    assert out.loss.flatten().tolist() == pytest.approx([3.0, 2.0])
    assert out.clipped.tolist() == [[True, False]]
    out.loss.sum().backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 2.0])


def test_dual_clip_leaves_positive_advantages_and_small_ratios_alone():
    logp = torch.log(torch.tensor([[5.0, 0.5, 1.1]]))
    for adv in (torch.tensor([2.0]), torch.tensor([-0.5])):
        plain = clipped_surrogate(logp, torch.zeros(1, 3), adv, 0.2, 0.28)
        dual = clipped_surrogate(logp, torch.zeros(1, 3), adv, 0.2, 0.28, clip_ratio_c=10.0)
        assert torch.equal(plain.loss, dual.loss)


# ------------------------------------------------------------------------------------------------ GSPO

MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)  # lengths 2 and 3


def test_gspo_sequence_ratio_is_the_exp_of_the_mean_token_log_ratio():
    logp = torch.tensor([[0.1, 0.3, 99.0], [2e-4, -2e-4, 3e-4]], dtype=torch.float64)  # padding value ignored
    log_s = sequence_log_ratio(logp, torch.zeros_like(logp), MASK)
    assert log_s.flatten().tolist() == pytest.approx([0.2, 1e-4])


def test_gspo_value_clip_and_gradient_by_hand():
    # seq 0: s = exp(0.2) > 1 + 4e-4 with A = +1 -> clipped: loss -(1.0004) on each token, no gradient.
    # seq 1: s = exp(1e-4) inside [1 - 3e-4, 1 + 4e-4], A = 2 -> loss -2 s on each token. With sequence_mean
    # over N = 2: L = (1/2) (-1.0004 - 2 s), so d L / d logp_t = -(1/2) * 2 * s / 3 on each of seq 1's 3 tokens.
    logp = leaf([[0.1, 0.3, 0.0], [2e-4, -2e-4, 3e-4]])
    adv = torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = gspo(logp, torch.zeros(2, 3, dtype=torch.float64), adv, MASK, clip_low=3e-4, clip_high=4e-4)
    s = math.exp(1e-4)
    assert out.loss[0, :2].tolist() == pytest.approx([-1.0004, -1.0004], abs=1e-12)
    assert out.loss[1].tolist() == pytest.approx([-2 * s] * 3, abs=1e-12)
    assert out.clipped.tolist() == [[True, True, True], [False, False, False]]
    aggregate(out.loss, MASK, "sequence_mean", 2, 5).backward()
    assert logp.grad[0].tolist() == [0.0, 0.0, 0.0]
    assert logp.grad[1].tolist() == pytest.approx([-s / 3] * 3, abs=1e-12)


def test_gspo_token_has_gspo_values_and_per_token_advantage_gradients():
    logp = leaf([[0.1, 0.3, 0.0], [2e-4, -2e-4, 3e-4]])
    old = torch.zeros(2, 3, dtype=torch.float64)
    adv = torch.tensor([1.0, 2.0], dtype=torch.float64)
    seq = gspo(logp, old, adv, MASK, clip_low=3e-4, clip_high=4e-4)
    tok = gspo_token(logp, old, adv, MASK, clip_low=3e-4, clip_high=4e-4)
    assert torch.allclose(seq.loss * MASK, tok.loss * MASK) and torch.equal(seq.clipped, tok.clipped)
    g_seq = torch.autograd.grad(aggregate(seq.loss, MASK, "sequence_mean", 2, 5), logp)[0]
    g_tok = torch.autograd.grad(aggregate(tok.loss, MASK, "sequence_mean", 2, 5), logp)[0]
    assert torch.allclose(g_seq, g_tok, atol=1e-15)  # one advantage per sequence: GSPO's gradient
    # Per-token advantages on seq 1: loss_t = -s A_t, so with token_mean over 5 tokens d/dlogp_t = -s A_t / 5.
    per_token = torch.tensor([[1.0, 1.0, 0.0], [1.0, -2.0, 4.0]], dtype=torch.float64)
    out = gspo_token(logp, old, per_token, MASK, clip_low=3e-4, clip_high=4e-4)
    g = torch.autograd.grad(aggregate(out.loss, MASK, "token_mean", 2, 5), logp)[0]
    s = math.exp(1e-4)
    assert g[1].tolist() == pytest.approx([-s / 5, 2 * s / 5, -4 * s / 5], abs=1e-12)


# ------------------------------------------------------------------------------------------------ CISPO

def test_cispo_clips_the_weight_not_the_gradient_by_hand():
    # ratios 0.5, 1, 3 with clip_high = 1 (bound 2), A = +1: w = 0.5, 1, 2 (no lower bound);
    # loss = -w A logp, d loss / d logp = -w A: every token keeps a gradient, the clipped one too.
    logp = leaf([[math.log(0.5), 0.0, math.log(3.0)]])
    out = cispo(logp, torch.zeros(1, 3, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                torch.ones(1, 3, dtype=torch.float64), clip_low=0.2, clip_high=1.0)
    assert out.loss.flatten().tolist() == pytest.approx([-0.5 * math.log(0.5), 0.0, -2 * math.log(3.0)])
    assert out.clipped.tolist() == [[False, False, True]]
    assert out.ratio.flatten().tolist() == pytest.approx([0.5, 1.0, 3.0])
    out.loss.sum().backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5, -1.0, -2.0])


def test_on_policy_cispo_and_clip_have_the_same_gradient():
    logp = leaf([[-1.0, -2.0], [-0.5, -3.0]])
    adv = torch.tensor([1.5, -0.7], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    grads = []
    for name in ("clip", "cispo", "gspo_token"):
        out = SURROGATES[name](logp, logp.detach(), adv, mask, clip_low=3e-4, clip_high=4e-4)
        grads.append(torch.autograd.grad(aggregate(out.loss, mask, "token_mean", 2, 4), logp)[0])
    assert torch.allclose(grads[0], grads[1]) and torch.allclose(grads[0], grads[2])


# ------------------------------------------------------------------------------------------------ KL

def test_kl_estimators_by_hand():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])  # log(pi / ref) = 0.5, -1
    assert KL_ESTIMATORS["k1"](logp, ref).flatten().tolist() == pytest.approx([0.5, -1.0])
    assert KL_ESTIMATORS["k2"](logp, ref).flatten().tolist() == pytest.approx([0.125, 0.5])
    assert KL_ESTIMATORS["k3"](logp, ref).flatten().tolist() == pytest.approx(
        [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1 - 1])


def test_kl_clamp_bounds_the_log_ratio_and_its_gradient():
    logp = leaf([[5.0, 0.3]])
    ref = torch.zeros(1, 2, dtype=torch.float64)
    k3 = clamped(KL_ESTIMATORS["k3"], 1.0)(logp, ref)
    # x = ref - logp clamped to [-1, 1]: k3(-1) = e^-1 + 1 - 1; 0.3 inside: e^-0.3 + 0.3 - 1
    assert k3.flatten().tolist() == pytest.approx([math.exp(-1.0), math.exp(-0.3) + 0.3 - 1])
    k3.sum().backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 1 - math.exp(-0.3)])  # d k3 / d logp = 1 - e^x
    assert clamped(KL_ESTIMATORS["k1"], None) is KL_ESTIMATORS["k1"]


def test_kl_as_a_reward_charges_the_penalties_still_to_come():
    adv = torch.tensor([1.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.0, 0.2]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    out = kl_reward_advantages(adv, kl, mask, beta=0.5)
    # seq 0: remaining KL 0.3, 0.2 (padding's 0.3 ignored); seq 1: 0.6, 0.2, 0.2
    assert out.tolist() == [pytest.approx([1 - 0.15, 1 - 0.1, 0.0]), pytest.approx([-1.3, -1.1, -1.1])]


# ------------------------------------------------------------------------------------------------ correction

SAMPLER_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
LOG_W = torch.log(torch.tensor([[4.0, 0.5, 1.0], [0.1, 1.0, 2.0]]))  # old - sampler


def weights(mode, level, cap=3.0):
    return correction_weights(LOG_W, torch.zeros(2, 3), SAMPLER_MASK, mode, level, cap)


def test_tis_and_mis_at_token_level_by_hand():
    tis = weights("tis", "token")
    assert tis.weight.tolist() == [pytest.approx([3.0, 0.5, 0.0]), pytest.approx([0.1, 1.0, 2.0])]
    assert tis.flagged.tolist() == [[True, False, False], [False, False, False]]
    mis = weights("mis", "token")  # keep w inside [1/3, 3], else 0
    assert mis.weight.tolist() == [pytest.approx([0.0, 0.5, 0.0]), pytest.approx([0.0, 1.0, 2.0])]
    assert mis.flagged.tolist() == [[True, False, False], [True, False, False]]


def test_sequence_and_geometric_levels_by_hand():
    # seq 0: 4 * 0.5 = 2 (geometric sqrt 2); seq 1: 0.1 * 1 * 2 = 0.2 (geometric 0.2^(1/3))
    seq = weights("tis", "sequence")
    assert seq.weight.tolist() == [pytest.approx([2.0, 2.0, 0.0]), pytest.approx([0.2] * 3)]
    geo = weights("tis", "geometric")
    assert geo.weight.tolist() == [pytest.approx([math.sqrt(2), math.sqrt(2), 0.0]),
                                   pytest.approx([0.2 ** (1 / 3)] * 3)]
    mis = weights("mis", "sequence")  # 0.2 < 1/3: the whole of seq 1 is masked
    assert mis.weight.tolist() == [pytest.approx([2.0, 2.0, 0.0]), [0.0, 0.0, 0.0]]
    assert mis.flagged.tolist() == [[False, False, False], [True, True, True]]
    assert weights("none", "token").weight.tolist() == SAMPLER_MASK.tolist()


def test_auto_correction_is_tis_for_vllm_only():
    def correction(mode: str, backend: str, mu: int, old_logprobs: str) -> str:
        return resolve.sampler_correction(TrainConfig(sampler_correction=mode, mu=mu, old_logprobs=old_logprobs),
                                          backend)

    assert correction("auto", "vllm", 1, "sampler") == "tis"
    assert correction("auto", "hf", 1, "sampler") == "none"
    assert correction("auto", "vllm", 2, "trainer") == "tis"
    assert correction("auto", "vllm", 2, "sampler") == "none"  # the ratio already carries the gap
    assert correction("mis", "hf", 1, "sampler") == "mis"


# ------------------------------------------------------------------------------------------------ REINFORCE++

REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])  # two groups of 4


def test_reinforce_pp_normalises_over_the_batch_by_hand():
    # batch mean 0.5, every deviation +-0.5: sample std sqrt(8 * 0.25 / 7)
    std = math.sqrt(2 / 7)
    adv = reinforce_pp_advantages(REWARDS, 4)
    assert adv.tolist() == pytest.approx([(r - 0.5) / (std + 1e-4) for r in REWARDS.tolist()], abs=1e-6)


def test_reinforce_pp_baseline_subtracts_the_group_mean_first_by_hand():
    # c = [.75, -.25, -.25, -.25, .25, .25, .25, -.75]; batch mean 0; sum of squares 1.5; std sqrt(1.5 / 7)
    c = [0.75, -0.25, -0.25, -0.25, 0.25, 0.25, 0.25, -0.75]
    std = math.sqrt(1.5 / 7)
    adv = reinforce_pp_baseline_advantages(REWARDS, 4)
    assert adv.tolist() == pytest.approx([x / (std + 1e-4) for x in c], abs=1e-6)
    assert ADVANTAGES["reinforce_pp_baseline"] is reinforce_pp_baseline_advantages


def test_batch_level_advantages_use_the_global_batch_across_ranks():
    """Two 'ranks' holding one group each, summing through a fake all-reduce, get the one-process values."""
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def rank(r):
        def total(values):
            slots[r] = list(values)
            barrier.wait()
            out = [a + b for a, b in zip(*slots)]
            barrier.wait()
            return out
        results[r] = compute_advantages(ADVANTAGES["reinforce_pp_baseline"], REWARDS[4 * r:4 * r + 4], 4, total)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.cat(results).tolist() == pytest.approx(reinforce_pp_baseline_advantages(REWARDS, 4).tolist(),
                                                        abs=1e-7)
    # group-level functions ignore `total`
    assert compute_advantages(ADVANTAGES["grpo"], REWARDS, 4, None).tolist() == ADVANTAGES["grpo"](REWARDS, 4).tolist()


# ------------------------------------------------------------------------------------------------ rules

def recipe(**train):
    return recipe_config({"data.path": "x.jsonl", "rewards": [RewardConfig(name="math")]}, **train)


@pytest.mark.parametrize("train, message", [
    (dict(loss="gspo"), "GSPO"),
    (dict(loss="gspo_token", clip_low=0.2, clip_high=4e-4), "GSPO"),
    (dict(loss="cispo", clip_high=0.0), "upper bound"),
    (dict(loss="cispo", clip_ratio_c=3.0), "clip_ratio_c"),
    (dict(clip_ratio_c=1.0), "clip_ratio_c"),
    (dict(sampler_correction="mis", correction_cap=1.0), "correction_cap"),
    (dict(sampler_correction="tis", mu=2), "old_logprobs"),
    (dict(kl_in="reward"), "beta"),
    (dict(beta=0.1, kl_clamp=0.0), "kl_clamp"),
    (dict(entropy_coef=-0.1), "entropy_coef"),
])
def test_rules_refuse_objective_settings_that_cannot_work(train, message):
    problems = recipe_rules(recipe(**train))
    assert any(message in p for p in problems), problems


def test_rules_accept_the_paper_settings():
    for train in (dict(loss="gspo", clip_low=3e-4, clip_high=4e-4), dict(loss="cispo", clip_high=4.0),
                  dict(clip_ratio_c=3.0), dict(sampler_correction="tis", mu=2, old_logprobs="trainer"),
                  dict(beta=0.01, kl_in="reward", kl_estimator="k1", kl_clamp=10.0),
                  dict(advantage="reinforce_pp_baseline", entropy_coef=0.001)):
        assert recipe_rules(recipe(**train)) == [], train
