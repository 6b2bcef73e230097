"""Episodes and the per-token batch: environment tokens are context only (no loss, KL, entropy or gradient, not
in the sampler check), model tokens are kept exactly as sampled, and a multi-segment batch trains the same on two
ranks as on one."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo.config import TrainConfig
from grpo.objectives.objective import LossInputs, assemble_loss, before_update
from grpo.sampling.base import Completion
from grpo.train.episodes import Episode, environment_segment, model_segment, token_batch
from grpo.train.layout import choose_layout
from grpo.train.packing import Layout, make_micro_batch
from grpo.train.update import build_objective, completion_logprobs
from test_update import RecordingSGD, run_update

CPU = torch.device("cpu")
PAD = 0
HERE = Path(__file__).parent / "distributed"


def two_turn(prompt, first, tool, second, group_id=0, advantage=1.0, logprobs=None):
    logprobs = logprobs or ([-0.5] * len(first), [-0.7] * len(second))
    return Episode(prompt, [model_segment(first, logprobs[0]), environment_segment(tool),
                            model_segment(second, logprobs[1])], group_id=group_id, policy_version=4,
                   advantage=advantage)


def test_a_one_turn_episode_is_one_model_segment():
    e = Episode.one_turn([1, 2], Completion([7, 8, 9], [-0.1, -0.2, -0.3], "abc", "length"), group_id=5,
                         policy_version=2, prompt_text="p", row={"answer": 1})
    assert [s.trained for s in e.segments] == [True]
    assert e.completion_ids == [7, 8, 9] and e.model_tokens == e.length == 3
    assert (e.text, e.finish_reason, e.group_id, e.policy_version, e.row) == ("abc", "length", 5, 2, {"answer": 1})
    with pytest.raises(ValueError, match="3 token ids but 2 log-probs"):
        model_segment([1, 2, 3], [0.0, 0.0])


def test_the_per_token_batch_masks_environment_tokens_and_keeps_ids_as_sampled():
    episodes = [two_turn([1, 2, 3], [10, 11], [20, 21, 22], [12], group_id=0, advantage=1.5),
                Episode.one_turn([4], Completion([13, 14], [-1.0, -2.0], "", "stop"), group_id=1, advantage=-0.5)]
    b = token_batch(episodes, PAD)
    assert b.input_ids.tolist() == [[10, 11, 20, 21, 22, 12], [13, 14, PAD, PAD, PAD, PAD]]
    assert b.loss_mask.tolist() == [[1, 1, 0, 0, 0, 1], [1, 1, 0, 0, 0, 0]]
    assert b.old_logprobs.tolist() == [[-0.5, -0.5, 0, 0, 0, pytest.approx(-0.7)], [-1, -2, 0, 0, 0, 0]]
    assert b.positions[0].tolist() == [3, 4, 5, 6, 7, 8] and b.positions[1, :2].tolist() == [1, 2]
    assert b.advantages[0].tolist() == [1.5] * 6 and b.advantages[1].tolist() == [-0.5] * 6
    assert b.group_id.tolist() == [0, 1] and b.version.tolist() == [4, 0] and b.model_tokens == 5
    cut = b.rows(range(1, 2))  # a micro-batch's rows, cut to their longest
    assert cut.input_ids.tolist() == [[13, 14]] and cut.episodes == episodes[1:]


# ------------------------------------------------------------------------------ masked tokens move nothing

VARIANTS = {
    "clip_token_mean": dict(),
    "dual_clip_mu2": dict(clip_ratio_c=1.5, mu=2),
    "gspo_sequence_mean": dict(loss="gspo", clip_low=3e-4, clip_high=4e-4, loss_aggregation="sequence_mean"),
    "gspo_token": dict(loss="gspo_token", clip_low=3e-4, clip_high=4e-4),
    "cispo_constant": dict(loss="cispo", clip_high=2.0, loss_aggregation="constant"),
    "kl_k3_loss_entropy": dict(beta=0.1, entropy_coef=0.01),
    "kl_k2_clamped": dict(beta=0.1, kl_estimator="k2", kl_clamp=2.0),
    "kl_k1_reward": dict(beta=0.1, kl_estimator="k1", kl_in="reward"),
    "tis_sequence_mu2_trainer": dict(sampler_correction="tis", correction_level="sequence", mu=2,
                                     old_logprobs="trainer"),
    "mis_geometric": dict(sampler_correction="mis", correction_level="geometric", correction_cap=1.5),
}


def loss_and_grads(objective, logp, entropy, sampler, ref, advantages, mask):
    """The loss as the update assembles it on its first pass, with the gradient wrt logp and entropy."""
    logp, entropy = logp.clone().requires_grad_(), entropy.clone().requires_grad_()
    ref = ref if objective.kl is not None else None  # the update computes reference log-probs only when beta > 0
    fixed = before_update(objective, logp.detach(), sampler, ref, advantages, mask)
    old = logp.detach() if objective.mu == 1 else (fixed.trainer_old if objective.old_from_trainer else sampler)
    terms = assemble_loss(objective, LossInputs(logp, entropy, old, fixed.advantages, ref,
                                                fixed.weights.weight if fixed.weights is not None else None, mask,
                                                batch_sequences=3, batch_tokens=int(mask.sum())))
    terms.loss.backward()
    kl = (terms.kl * mask).sum() if terms.kl is not None else None
    return terms.loss.detach(), kl, logp.grad, entropy.grad


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_masked_tokens_get_no_gradient_and_changing_them_changes_nothing(name):
    s = TrainConfig(**VARIANTS[name])
    correction = s.sampler_correction if s.sampler_correction != "auto" else "none"
    objective = build_objective(s, correction, loss_constant=8)
    gen = torch.Generator().manual_seed(0)
    shape = (3, 8)
    mask = torch.ones(shape)
    mask[0, 2:5] = 0.0  # an environment segment inside the first episode
    mask[1, 6:] = 0.0  # padding after the second
    mask[2, 0:1] = 0.0  # the third starts with an environment token
    logp = -torch.rand(shape, generator=gen) * 3
    entropy = torch.rand(shape, generator=gen) * 2
    sampler = logp + (torch.rand(shape, generator=gen) - 0.5) * 0.8
    ref = logp + (torch.rand(shape, generator=gen) - 0.5) * 0.4
    advantages = torch.tensor([[1.0], [-0.5], [0.25]]).expand(shape).contiguous()
    loss, kl, g_logp, g_entropy = loss_and_grads(objective, logp, entropy, sampler, ref, advantages, mask)
    off = mask == 0
    assert loss.abs() > 0 and g_logp[~off].abs().max() > 0
    assert torch.equal(g_logp[off], torch.zeros(int(off.sum())))
    assert g_entropy is None or torch.equal(g_entropy[off], torch.zeros(int(off.sum())))

    # Far-off values on masked positions only (an environment token the policy finds very unlikely, a reference
    # that disagrees wildly there): the loss, the KL and every unmasked gradient stay the same bits.
    wild = lambda t, scale: torch.where(off, t + scale * torch.randn(shape, generator=gen), t)  # noqa: E731
    again = loss_and_grads(objective, wild(logp, 40.0), wild(entropy, 40.0), wild(sampler, 40.0),
                           wild(ref, 200.0), wild(advantages, 40.0), mask)
    assert torch.equal(again[0], loss)
    assert kl is None or torch.equal(again[1], kl)
    assert torch.equal(again[2][~off], g_logp[~off]) and torch.equal(again[2][off], g_logp[off])
    assert g_entropy is None or torch.equal(again[3], g_entropy)


# ------------------------------------------------------------------------------ the update on real episodes

@pytest.fixture
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def batch_with_tools(vocab: int) -> list[Episode]:
    gen = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=gen).tolist()  # noqa: E731
    prompt_a, prompt_b = ids(4), ids(6)
    return [two_turn(prompt_a, ids(3), ids(5), ids(2), group_id=0, advantage=1.0),
            two_turn(prompt_a, ids(2), ids(2), ids(4), group_id=0, advantage=-1.0),
            Episode.one_turn(prompt_b, Completion(ids(5), [-1.0] * 5, "", "stop"), group_id=1, advantage=0.5),
            two_turn(prompt_b, ids(1), ids(6), ids(3), group_id=1, advantage=-0.5)]


def as_sampled_by(model, episodes: list[Episode]) -> tuple[list[Episode], torch.Tensor, torch.Tensor]:
    """The episodes with sampler log-probs equal to `model`'s on every model token."""
    mb = make_micro_batch(episodes, Layout("padded", len(episodes), 0), PAD, CPU)
    with torch.no_grad():
        logp = completion_logprobs(model, mb, 1.0)[0]  # [n, C]
    out = copy.deepcopy(episodes)
    for i, e in enumerate(out):
        col, segments = 0, []
        for s in e.segments:
            n = len(s.token_ids)
            segments.append(model_segment(s.token_ids, logp[i, col:col + n].tolist()) if s.trained else s)
            col += n
        e.segments = segments
    return out, logp, mb.mask


