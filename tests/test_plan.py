"""`grpo plan`: every item against figures worked out by hand for a small config, the verdicts the README documents
for the shipped Qwen recipes, --json's keys, and the command's exit codes."""

import json
from pathlib import Path

import pytest
import torch
from conftest import recipe_config
from typer.testing import CliRunner

from grpo.cli import app
from grpo.errors import UserError
from grpo.plan import (GB, ModelShape, layer_activation_bytes, model_shape, plan_memory, plan_recipe,
                       plan_with_fixes, read_model_shape, with_overrides)
from grpo.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DAPO_1_5B = str(ROOT / "recipes" / "qwen2.5-math-1.5b-dapo.yaml")
DAPO_7B = str(ROOT / "recipes" / "qwen2.5-math-7b-dapo.yaml")

# A Qwen2 of toy size: hidden 64, MLP 128, 2 layers, 4 heads of 16 (2 for K/V), 1000 tokens, untied head.
SMALL = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}
# By hand: a layer is q 64x64 + k, v 64x32 each + o 64x64 + q/k/v biases (64 + 32 + 32) + MLP 3 x 64x128 + two norms
LAYER = 64 * 64 + 2 * 64 * 32 + 64 * 64 + (64 + 32 + 32) + 3 * 64 * 128 + 2 * 64  # 37,120
ROOT_UNIT = 2 * 1000 * 64 + 64  # embeddings + head (untied) + final norm: 128,064
P = 2 * LAYER + ROOT_UNIT  # 202,304


# The small config (conftest.recipe_config(SMALL_RECIPE, changes)): sequences of 400, batches of 4 x 4 in micro-batches
# of 2, bf16 compute on fp32 master weights, vLLM sleeping between generations.
SMALL_RECIPE = {"model.dtype": "bfloat16", "model.master_dtype": "float32", "model.gradient_checkpointing": True,
                "data.max_prompt_tokens": 100, "sampler.max_new_tokens": 300,
                "train.prompts_per_step": 4, "sampler.group_size": 4, "train.micro_batch_size": 2,
                "train.beta": 0.1, "train.vocab_chunk_tokens": 512,
                "sampler.backend": "vllm",
                "sampler.vllm.gpu_memory_utilization": 0.5, "sampler.vllm.enable_sleep_mode": True}


def test_the_shape_and_parameter_count_of_a_small_config():
    shape = model_shape(SMALL)
    assert (shape.q_dim, shape.kv_dim, shape.head_dim, shape.qkv_bias, shape.tied) == (64, 32, 16, True, False)
    assert shape.layer_parameters() == LAYER and shape.root_parameters() == ROOT_UNIT and shape.parameters() == P


