import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.objectives.loss import logprobs_and_entropy
from grpo.sampling.base import SamplingSettings
from grpo.sampling.hf import HFSampler


def load(path):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_groups_have_n_completions_with_consistent_fields(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    sampler = HFSampler(model, tok, generation_batch_size=5)  # a chunk boundary falls inside a group
    prompts = [tok("1+1=").input_ids, tok("a much longer prompt").input_ids]
    groups = sampler.generate(prompts, SamplingSettings(n=3, temperature=1.0, max_new_tokens=12, seed=1))
    assert [len(g.completions) for g in groups] == [3, 3]
    for group, prompt in zip(groups, prompts):
        assert group.prompt_ids == prompt
        for c in group.completions:
            assert len(c.token_ids) == len(c.logprobs) <= 12
            assert all(lp <= 0 for lp in c.logprobs)
            if c.finish_reason == "length":
                assert len(c.token_ids) == 12 and tok.eos_token_id not in c.token_ids
            else:  # stopped on EOS: kept once, at the end, nothing after it
                assert c.token_ids[-1] == tok.eos_token_id and tok.eos_token_id not in c.token_ids[:-1]


def test_same_seed_same_completions_and_rng_left_untouched(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    sampler = HFSampler(model, tok)
    prompts = [tok("x=").input_ids]
    settings = SamplingSettings(n=4, max_new_tokens=10, seed=7)
    before = torch.random.get_rng_state()
    a = sampler.generate(prompts, settings)
    assert torch.equal(before, torch.random.get_rng_state())
    b = sampler.generate(prompts, settings)
    c = sampler.generate(prompts, SamplingSettings(n=4, max_new_tokens=10, seed=8))
    ids = lambda gs: [x.token_ids for x in gs[0].completions]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_sampler_logprobs_match_the_trainers_for_the_same_tokens(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    prompt = tok("2+2=").input_ids
    group = HFSampler(model, tok).generate([prompt], SamplingSettings(n=2, temperature=0.7, max_new_tokens=8))[0]
    for c in group.completions:
        ids = torch.tensor([prompt + c.token_ids])
        logits = model(ids).logits[0, len(prompt) - 1:-1]  # [C, V]
        n = len(c.token_ids)
        trainer = logprobs_and_entropy(logits, torch.arange(n).view(1, n), torch.tensor([c.token_ids]), 0.7,
                                       with_entropy=False)[0][0]
        assert torch.allclose(trainer, torch.tensor(c.logprobs), atol=1e-4)


def test_stop_strings_cut_text_and_tokens(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    sampler = HFSampler(model, tok)
    groups = sampler.generate([tok("q").input_ids], SamplingSettings(n=6, max_new_tokens=30, seed=0))
    # pick a character the model actually produced and use it as a stop string
    text = next(c.text for c in groups[0].completions if len(c.text) > 3)
    stop = text[2]
    stopped = sampler.generate([tok("q").input_ids], SamplingSettings(n=6, max_new_tokens=30, seed=0,
                                                                       stop=(stop,)))
    hit = [c for c in stopped[0].completions if c.finish_reason == "stop" and c.token_ids[-1] != tok.eos_token_id]
    assert hit, "the stop string should end at least one completion"
    for c in hit:
        assert stop not in c.text
        assert tok.decode(c.token_ids).endswith(stop)  # the stop string's token is the last one kept


def test_checkpoint_generation_defaults_do_not_leak_into_sampling(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    prompt = tok("2+2=").input_ids
    settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=8, seed=3)
    plain = HFSampler(model, tok).generate([prompt], settings)
    model.generation_config.top_k = 2  # what a checkpoint might ship; RL must sample the full distribution
    model.generation_config.repetition_penalty = 5.0
    again = HFSampler(model, tok).generate([prompt], settings)
    assert [c.token_ids for c in plain[0].completions] == [c.token_ids for c in again[0].completions]
    assert model.generation_config.top_k == 2  # and the model's own config is left as it was


def _greedy_reference(model, prompt, max_new_tokens, eos=None):
    """transformers' own greedy decoding of one prompt, unpadded: the reference for ours."""
    out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=0,
                         top_k=None, top_p=None, temperature=None)
    return out[0, len(prompt):].tolist()


def test_shared_prefill_and_dropped_rows_decode_what_transformers_generate_does():
    from grpo.demo import resolve_demo_model
    from grpo.sampling import decode

    model, tok = load(resolve_demo_model("demo:tiny-arith"))
    model.eval()
    data = Path(__file__).resolve().parents[1] / "data/arith/train.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()[:3]]
    prompts = [tok(f"Question: {r['question']}\nAnswer:").input_ids for r in rows]
    # Greedy, it answers "The answer is 8." to the first and "... 4." to the third: with "4" as a second stop
    # token, the third prompt's rows finish two steps early and leave the cache while the others decode on.
    stops = [tok.eos_token_id, tok.convert_tokens_to_ids("4")]
    want = [_greedy_reference(model, p, 30, stops) for p in prompts]
    drawn = decode.draw(model, prompts, 2, temperature=0.0, top_p=1.0, max_new_tokens=30, pad_id=tok.pad_token_id,
                        eos_ids=set(stops))
    for row, tokens in enumerate(drawn.tokens):
        expected = want[row // 2]
        end = next((i + 1 for i, t in enumerate(expected) if t in stops), len(expected))
        assert tokens == expected[:end]
    assert len({len(t) for t in drawn.tokens}) > 1  # rows left the cache at different steps


def test_a_tiny_top_p_keeps_only_the_most_likely_token(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    prompts = [tok("1+1=").input_ids, tok("say hi").input_ids]
    sampler = HFSampler(model, tok)
    greedy = sampler.generate(prompts, SamplingSettings(n=1, temperature=0.0, max_new_tokens=10))
    nucleus = sampler.generate(prompts, SamplingSettings(n=3, temperature=1.0, top_p=1e-6, max_new_tokens=10, seed=3))
    for g, n in zip(greedy, nucleus):
        assert all(c.token_ids == g.completions[0].token_ids for c in n.completions)
        # the log-prob is still the full tempered distribution's, not the renormalised nucleus (which would be 0)
        assert all(lp < 0 for c in n.completions for lp in c.logprobs)


def test_draws_follow_the_tempered_distribution_and_top_p_cuts_its_tail():
    from grpo.sampling.decode import _sample

    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]]).repeat(40_000, 1)  # [A, V]
    want = torch.softmax(logits[0] / 0.7, dim=-1)
    token, logprob = _sample(logits, 0.7, 1.0)
    seen = torch.bincount(token, minlength=5).float() / len(token)
    assert torch.allclose(seen, want, atol=0.01)  # 40k draws: a frequency is off by < 0.003 at 3 sigma
    assert torch.allclose(logprob, want.log()[token], atol=1e-6)  # the drawn token's full-vocabulary log-prob
    token, _ = _sample(logits, 0.7, 0.9)  # the first two tokens hold 0.95 of the mass: the rest never drawn
    seen = torch.bincount(token, minlength=5).float() / len(token)
    assert seen[2:].sum() == 0 and abs(seen[0] - want[0] / want[:2].sum()) < 0.01


def test_include_stop_keeps_a_tool_calls_closing_tag_and_decoding_ends_there():
    from grpo.demo import resolve_demo_model
    from grpo.sampling.decode import draw

    model, tok = load(resolve_demo_model("demo:tiny-arith"))  # a character tokenizer: "= " is two tokens
    sampler = HFSampler(model, tok)
    prompt = [tok("Question: Tom has 3 pens and buys 4 more. How many pens now?\nAnswer:").input_ids]
    settings = SamplingSettings(n=8, temperature=1.0, max_new_tokens=40, seed=0, stop=("= ",), include_stop=True)
    kept = [c for c in sampler.generate(prompt, settings)[0].completions if c.finish_reason == "stop"
            and c.token_ids[-1] != tok.eos_token_id]
    assert kept, "some completion should write '= '"
    for c in kept:
        assert c.text.endswith("= ") and c.text.count("= ") == 1 and tok.decode(c.token_ids) == c.text
        assert len(c.token_ids) == len(c.logprobs)
    cut = sampler.generate(prompt, SamplingSettings(**{**settings.__dict__, "include_stop": False}))
    assert all(not c.text.endswith("= ") for c in cut[0].completions)
    # the stop tokens end a row's decoding like EOS: when every row has met them, the loop stops
    space = tok(" ", add_special_tokens=False).input_ids
    early = draw(model, prompt, 4, temperature=1.0, top_p=1.0, max_new_tokens=40, pad_id=tok.pad_token_id,
                 eos_ids={tok.eos_token_id}, stop_sequences=[space])
    assert max(len(t) for t in early.tokens) < 10 and all(space[0] in t for t in early.tokens)