def all_model_tokens(episodes: list[Episode]) -> list[Episode]:
    """The same token sequences with every segment trained (the control: environment tokens would then count)."""
    out = copy.deepcopy(episodes)
    for e in out:
        e.segments = [s if s.trained else model_segment(s.token_ids, [0.0] * len(s.token_ids)) for s in e.segments]
    return out


def test_the_logprob_gap_is_measured_on_model_tokens_only(model):
    episodes, logp, mask = as_sampled_by(model, batch_with_tools(model.config.vocab_size))
    s = TrainConfig(micro_batch_size=2, max_grad_norm=1e9)
    frozen = lambda: torch.optim.SGD(model.parameters(), lr=0.0)  # noqa: E731 - the figures, not the step
    stats = run_update(model, None, frozen(), episodes, s, PAD)
    assert stats.logprob_gap < 1e-6  # the sampler agrees on every model token
    assert stats.tokens == sum(e.model_tokens for e in episodes) < sum(e.length for e in episodes)
    # The control: the environment tokens counted as model tokens (with log-prob 0.0) open a gap.
    control = run_update(model, None, frozen(), all_model_tokens(episodes), s, PAD)
    assert control.logprob_gap > 0.1


@pytest.mark.parametrize("packing", ["padded", "shared_prompt"])
def test_the_update_trains_model_tokens_only(model, packing):
    """mu = 1, token_mean: the loss's gradient is that of -sum(A * logp) / (model tokens) over model tokens, by
    hand; counting the environment tokens too would give another gradient."""
    episodes = batch_with_tools(model.config.vocab_size)
    s = TrainConfig(micro_batch_size=2, max_grad_norm=1e9, clip_low=0.2, clip_high=0.28)
    layout = choose_layout(packing, 2, 0, model, CPU)
    m = copy.deepcopy(model)
    got = RecordingSGD(m.parameters(), lr=0.0)
    run_update(m, None, got, episodes, s, PAD, layout=layout)

    by_hand = copy.deepcopy(model)
    by_hand.train()
    mb = make_micro_batch(episodes, Layout("padded", len(episodes), 0), PAD, CPU)
    logp, _ = completion_logprobs(by_hand, mb, 1.0)  # [n, C]
    loss = -(mb.tokens.advantages * logp * mb.mask).sum() / mb.mask.sum()
    loss.backward()
    want = torch.cat([p.grad.flatten() for p in by_hand.parameters()])
    assert torch.allclose(got.grads[0], want, atol=1e-6, rtol=1e-4)

    control_model = copy.deepcopy(model)
    control = RecordingSGD(control_model.parameters(), lr=0.0)
    run_update(control_model, None, control, all_model_tokens(episodes), s, PAD, layout=layout)
    assert not torch.allclose(control.grads[0], want, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------ two ranks

@pytest.mark.slow  # torchrun with 2 gloo ranks, and the one-process reference
def test_two_ranks_train_multi_segment_episodes_as_one_process(tmp_path, tiny_model_dir):
    from test_distributed import python, torchrun

    sys.path.insert(0, str(HERE))
    try:
        from episodes_update import CASES
    finally:
        sys.path.pop(0)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    single = python(HERE / "episodes_update.py", tiny_model_dir, one)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = torchrun(HERE / "episodes_update.py", tiny_model_dir, two)
    assert multi.returncode == 0, multi.stderr[-3000:]
    for case, *_ in CASES:
        a, b = (torch.load(d / f"{case}.pt") for d in (one, two))
        assert a["tokens"] == b["tokens"] == 41, case  # model tokens only (of 63), all-reduced
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6), case
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5) and a["grad_norm"] > 0, case
        assert b["kl"] == pytest.approx(a["kl"], abs=1e-7), case
        assert b["advantages"] == pytest.approx(a["advantages"], abs=1e-6), case
        assert b["correction_weight_mean"] == pytest.approx(a["correction_weight_mean"], rel=1e-6), case
        assert b["clip_fraction"] == pytest.approx(a["clip_fraction"], abs=1e-7), case
        for name, w in a["weights"].items():
            torch.testing.assert_close(b["weights"][name], w, atol=1e-6, rtol=1e-5, msg=f"{case}: {name}")
