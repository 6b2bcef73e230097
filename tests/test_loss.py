import math

import pytest
import torch

from grpo.objectives.kl import kl_k3
from grpo.objectives.loss import aggregate, clipped_surrogate, logprobs_and_entropy


def test_token_logprobs_match_log_softmax_with_temperature():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])  # [1, 2, 3]
    targets = torch.tensor([[2, 1]])
    lp, _ = logprobs_and_entropy(logits.view(2, 3), torch.arange(2).view(1, 2), targets, 2.0, with_entropy=False)
    expected0 = 1.5 - math.log(math.exp(0.5) + math.exp(1.0) + math.exp(1.5))
    assert lp[0, 0].item() == pytest.approx(expected0, abs=1e-6)
    assert lp[0, 1].item() == pytest.approx(-math.log(3), abs=1e-6)


def test_entropy_of_uniform_is_log_v():
    _, entropy = logprobs_and_entropy(torch.zeros(1, 4), torch.zeros(1, 1, dtype=torch.long),
                                      torch.zeros(1, 1, dtype=torch.long), 1.0, with_entropy=True)
    assert entropy[0, 0].item() == pytest.approx(math.log(4), abs=1e-6)


def test_clipped_surrogate_by_hand():
    # ratios 1.5, 0.5, 1.1 against positive and negative advantages; clip [0.8, 1.28]
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]]))
    adv = torch.tensor([2.0, -1.0])
    out = clipped_surrogate(logp, old, adv, clip_low=0.2, clip_high=0.28)
    # A=+2: min(1.5*2, 1.28*2)=2.56 ; min(0.5*2, 0.8*2)=1.0 ; min(2.2, 2.2)=2.2
    # A=-1: min(-1.5, -1.28)=-1.5 ; min(-0.5, -0.8)=-0.8 ; -1.1
    assert out.loss.flatten().tolist() == pytest.approx([-2.56, -1.0, -2.2, 1.5, 0.8, 1.1], abs=1e-5)
    assert out.clipped.tolist() == [[True, False, False], [False, True, False]]


def test_clipped_tokens_carry_no_gradient():
    logp = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_(True)
    out = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.2)
    out.loss.sum().backward()
    assert logp.grad[0, 0].item() == 0.0  # ratio 1.5 clipped at 1.2
    assert logp.grad[0, 1].item() == pytest.approx(-1.0)  # d(-ratio*A)/dlogp = -ratio*A = -1


def test_k3_kl_is_zero_at_equality_and_positive_otherwise():
    logp = torch.tensor([[-1.0, -2.0]])
    assert kl_k3(logp, logp).tolist() == [[0.0, 0.0]]
    ref = torch.tensor([[-1.5, -1.0]])
    d = ref - logp
    assert kl_k3(logp, ref).flatten().tolist() == pytest.approx((torch.exp(d) - d - 1).flatten().tolist())
    assert (kl_k3(logp, ref) > 0).all()


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])  # [2, 3]
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # lengths 3 and 1; padding must not count


def test_token_mean_divides_by_all_tokens_of_the_batch():
    assert aggregate(LOSS, MASK, "token_mean", 2, 4).item() == pytest.approx(10 / 4)


def test_sequence_mean_averages_per_sequence_means():
    assert aggregate(LOSS, MASK, "sequence_mean", 2, 4).item() == pytest.approx((2.0 + 4.0) / 2)


def test_constant_divides_by_sequences_times_constant():
    assert aggregate(LOSS, MASK, "constant", 2, 4, constant=10).item() == pytest.approx(10 / 20)


def test_padding_values_are_ignored():
    noisy = LOSS.clone()
    noisy[1, 1:] = 1000.0
    for mode in ("token_mean", "sequence_mean", "constant"):
        assert aggregate(noisy, MASK, mode, 2, 4, 10) == aggregate(LOSS, MASK, mode, 2, 4, 10)


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "constant"])
def test_micro_batches_sum_to_the_full_batch_loss(mode):
    full = aggregate(LOSS, MASK, mode, 2, 4, 10)
    parts = aggregate(LOSS[:1], MASK[:1], mode, 2, 4, 10) + aggregate(LOSS[1:], MASK[1:], mode, 2, 4, 10)
    assert parts.item() == pytest.approx(full.item())


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown mode"):
        aggregate(LOSS, MASK, "mean", 2, 4)
