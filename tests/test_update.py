"""The policy update on a fixed batch: parameters move, the loss on that batch goes down, the
completions with positive advantage become more likely, and micro-batching changes nothing."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo import resolve
from grpo.objectives.loss import aggregate, clipped_surrogate
from grpo.parallel import World
from grpo.sampling.base import Completion
from grpo.config import TrainConfig
from grpo.train.episodes import Episode, model_segment, token_batch
from grpo.train.packing import Layout, make_micro_batch
from grpo.train.update import build_objective, completion_logprobs, policy_update, training_pass


def fixed_batch(tok):
    prompts = ["1+1=", "say hi:"]
    targets = [["2</s>", "3</s>"], ["hi</s>", "bye now</s>"]]
    episodes = []
    for g, (p, (good, bad)) in enumerate(zip(prompts, targets)):
        for text, adv in ((good, 1.0), (bad, -1.0)):
            ids = tok(text, add_special_tokens=False).input_ids
            episodes.append(Episode.one_turn(tok(p).input_ids, Completion(ids, [0.0] * len(ids), text, "stop"),
                                             group_id=g, prompt_text=p, advantage=adv))
    return episodes


def set_sampler_logprobs(episode: Episode, logprobs: list[float]) -> None:
    """Replace a one-turn episode's sampler log-probs (a sampler that saw the tokens differently)."""
    (segment,) = episode.segments
    episode.segments = [model_segment(segment.token_ids, logprobs)]


def run_update(model, reference, optimizer, episodes, train, pad_id, *, temperature=1.0, correction=None,
               layout=None, world=World.single(), loss_constant=16):
    """policy_update as the trainer calls it: the objective and the passes built once from the settings, the step's
    per-token batch from the episodes."""
    objective = build_objective(train, correction or resolve.sampler_correction(train, "hf"), loss_constant)
    passes = training_pass(train, layout, temperature, torch.device("cpu"), world)
    return policy_update(model, reference, optimizer, token_batch(episodes, pad_id), objective, passes)


def settings(**kw):
    base = dict(clip_low=0.2, clip_high=0.28, beta=0.0, mu=1, micro_batch_size=4, loss_aggregation="token_mean",
                max_grad_norm=1.0)
    base.update(kw)
    return TrainConfig(**base)


def update(model, reference, optimizer, rollouts, train, pad_id, device=torch.device("cpu"), temperature=1.0):
    return run_update(model, reference, optimizer, rollouts, train, pad_id, temperature=temperature)


def batch_logprobs(model, rollouts, pad_id):
    mb = make_micro_batch(rollouts, Layout("padded", len(rollouts), 0), pad_id, torch.device("cpu"))
    with torch.no_grad():
        return completion_logprobs(model, mb, 1.0)[0], mb


def batch_loss(model, rollouts, old_logp, pad_id):
    logp, mb = batch_logprobs(model, rollouts, pad_id)
    out = clipped_surrogate(logp, old_logp, mb.tokens.advantages, 0.2, 0.28)
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
        optimizer = RecordingSGD(m.parameters(), lr=0.0)
        update(m, None, optimizer, rollouts, settings(micro_batch_size=micro, loss_aggregation=mode),
               tok.pad_token_id, torch.device("cpu"))
        grads.append(optimizer.grads[-1])
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
        set_sampler_logprobs(r, old_logp[i, : r.length].tolist())
    stats = update(model, None, torch.optim.AdamW(model.parameters(), lr=5e-2), rollouts,
                          settings(mu=4, clip_low=0.05, clip_high=0.05), tok.pad_token_id, torch.device("cpu"))
    assert stats.logprob_gap < 1e-4  # first pass: the policy is the sampler's
    assert stats.clip_fraction > 0  # later passes moved past the clip range, so the clip engaged


# ------------------------------------------------------------------------------------------------ the objectives menu

OBJECTIVES = {
    "gspo": dict(loss="gspo", clip_low=3e-4, clip_high=4e-4, loss_aggregation="sequence_mean"),
    "gspo_token": dict(loss="gspo_token", clip_low=3e-4, clip_high=4e-4),
    "cispo": dict(loss="cispo", clip_high=4.0),
    "dual_clip": dict(clip_ratio_c=3.0),
    "kl_k2_loss": dict(beta=0.1, kl_estimator="k2", kl_clamp=5.0),
    "kl_k1_reward": dict(beta=0.1, kl_estimator="k1", kl_in="reward"),
    "entropy": dict(entropy_coef=0.01),
    "tis_sequence": dict(sampler_correction="tis", correction_level="sequence", correction_cap=2.0),
    "mis_token": dict(sampler_correction="mis", correction_cap=1.5),
    "gspo_trainer_old_mu2": dict(loss="gspo", clip_low=3e-4, clip_high=4e-4, mu=2, old_logprobs="trainer",
                                 sampler_correction="tis", correction_level="geometric"),
}


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps the flattened gradient of every step (the update frees the gradients after its step)."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.grads = []

    def step(self, closure=None):
        self.grads.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]))
        return super().step(closure)


def sampler_view(model, rollouts, pad_id, shift):
    """Give the rollouts sampler log-probs = the model's own + shift[i] per sequence (a known mismatch)."""
    logp, _ = batch_logprobs(model, rollouts, pad_id)
    for i, r in enumerate(rollouts):
        set_sampler_logprobs(r, (logp[i, : r.length] + shift[i]).tolist())


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_is_exact_under_micro_batching(model_and_tok, name):
    model, tok = model_and_tok
    reference = copy.deepcopy(model).eval()
    rollouts = fixed_batch(tok)
    sampler_view(model, rollouts, tok.pad_token_id, [0.3, -0.2, 0.0, -0.6])
    grads, stats = [], []
    for micro in (4, 1):
        m = copy.deepcopy(model)
        opt = RecordingSGD(m.parameters(), lr=0.5)
        s = settings(micro_batch_size=micro, **OBJECTIVES[name])
        stats.append(run_update(m, reference, opt, rollouts, s, tok.pad_token_id))
        grads.append(opt.grads)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert stats[0].loss == pytest.approx(stats[1].loss, abs=1e-6)
    assert float(grads[0][0].abs().max()) > 0