def test_every_item_of_a_small_plan_by_hand():
    """Two GPUs of 10 GB, FSDP2, bf16 compute over fp32 masters, a reference (beta > 0), vLLM asleep in the update."""
    plan = plan_memory(recipe_config(SMALL_RECIPE), model_shape(SMALL), gpus=2, gpu_bytes=10 * GB)
    got = {i.name: (i.generation, i.update) for i in plan.items}
    assert plan.strategy == "fsdp" and plan.tokens_per_micro_batch == 2 * 400  # 2 rows of 100 + 300
    assert got["master_weights"] == (P * 4 / 2, P * 4 / 2)
    assert got["optimizer"] == (2 * P * 4 / 2, 2 * P * 4 / 2)
    # fp32 shards, plus the root's and one layer's unsharded gradients in flight, in bf16 and again in fp32
    assert got["gradients"] == (0, P * 4 / 2 + (ROOT_UNIT + LAYER) * (2 + 4))
    assert got["parameters"] == (0, (ROOT_UNIT + 2 * LAYER) * 2)  # bf16 root + two layers gathered
    assert got["reference"] == (P * 2 / 2, P * 2 / 2 + ROOT_UNIT * 2)  # bf16 shards; its root stays gathered
    # activations, bytes a token: per layer, bf16 x (4H + 2q + 2 x 64 (sdpa repeats K/V to 4 heads) + 4I) + fp32
    # norm inputs 2 x 4H + rstd 2 x 4 + logsumexp 4 x heads; checkpointed: 2 layer inputs (2H each) + 1.5 layers +
    # embedding output and final norm (2 x 2 + 4) H
    per_layer = 2 * (4 * 64 + 2 * 64 + 2 * 64 + 4 * 128) + 8 * 64 + 8 + 4 * 4
    assert per_layer == 2584
    assert got["activations"] == (0, 800 * (2 * 2 * 64 + 1.5 * per_layer + 8 * 64))
    assert got["vocab_pass"] == (0, 20 * 512 * 1000)  # chunk 512 of the 800 positions x V at 20 bytes
    # vLLM: whole bf16 weights; profile run of max(8192, 400) tokens x (q + 2kv + 3I + 4H) bf16, the sampler over
    # min(2 prompts x 4, 1024) rows of 12 bytes a logit, 0.5 GB of graphs; the KV cache is the rest of 0.5 x 10 GB
    vllm_act = 8192 * 2 * (64 + 64 + 384 + 256) + 8 * 1000 * 12 + 0.5 * GB
    assert got["vllm_weights"] == (P * 2, 0)
    assert got["vllm_activations"] == (vllm_act, 0.5 * GB)  # asleep: the graphs stay
    kv = 0.5 * 10 * GB - P * 2 - vllm_act
    assert got["kv_cache"] == (kv, 0)
    assert plan.kv_cache["bytes_per_token"] == 2 * 2 * 2 * 16 * 2  # K and V x layers x kv heads x head_dim x bf16
    assert plan.kv_cache["tokens"] == int(kv // 256) and plan.kv_cache["sequences"] == int(kv // 256) // 400
    assert got["cuda_context"] == (1.5 * GB, 1.5 * GB)  # context 1 GB + NCCL 0.5 GB on more than one GPU
    trainer_gen = P * 2 + P * 4 + P  # masters, optimizer, reference: not vLLM's share, not the context
    trainer_upd = sum(got[k][1] for k in ("master_weights", "optimizer", "gradients", "parameters", "reference",
                                          "activations", "vocab_pass"))
    assert got["fragmentation"] == pytest.approx((0.05 * trainer_gen, 0.05 * trainer_upd))
    assert plan.phase_bytes("generation") == pytest.approx(sum(g for g, _ in got.values()))
    assert plan.fits and plan.peak_phase == "generation"  # vLLM's 5 GB share dominates a toy model
    assert plan.host["checkpoint_rank0_bytes"] == 3 * P * 4 and plan.host["checkpoint_other_ranks_bytes"] == 0


def test_lora_ddp_and_the_transformers_sampler_by_hand():
    shape = model_shape(SMALL)
    lora = plan_memory(recipe_config(SMALL_RECIPE, {"model.lora.enabled": True, "model.lora.r": 4,
                                                    "model.lora.target_modules": ["q_proj", "down_proj"]}),
                       shape, 2, 10 * GB)
    got = {i.name: (i.generation, i.update) for i in lora.items}
    adapters = 2 * (4 * (64 + 64) + 4 * (128 + 64))  # per layer r x (in + out) for q_proj and down_proj
    assert lora.strategy == "ddp" and got["parameters"] == (P * 2, P * 2)  # the frozen bf16 base, whole
    assert got["master_weights"] == (adapters * 4,) * 2 and got["optimizer"] == (2 * adapters * 4,) * 2
    assert got["gradients"] == (0, 2 * adapters * 4)  # and DDP's buckets
    assert got["reference"] == (0, 0)  # adapters off is the reference
    ddp = plan_memory(recipe_config(SMALL_RECIPE, {"distributed.strategy": "ddp", "sampler.backend": "hf",
                                                   "sampler.generation_batch_size": 8}), shape, 2, 10 * GB)
    got = {i.name: (i.generation, i.update) for i in ddp.items}
    assert got["master_weights"] == (P * 4,) * 2 and got["gradients"] == (0, 2 * P * 4)  # whole, and buckets
    assert got["parameters"] == (0, P * 2)  # autocast's bf16 copies
    assert got["sampler_weights"] == (P * 2, 0)
    assert got["kv_cache"] == (8 * 400 * 256, 0)  # 8 rows x 400 positions x 256 bytes
    assert got["sampler_logits"] == (8 * 1000 * 12, 0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_layer_count_is_what_autograd_saves_in_a_transformers_qwen2(dtype):
    """layer_activation_bytes against the tensors autograd keeps for one Qwen2 decoder layer (sdpa without a mask:
    grouped K/V not repeated, as flash attention): the difference between 3 and 1 layers, halved."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def saved_bytes(layers: int, tokens: int = 64) -> int:
        config = Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=100, attn_implementation="sdpa")
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype)).train()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in weights:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.model(input_ids=torch.randint(0, 100, (1, tokens)), use_cache=False)
        return sum(seen.values())

    per_token_layer = (saved_bytes(3) - saved_bytes(1)) / 2 / 64
    shape = ModelShape(hidden=64, intermediate=160, layers=1, heads=4, kv_heads=2, head_dim=16, vocab=100, tied=True)
    assert per_token_layer == layer_activation_bytes(shape, {'bfloat16': 2, 'float32': 4}[dtype], flash=True)


@pytest.mark.parametrize("name,parameters", [("Qwen/Qwen2.5-Math-1.5B", 1_543_714_304),
                                             ("Qwen/Qwen2.5-Math-7B", 7_615_616_512)])
def test_shipped_configs_count_what_transformers_builds(name, parameters):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shape, found = read_model_shape(name)
    assert found == ROOT / "recipes" / "model-configs" / name / "config.json"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(found.parent))
    assert shape.parameters() == sum(p.numel() for p in model.parameters()) == parameters


@pytest.mark.parametrize("recipe", sorted(str(p) for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_shipped_recipe_can_be_planned(recipe):
    cfg = load_recipe(recipe)
    try:
        read_model_shape(cfg.model.path, Path(recipe).parent)
    except UserError:
        assert not cfg.model.path.startswith(("Qwen/", "demo:")), "a shipped recipe's model has no config file"
        pytest.skip(f"{cfg.model.path} is built locally (make smollm2)")


# ---------------------------------------------------------------------------------------------------- the verdicts


def test_the_1_5b_dapo_recipe_fits_one_80_gb_gpu():
    plan = plan_recipe(DAPO_1_5B, [], 1, 80)
    assert plan.fits and plan.peak_bytes <= 0.9 * 80 * GB
    assert plan.kv_cache["sequences"] >= 100  # a step's 512 rows in a few waves


def test_the_1_5b_dapo_recipe_is_refused_on_24_gb_and_says_why():
    plan = plan_recipe(DAPO_1_5B, [], 1, 24)
    assert not plan.fits
    assert {i.name for i in plan.biggest()} >= {"optimizer"}
    assert any(f.fits for f in plan.fixes)


def test_7b_full_fine_tuning_is_refused_on_one_80_gb_gpu_with_lora_suggested():
    plan = plan_recipe(DAPO_7B, [], 1, 80)
    assert not plan.fits and plan.item("optimizer").update > 0.9 * 80 * GB / 2  # 61 GB of AdamW state alone
    lora = next(f for f in plan.fixes if "model.lora.enabled=true" in f.change)
    assert lora.fits and lora.change == ["model.lora.enabled=true"]


def test_7b_with_fsdp_fits_eight_80_gb_gpus():
    plan = plan_recipe(DAPO_7B, [], 8, 80)
    assert plan.fits and plan.strategy == "fsdp"
    assert plan.item("master_weights").update == pytest.approx(7_615_616_512 * 4 / 8)


def test_the_qwen_recipes_set_a_token_budget_their_plan_fits():
    for recipe in sorted((ROOT / "recipes").glob("qwen2.5-math-*.yaml")):
        cfg = load_recipe(recipe)
        assert cfg.train.max_tokens_per_micro_batch > 0, recipe.name
        gpus = 8 if cfg.distributed.strategy == "fsdp" else 1
        assert plan_recipe(str(recipe), [], gpus, 80).fits, recipe.name


def test_fixes_are_planned_not_guessed():
    plan = plan_with_fixes(load_recipe(DAPO_1_5B), read_model_shape("Qwen/Qwen2.5-Math-1.5B")[0], 1, 24 * GB)
    for fix in plan.fixes:  # each fix's figure is the plan of the recipe with that change
        changes = [c for c in fix.change if not c.startswith("--gpus")]
        assert plan_recipe(DAPO_1_5B, changes, fix.gpus, 24).peak_bytes == pytest.approx(fix.peak_bytes)


def test_a_kv_cache_too_small_for_one_sequence_is_a_problem():
    plan = plan_recipe(DAPO_1_5B, ["sampler.vllm.gpu_memory_utilization=0.05"], 1, 80)
    assert not plan.fits and "less than one sequence" in plan.problems[0]
    assert "sampler.vllm.gpu_memory_utilization" in plan.problems[0]


# ---------------------------------------------------------------------------------------------------- the command


def run(*args):
    return CliRunner().invoke(app, ["plan", *args])


def test_json_lists_every_item_by_name():
    result = run(DAPO_1_5B, "--gpus", "1", "--gpu-memory-gb", "80", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {"parameters", "gradients", "optimizer", "master_weights", "kv_cache", "vocab_pass",
            "activations", "reference", "cuda_context", "fragmentation"} <= set(out["items"])
    for item in out["items"].values():
        assert set(item) == {"generation_bytes", "update_bytes", "note"}
    assert set(out["phases"]) == {"generation_bytes", "update_bytes"} and out["fits"] is True
    assert {"tokens", "sequences", "bytes_per_token"} <= set(out["kv_cache"])
    assert out["host"]["checkpoint_rank0_bytes"] > 0 and out["host"]["checkpoint_other_ranks_bytes"] == 0


def test_exit_codes():
    assert run(DAPO_1_5B, "--gpu-memory-gb", "80").exit_code == 0
    refused = run(DAPO_1_5B, "--gpu-memory-gb", "24")
    assert refused.exit_code == 2 and "does not fit" in refused.output and "model.lora.enabled=true" in refused.output
    bad = run(DAPO_1_5B, "train.stpes=3", "--gpu-memory-gb", "80")
    assert bad.exit_code == 2 and "did you mean 'train.steps'" in bad.output
    unknown = run(DAPO_1_5B, "model.path=nobody/nothing", "--gpu-memory-gb", "80")
    assert unknown.exit_code == 2 and "no config.json for it here" in unknown.output
    uneven = run(DAPO_7B, "--gpus", "3", "--gpu-memory-gb", "80")
    assert uneven.exit_code == 2 and "train.prompts_per_step" in uneven.output


def test_a_local_model_directory_is_read_from_its_own_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    result = run(DAPO_1_5B, f"model.path={tmp_path}", "--gpu-memory-gb", "80", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["parameters"] == P


def test_the_demo_model_plans_from_its_shipped_config():
    result = run(str(ROOT / "recipes" / "tiny.yaml"), "--gpu-memory-gb", "8", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["shape"]["hidden"] == 128 and out["strategy"] == "none"  # float32 compute: nothing to cast


def test_a_reward_model_is_counted_whole_on_every_gpu_in_the_compute_dtype(tmp_path):
    """The reward_model reward (issue 30): its weights in both phases, one scoring forward's layer in the generation
    phase; a sequence classifier has a one-row score head where the LM has its head."""
    from grpo.plan import ScoringModel

    scorer = ScoringModel("reward_model rm", model_shape(SMALL), batch_size=8, max_tokens=None)
    assert scorer.parameters() == 2 * LAYER + 1000 * 64 + 64 + 64  # embeddings, final norm, score head
    bare = plan_memory(recipe_config(SMALL_RECIPE), model_shape(SMALL), gpus=2, gpu_bytes=10 * GB)
    plan = plan_memory(recipe_config(SMALL_RECIPE), model_shape(SMALL), gpus=2, gpu_bytes=10 * GB,
                       scorers=(scorer,))
    weights = scorer.parameters() * 2  # bf16 compute, not sharded: every rank scores its own completions
    forward = 8 * 400 * layer_activation_bytes(model_shape(SMALL), 2, False)
    item = plan.item("reward_models")
    assert item.generation == pytest.approx(weights + forward) and item.update == weights
    for phase in ("generation", "update"):  # the rest of the plan is the same, plus its share of fragmentation
        grown = plan.phase_bytes(phase) - bare.phase_bytes(phase)
        assert grown == pytest.approx(getattr(item, phase) * 1.05)


def test_grpo_plan_reads_the_reward_models_config_from_the_recipe(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "config.json").write_text(json.dumps({**SMALL, "architectures": ["Qwen2ForSequenceClassification"],
                                                "num_labels": 1}))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((ROOT / "recipes" / "tiny.yaml").read_text().replace(
        "  - {name: math, weight: 1.0}", f"  - {{name: reward_model, args: {{path: {rm}, batch_size: 4}}}}\n"
                                         f"  - {{name: math, weight: 0.0}}"))
    result = run(str(recipe), "--gpu-memory-gb", "8", "--json")
    assert result.exit_code == 0, result.output
    item = json.loads(result.output)["items"]["reward_models"]
    with torch.device("meta"):  # what transformers builds for that config: the count the plan uses
        built = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(rm))
    assert item["update_bytes"] == sum(p.numel() for p in built.parameters()) * 4  # the recipe computes in float32
    assert f"reward_model {rm}" in item["note"]
    recipe.write_text(recipe.read_text().replace(str(rm), str(tmp_path / "none")))
    missing = run(str(recipe), "--gpu-memory-gb", "8")
    assert missing.exit_code == 2, missing.output
    assert f"rewards[0].args.path (reward_model): {tmp_path / 'none'} is not a directory" in missing.output


def test_a_local_judge_is_planned_with_its_lm_head_and_kv_cache_and_a_served_one_not_at_all(tmp_path):
    """The judge reward (issue 31): backend transformers puts a causal LM on every GPU (the LM head kept, and the
    KV cache of a batch of prompts and replies); backend openai runs elsewhere and adds nothing."""
    from grpo.plan import ScoringModel, kv_bytes_per_token

    judge = ScoringModel("judge j", model_shape(SMALL), batch_size=8, max_tokens=None, generates=100)
    assert judge.parameters() == 2 * LAYER + 1000 * 64 + 64 + 1000 * 64  # embeddings, final norm, LM head
    assert judge.transient_bytes(400, 2, False) == pytest.approx(
        8 * 400 * layer_activation_bytes(model_shape(SMALL), 2, False) + 8 * 500 * kv_bytes_per_token(
            model_shape(SMALL), 2))
    model = tmp_path / "judge"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMALL))
    constitution = tmp_path / "c.yaml"
    constitution.write_text("principles:\n  - {name: a, instruction: x}\n")
    recipe = tmp_path / "recipe.yaml"
    local = (f"  - {{name: judge, args: {{constitution: {constitution}, backend: transformers, model: {model}, "
             f"batch_size: 4}}}}")
    recipe.write_text((ROOT / "recipes" / "tiny.yaml").read_text().replace("  - {name: math, weight: 1.0}", local))
    result = run(str(recipe), "--gpu-memory-gb", "8", "--json")
    assert result.exit_code == 0, result.output
    assert f"judge {model}" in json.loads(result.output)["items"]["reward_models"]["note"]
    served = (f"  - {{name: judge, args: {{constitution: {constitution}, base_url: 'http://127.0.0.1:8000/v1', "
              f"model: m}}}}")
    recipe.write_text((ROOT / "recipes" / "tiny.yaml").read_text().replace("  - {name: math, weight: 1.0}", served))
    result = run(str(recipe), "--gpu-memory-gb", "8", "--json")
    assert result.exit_code == 0, result.output
    assert "reward_models" not in json.loads(result.output)["items"]


def test_validate_warns_on_pure_bf16_with_a_tiny_lr():
    from grpo.validate import precision_warnings

    cfg = recipe_config({"model.dtype": "bfloat16", "model.master_dtype": "bfloat16", "train.lr": 1e-6})
    (warning,) = precision_warnings(cfg)
    assert "model.master_dtype=bfloat16" in warning and "train.lr=1e-06" in warning
    assert "model.master_dtype=float32" in warning
    assert precision_warnings(with_overrides(cfg, {"train.lr": 1e-4})) == []
    assert precision_warnings(with_overrides(cfg, {"model.master_dtype": "float32"})) == []
    assert precision_warnings(with_overrides(cfg, {"model.master_dtype": "float16", "train.lr": 1e-5})) == []
    assert precision_warnings(with_overrides(cfg, {"model.master_dtype": "float16", "train.lr": 1e-6}))


class _Card:
    def __init__(self, gb: float):
        self.total_memory = int(gb * 1e9)


def test_validate_says_the_plans_verdict_where_torch_sees_a_gpu(monkeypatch):
    import torch

    from grpo.validate import plan_verdict

    cfg = load_recipe(DAPO_1_5B)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plan_verdict(cfg, DAPO_1_5B) is None  # no GPU: nothing to say
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _Card(80))
    assert plan_verdict(cfg, DAPO_1_5B).startswith("plan: fits on 1 x 80 GB")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _Card(24))
    refused = plan_verdict(cfg, DAPO_1_5B)
    assert refused.startswith("plan: does not fit on 1 x 24 GB") and "fits with model.lora.enabled=true" in refused
    assert plan_verdict(load_recipe(DAPO_7B), DAPO_7B, world_size=8) is not None
    assert plan_verdict(with_overrides(cfg, {"model.path": "nobody/nothing"}), DAPO_1_5B) is None  # no config


def test_the_validate_command_prints_the_verdict(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _Card(80))
    result = CliRunner().invoke(app, ["validate", str(ROOT / "recipes" / "tiny.yaml")])
    assert result.exit_code == 0, result.output
    assert "plan: fits on 1 x 80 GB" in result.output
