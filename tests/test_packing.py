"""Packed layouts of the training pass give the padded layout's log-probs, loss and gradients (to float
rounding), cut micro-batches by a token budget, and hold fewer pad positions."""

import copy
import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo.config import TrainConfig
from grpo.errors import UserError
from grpo.sampling.base import Completion
from grpo.train.layout import checked_layout, choose_layout
from grpo.train.episodes import Episode
from grpo.train.packing import Layout, make_micro_batch, plan_micro_batches
from test_update import RecordingSGD, run_update
from grpo.train.update import completion_logprobs

CPU = torch.device("cpu")
PAD = 0


def groups_batch(vocab: int, seed: int = 0) -> list[Episode]:
    """Three groups of 3: prompts of 7, 3 and 5 tokens, completions of 1 to 9 tokens and one empty."""
    gen = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(1, vocab, (n,), generator=gen).tolist()  # noqa: E731
    lengths = [(7, [9, 1, 4]), (3, [5, 0, 8]), (5, [2, 6, 3])]
    rollouts = []
    for g, (p, cs) in enumerate(lengths):
        prompt = ids(p)
        for k, c in enumerate(cs):
            lp = (-torch.rand(c, generator=gen)).tolist()
            rollouts.append(Episode.one_turn(prompt, Completion(ids(c), lp, "", "stop"), group_id=g,
                                             advantage=[1.0, -0.5, 0.25][k] * (g + 1), reward=float(k)))
    return rollouts


@pytest.fixture(params=["sdpa", "eager"])
def model(tiny_model_dir, request):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=request.param)


def layout(kind, model, micro=64, max_tokens=0, row_tokens=0):
    chosen = choose_layout(kind, micro, max_tokens, model, CPU)
    return Layout(chosen.kind, micro, max_tokens, row_tokens, chosen.mask_dtype)


@pytest.mark.parametrize("kind,row_tokens", [("sequences", 0), ("sequences", None), ("shared_prompt", 0),
                                             ("shared_prompt", 12)])
def test_packed_layouts_give_the_padded_logprobs(model, kind, row_tokens):
    model.eval()
    rollouts = groups_batch(model.config.vocab_size)
    padded = make_micro_batch(rollouts, Layout("padded", 64, 0), PAD, CPU)
    packed = make_micro_batch(rollouts, layout(kind, model, row_tokens=row_tokens), PAD, CPU)
    with torch.no_grad():
        want, want_entropy = completion_logprobs(model, padded, 0.7, with_entropy=True)
        got, got_entropy = completion_logprobs(model, packed, 0.7, with_entropy=True)
    m = padded.mask.bool()
    assert torch.allclose(got[m], want[m], atol=1e-5)
    assert torch.allclose(got_entropy[m], want_entropy[m], atol=1e-5)
    assert packed.real_positions / packed.positions > padded.real_positions / padded.positions  # less padding
    if kind == "shared_prompt" and row_tokens == 0:  # each prompt once: 15 prompt tokens instead of 45
        assert packed.real_positions == 15 + sum(r.length for r in rollouts)


def settings(**kw):
    base = dict(clip_low=0.2, clip_high=0.28, beta=0.0, mu=1, micro_batch_size=9, loss_aggregation="token_mean",
                max_grad_norm=1e9)
    base.update(kw)
    return TrainConfig(**base)


def grads_and_stats(model, rollouts, s, lay, reference=None):
    m = copy.deepcopy(model)
    ref = copy.deepcopy(reference) if reference is not None else None
    optimizer = RecordingSGD(m.parameters(), lr=0.0)
    stats = run_update(m, ref, optimizer, rollouts, s, PAD, temperature=0.9, layout=lay)
    return optimizer.grads[-1], stats


@pytest.mark.parametrize("kind", ["sequences", "shared_prompt"])
@pytest.mark.parametrize("objective", [dict(), dict(loss_aggregation="sequence_mean"), dict(beta=0.1),
                                       dict(mu=2, old_logprobs="trainer"), dict(loss="gspo", clip_low=3e-4,
                                                                                  clip_high=4e-4),
                                       dict(entropy_coef=0.01)])
def test_packed_update_has_the_padded_loss_and_gradient(model, kind, objective):
    rollouts = groups_batch(model.config.vocab_size, seed=1)
    reference = copy.deepcopy(model)
    with torch.no_grad():  # a reference that differs, so the KL term has a gradient
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    s = settings(**objective)
    want, want_stats = grads_and_stats(model, rollouts, s, Layout("padded", 9, 0), reference)
    got, got_stats = grads_and_stats(model, rollouts, s, layout(kind, model, micro=9), reference)
    assert want.abs().max() > 0
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), float((got - want).abs().max())
    assert got_stats.loss == pytest.approx(want_stats.loss, rel=1e-5, abs=1e-7)
    assert got_stats.entropy == pytest.approx(want_stats.entropy, rel=1e-5)
    assert got_stats.kl == pytest.approx(want_stats.kl, rel=1e-4, abs=1e-9)
    assert got_stats.tokens == want_stats.tokens
    assert got_stats.padded_fraction < want_stats.padded_fraction


