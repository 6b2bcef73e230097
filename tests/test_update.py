"""The policy update on a fixed batch: parameters move, the loss on that batch goes down, the
completions with positive advantage become more likely, and micro-batching changes nothing."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.objectives.loss import aggregate, clipped_surrogate, token_logprobs
from grpo.train.rollouts import Rollout
from grpo.sampling.base import Completion
from grpo.config import TrainConfig
from grpo.train.update import completion_logits, make_micro_batch, policy_update


def fixed_batch(tok):
    prompts = ["1+1=", "say hi:"]
    targets = [["2</s>", "3</s>"], ["hi</s>", "bye now</s>"]]
    rollouts = []
    for p, (good, bad) in zip(prompts, targets):
        for text, adv in ((good, 1.0), (bad, -1.0)):
            ids = tok(text, add_special_tokens=False).input_ids
            rollouts.append(Rollout(p, tok(p).input_ids, Completion(ids, [0.0] * len(ids), text, "stop"), {},
                                    advantage=adv))
    return rollouts


def settings(**kw):
    base = dict(clip_low=0.2, clip_high=0.28, beta=0.0, mu=1, micro_batch_size=4, loss_aggregation="token_mean",
                max_grad_norm=1.0)
    base.update(kw)
    return TrainConfig(**base)


def update(model, reference, optimizer, rollouts, train, pad_id, device=torch.device("cpu"), temperature=1.0):
    return policy_update(model, reference, optimizer, rollouts, train, temperature=temperature, loss_constant=16,
                         pad_id=pad_id, device=device)


def batch_logprobs(model, rollouts, pad_id):
    mb = make_micro_batch(rollouts, pad_id, torch.device("cpu"))
    with torch.no_grad():
        return token_logprobs(completion_logits(model, mb), mb.targets), mb


def batch_loss(model, rollouts, old_logp, pad_id):
    logp, mb = batch_logprobs(model, rollouts, pad_id)
    out = clipped_surrogate(logp, old_logp, mb.advantages, 0.2, 0.28)
    return aggregate(out.loss, mb.mask, "token_mean", len(rollouts), int(mb.mask.sum())).item()


@pytest.fixture
def model_and_tok(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_update_changes_parameters_and_lowers_the_loss_on_a_fixed_batch(model_and_tok):
    model, tok = model_and_tok
    rollouts = fixed_batch(tok)
    before_params = copy.deepcopy(model.state_dict())
    old_logp, mb = batch_logprobs(model, rollouts, tok.pad_token_id)
    loss_before = batch_loss(model, rollouts, old_logp, tok.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):
        stats = update(model, None, optimizer, rollouts, settings(), tok.pad_token_id, torch.device("cpu"))
    assert any(not torch.equal(before_params[k], v) for k, v in model.state_dict().items())
    assert batch_loss(model, rollouts, old_logp, tok.pad_token_id) < loss_before
    new_logp, _ = batch_logprobs(model, rollouts, tok.pad_token_id)
    seq = lambda lp: (lp * mb.mask).sum(-1)  # noqa: E731 - sequence log-likelihood [N]
    gained = seq(new_logp) - seq(old_logp)
    assert gained[0] > 0 and gained[2] > 0  # positive advantage: more likely
    assert gained[1] < 0 and gained[3] < 0  # negative advantage: less likely
    assert stats.grad_norm > 0 and stats.tokens == int(mb.mask.sum())


def test_zero_advantages_leave_parameters_unchanged(model_and_tok):
    model, tok = model_and_tok
    rollouts = fixed_batch(tok)
    for r in rollouts:
        r.advantage = 0.0
    before = copy.deepcopy(model.state_dict())
    update(model, None, torch.optim.SGD(model.parameters(), lr=1.0), rollouts, settings(),
                  tok.pad_token_id, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "constant"])
def test_micro_batching_gives_the_same_gradient_as_one_batch(model_and_tok, mode):
    model, tok = model_and_tok
    rollouts = fixed_batch(tok)
    grads = []
    for micro in (4, 1):
        m = copy.deepcopy(model)
        update(m, None, torch.optim.SGD(m.parameters(), lr=0.0), rollouts,
                      settings(micro_batch_size=micro, loss_aggregation=mode), tok.pad_token_id, torch.device("cpu"))
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_kl_to_reference_is_zero_before_any_change_and_grows_after(model_and_tok):
    model, tok = model_and_tok
    reference = copy.deepcopy(model).eval()
    rollouts = fixed_batch(tok)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = update(model, reference, optimizer, rollouts, settings(beta=0.1), tok.pad_token_id,
                          torch.device("cpu"))
    assert first.kl == pytest.approx(0.0, abs=1e-7)
    second = update(model, reference, optimizer, rollouts, settings(beta=0.1), tok.pad_token_id,
                           torch.device("cpu"))
    assert second.kl > 1e-5


def test_several_passes_use_the_sampler_logprobs_as_the_old_policy(model_and_tok):
    model, tok = model_and_tok
    rollouts = fixed_batch(tok)
    old_logp, mb = batch_logprobs(model, rollouts, tok.pad_token_id)
    for i, r in enumerate(rollouts):  # the sampler's view of the same tokens
        r.completion.logprobs = old_logp[i, : len(r.completion.token_ids)].tolist()
    stats = update(model, None, torch.optim.AdamW(model.parameters(), lr=5e-2), rollouts,
                          settings(mu=4, clip_low=0.05, clip_high=0.05), tok.pad_token_id, torch.device("cpu"))
    assert stats.logprob_gap < 1e-4  # first pass: the policy is the sampler's
    assert stats.clip_fraction > 0  # later passes moved past the clip range, so the clip engaged