def test_trainer_old_logprobs_make_the_first_pass_the_mu1_gradient(model_and_tok):
    model, tok = model_and_tok
    rollouts = fixed_batch(tok)  # sampler log-probs all 0.0: far from the policy's
    runs = {}
    for name, kw in {"mu1": dict(mu=1), "trainer": dict(mu=3, old_logprobs="trainer"),
                     "sampler": dict(mu=3, old_logprobs="sampler")}.items():
        m = copy.deepcopy(model)
        opt = RecordingSGD(m.parameters(), lr=0.05)
        update(m, None, opt, rollouts, settings(**kw), tok.pad_token_id)
        runs[name] = opt.grads
    assert torch.equal(runs["trainer"][0], runs["mu1"][0])  # bit for bit
    assert not torch.allclose(runs["sampler"][0], runs["mu1"][0])  # the ratio against the sampler is not 1
    assert not torch.equal(runs["trainer"][1], runs["trainer"][0])  # later passes are off-policy


def test_tis_weights_scale_the_policy_gradient(model_and_tok):
    """Sampler log-probs log(2) below the trainer's on every token: w = 2 (under the cap 3), so TIS doubles the
    gradient; with cap 1.5 every token is truncated to 1.5."""
    model, tok = model_and_tok
    rollouts = fixed_batch(tok)
    sampler_view(model, rollouts, tok.pad_token_id, [-math.log(2.0)] * 4)
    grads, stats = {}, {}
    for name, kw in {"none": dict(sampler_correction="none"), "tis": dict(sampler_correction="tis"),
                     "tis_cap": dict(sampler_correction="tis", correction_cap=1.5)}.items():
        m = copy.deepcopy(model)
        opt = RecordingSGD(m.parameters(), lr=0.0)
        stats[name] = update(m, None, opt, rollouts, settings(max_grad_norm=1e9, **kw), tok.pad_token_id)
        grads[name] = opt.grads[0]
    assert torch.allclose(grads["tis"], 2.0 * grads["none"], atol=1e-6)
    assert torch.allclose(grads["tis_cap"], 1.5 * grads["none"], atol=1e-6)
    assert stats["tis"].correction == "tis" and stats["none"].correction == "none"
    assert stats["tis"].correction_weight_mean == pytest.approx(2.0, abs=1e-5)
    assert stats["tis"].correction_flagged_fraction == 0.0
    assert stats["tis_cap"].correction_flagged_fraction == 1.0
    assert stats["tis_cap"].correction_weight_mean == pytest.approx(1.5)


def test_auto_correction_follows_the_sampler_backend(model_and_tok):
    model, tok = model_and_tok
    rollouts = fixed_batch(tok)
    for backend, expected in (("hf", "none"), ("vllm", "tis")):
        m = copy.deepcopy(model)
        correction = resolve.sampler_correction(settings(), backend)  # once per run, at setup
        stats = run_update(m, None, torch.optim.SGD(m.parameters(), lr=0.0), rollouts, settings(),
                           tok.pad_token_id, correction=correction)
        assert stats.correction == expected


def test_entropy_bonus_is_in_the_loss_by_hand(model_and_tok):
    """Zero advantages: the loss is -entropy_coef * (token-mean entropy), and the step raises the entropy."""
    model, tok = model_and_tok
    rollouts = fixed_batch(tok)
    for r in rollouts:
        r.advantage = 0.0
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    first = update(m, None, opt, rollouts, settings(entropy_coef=0.5), tok.pad_token_id)
    assert first.loss == pytest.approx(-0.5 * first.entropy, rel=1e-6)
    second = update(m, None, opt, rollouts, settings(entropy_coef=0.5), tok.pad_token_id)
    assert second.entropy > first.entropy


def test_kl_in_the_reward_moves_the_advantages_not_the_loss(model_and_tok):
    """Before any change the policy equals the reference: the penalty is zero and the gradient is the plain one;
    the KL is still measured."""
    model, tok = model_and_tok
    reference = copy.deepcopy(model).eval()
    rollouts = fixed_batch(tok)
    grads = []
    for kw in (dict(), dict(beta=0.5, kl_in="reward", kl_estimator="k1")):
        m = copy.deepcopy(model)
        opt = RecordingSGD(m.parameters(), lr=0.0)
        stats = update(m, reference, opt, rollouts, settings(**kw), tok.pad_token_id)
        grads.append(opt.grads[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-7)
    assert stats.kl == pytest.approx(0.0, abs=1e-7)


def test_the_update_reports_the_padded_share_of_its_forward_pass(model_and_tok):
    model, tok = model_and_tok
    rollouts = fixed_batch(tok)
    stats = update(model, None, torch.optim.SGD(model.parameters(), lr=0.0), rollouts, settings(micro_batch_size=8),
                   tok.pad_token_id)
    mb = make_micro_batch(rollouts, Layout("padded", len(rollouts), 0), tok.pad_token_id, torch.device("cpu"))
    real = sum(len(r.prompt_ids) + r.length for r in rollouts)
    assert stats.padded_fraction == pytest.approx(1 - real / mb.input_ids.numel())
    assert 0 < stats.padded_fraction < 1  # prompts and completions of different lengths