def test_a_token_budget_cuts_micro_batches_without_changing_the_gradient(model):
    rollouts = groups_batch(model.config.vocab_size, seed=2)
    budget = 24
    lay = layout("shared_prompt", model, max_tokens=budget)
    chunks = plan_micro_batches(rollouts, lay)
    assert len(chunks) > 1 and [i for c in chunks for i in c] == list(range(len(rollouts)))  # in order, each once
    for chunk in chunks:
        mb = make_micro_batch(rollouts[chunk.start:chunk.stop], lay, PAD, CPU)
        assert mb.real_positions <= budget or len(chunk) == 1  # one rollout longer than the budget goes alone
    want, _ = grads_and_stats(model, rollouts, settings(), Layout("padded", 9, 0))
    got, _ = grads_and_stats(model, rollouts, settings(), lay)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_ranks_can_ask_for_more_micro_batches_than_the_budget_needs(model):
    rollouts = groups_batch(model.config.vocab_size)
    lay = layout("sequences", model, max_tokens=1000)
    assert len(plan_micro_batches(rollouts, lay)) == 1
    more = plan_micro_batches(rollouts, lay, count_at_least=4)
    assert len(more) == 4 and [i for c in more for i in c] == list(range(len(rollouts)))


def test_auto_takes_shared_prompt_on_cpu_and_a_windowed_model_is_refused(model):
    assert choose_layout("auto", 8, 0, model, CPU).kind == "shared_prompt"
    assert choose_layout("auto", 8, 0, model, torch.device("cuda")).kind == "sequences"
    windowed = copy.deepcopy(model)
    windowed.config.layer_types = ["sliding_attention"] * windowed.config.num_hidden_layers
    assert choose_layout("auto", 8, 0, windowed, CPU).kind == "sequences"
    with pytest.raises(UserError, match="train.packing: shared_prompt"):
        choose_layout("shared_prompt", 8, 0, windowed, CPU)


def test_a_model_that_ignores_the_layout_falls_back_to_padded(model, capsys):
    lay = layout("shared_prompt", model)
    assert checked_layout(lay, model, PAD, CPU, explicit=True) is lay

    class PositionBlind(torch.nn.Module):  # drops position ids and masks: packed rows would read each other
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
            mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
            return self.inner(input_ids=input_ids, attention_mask=mask, **kw)

    blind = PositionBlind(model)
    assert checked_layout(lay, blind, PAD, CPU, explicit=False).kind == "padded"
    assert "training with padded rows" in capsys.readouterr().err
    with pytest.raises(UserError, match="train.packing: shared_prompt changes this model's log-probs"):
        checked_layout(lay, blind, PAD, CPU, explicit=True)


def test_a_model_that_ignores_position_restarts_is_caught_for_sequences(model, capsys):
    lay = layout("sequences", model)
    assert checked_layout(lay, model, PAD, CPU, explicit=True) is lay

    class OneSequencePerRow(torch.nn.Module):  # a plain causal mask: packed pairs would attend to each other
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, **kw):
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw)

    assert checked_layout(lay, OneSequencePerRow(model), PAD, CPU, explicit=False).kind == "padded"


def test_a_packed_micro_batch_of_empty_completions_contributes_nothing(model):
    rollouts = [r for r in groups_batch(model.config.vocab_size) if not r.length]
    assert rollouts
    for kind in ("sequences", "shared_prompt"):
        mb = make_micro_batch(rollouts, layout(kind, model), PAD, CPU)
        logp, _ = completion_logprobs(model, mb, 1.0)
        assert mb.mask.sum() == 0 and torch.isfinite(logp).all()


@pytest.mark.parametrize("kernel", ["nonsense", "flash_attention_2"])
def test_an_attention_kernel_that_cannot_load_names_the_key(tiny_model_dir, kernel):
    from grpo.config import ModelConfig
    from grpo.modeling import load_policy

    if kernel == "flash_attention_2" and importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(UserError, match="model.attn_implementation"):
        load_policy(ModelConfig(attn_implementation=kernel), tiny_model_dir, CPU)


def test_varlen_boundaries_are_computed_once_as_transformers_would_from_the_positions():
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    rollouts = groups_batch(50)
    mb = make_micro_batch(rollouts, Layout("sequences", 64, 0, row_tokens=None), PAD, CPU)
    (cu, _), (longest, _) = prepare_fa_kwargs_from_position_ids(mb.position_ids)
    assert torch.equal(mb.varlen["cu_seq_lens_q"], cu) and mb.varlen["cu_seq_lens_k"] is mb.varlen["cu_seq_lens_q"]
    assert mb.varlen["max_length_q"] == int(longest) and isinstance(mb.varlen["max_length_q"], int)
    assert make_micro_batch(rollouts, Layout("sequences", 64, 0), PAD, CPU).varlen is None  # rows: sdpa's masks


def test_shared_prompt_blocks_follow_group_ids_not_prompt_text(model):
    """Two groups that drew the same prompt are two groups (each its own baseline and block); one group's prompt
    is written once however its completions are cut."""
    model.eval()
    prompt = [5, 6, 7, 8]
    episodes = [Episode.one_turn(prompt, Completion([9 + k, 10], [-1.0, -1.0], "", "stop"), group_id=g)
                for g in (0, 1) for k in range(2)]
    mb = make_micro_batch(episodes, layout("shared_prompt", model), PAD, CPU)
    assert mb.real_positions == 2 * len(prompt) + 4 * 2  # the prompt once per group, not once for all four
    one_group = [Episode.one_turn(prompt, Completion([9 + k, 10], [-1.0, -1.0], "", "stop"), group_id=0)
                 for k in range(4)]
    assert make_micro_batch(one_group, layout("shared_prompt", model), PAD, CPU).real_positions == len(prompt) + 8
    padded = make_micro_batch(episodes, Layout("padded", 64, 0), PAD, CPU)
    with torch.no_grad():
        want = completion_logprobs(model, padded, 1.0)[0]
        got = completion_logprobs(model, mb, 1.0)[0]
    assert torch.allclose(got, want, atol=1e-5)
