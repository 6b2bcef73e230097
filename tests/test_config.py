import pytest

from grpo.config import RecipeConfig
from grpo.recipe import load_recipe
from grpo.errors import ConfigError, UserError

MINIMAL = """
data: {path: data.jsonl}
rewards: [{name: math}]
"""


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path, text, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, text), list(overrides))
    return info.value.problems


def test_minimal_recipe_loads_with_typed_defaults(tmp_path):
    cfg = load_recipe(write(tmp_path, MINIMAL))
    assert isinstance(cfg, RecipeConfig)
    assert cfg.rewards[0].name == "math" and cfg.rewards[0].weight == 1.0
    assert cfg.train.advantage == "grpo" and cfg.sampler.group_size == 8


def test_overrides_set_nested_keys_with_yaml_types(tmp_path):
    cfg = load_recipe(write(tmp_path, MINIMAL), ["train.lr=1e-5", 'sampler.stop=["\\n\\n"]', "train.beta=0.04",
                                                 "model.lora.enabled=true"])
    assert cfg.train.lr == 1e-5 and cfg.train.beta == 0.04
    assert cfg.sampler.stop == ["\n\n"] and cfg.model.lora.enabled is True


def test_unknown_key_suggests_the_close_one(tmp_path):
    found = problems(tmp_path, MINIMAL + "train: {learning_rate: 1e-5, stpes: 3}\n")
    assert any("train.stpes: unknown key (did you mean 'train.steps'?)" in p for p in found)
    assert any(p.startswith("train.learning_rate: unknown key") for p in found)


def test_unknown_override_key_is_reported_with_suggestion(tmp_path):
    found = problems(tmp_path, MINIMAL, ["sampler.group_sise=4"])
    assert any("did you mean 'sampler.group_size'" in p for p in found)


def test_all_problems_are_reported_together(tmp_path):
    found = problems(tmp_path, """
data: {path: d.jsonl}
rewards: [{name: math}]
train: {steps: many, advantage: grp, prompts_per_step: 3, micro_batch_size: 5, beta: -1}
sampler: {group_size: 4, temperature: 0}
""")
    text = "\n".join(found)
    assert "train.steps: expected an integer, got 'many'" in text
    assert ("train.advantage: 'grp' is not one of grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline "
            "(did you mean 'grpo'?)") in text
    assert "train.micro_batch_size: 5 does not divide the batch" in text and "3 x 4 = 12" in text
    assert "train.beta" in text and "sampler.temperature" in text
    assert len(found) >= 5


def test_missing_required_parts_are_named(tmp_path):
    found = problems(tmp_path, "name: x\n")
    assert any(p.startswith("data.path: required") for p in found)
    assert any(p.startswith("rewards: at least one reward") for p in found)


def test_group_size_of_one_is_impossible(tmp_path):
    assert any("sampler.group_size" in p for p in problems(tmp_path, MINIMAL, ["sampler.group_size=1"]))


def test_missing_recipe_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: no such file"):
        load_recipe(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_file(tmp_path):
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(write(tmp_path, "train: {steps: [1,\n"))


def test_a_string_override_keeps_the_exact_text(tmp_path):
    cfg = load_recipe(write(tmp_path, MINIMAL), ["data.prompt_template={question}", "data.answer_column=true",
                                                 "data.system_prompt=null", "name=123"])
    assert cfg.data.prompt_template == "{question}"  # not a YAML mapping
    assert cfg.data.answer_column == "true" and cfg.name == "123"
    assert cfg.data.system_prompt is None


def test_a_top_level_key_that_belongs_to_a_section_is_pointed_there(tmp_path):
    found = problems(tmp_path, MINIMAL, ["steps=3"])
    assert any("did you mean 'train.steps'" in p for p in found)


def test_shared_slices_are_one_declaration():
    """Train, eval and the sampler read the same prompt and generation fields: adding one reaches all."""
    import dataclasses

    from grpo.config import DataConfig, EvalConfig, GenerationConfig, PromptConfig, SamplerConfig

    prompt = {f.name for f in dataclasses.fields(PromptConfig)}
    generation = {f.name for f in dataclasses.fields(GenerationConfig)}
    assert issubclass(DataConfig, PromptConfig) and issubclass(EvalConfig, PromptConfig)
    assert issubclass(SamplerConfig, GenerationConfig) and issubclass(EvalConfig, GenerationConfig)
    assert prompt <= {f.name for f in dataclasses.fields(EvalConfig)}
    assert generation <= {f.name for f in dataclasses.fields(EvalConfig)}


def test_eval_section_alone_is_checked_by_the_eval_rules_only(tmp_path):
    from grpo.recipe import load_eval_section

    cfg, _ = load_eval_section(write(tmp_path, "eval: {data: x.jsonl, k: 4}\n"))  # no data.path, no rewards
    assert cfg.k == 4 and cfg.temperature == 0.6
    with pytest.raises(ConfigError, match="eval.k: samples per problem must be >= 1"):
        load_eval_section(write(tmp_path, "eval: {data: x.jsonl}\n"), values={"eval.k": 0})


def test_a_literal_backslash_n_in_a_string_override_is_kept_and_warned_about(tmp_path):
    from grpo.recipe import ConfigWarning

    with pytest.warns(ConfigWarning, match="data.prompt_template: the value holds a literal backslash-n"):
        cfg = load_recipe(write(tmp_path, MINIMAL), ["data.prompt_template=Q: {question}\\nA:"])
    assert cfg.data.prompt_template == "Q: {question}\\nA:"
