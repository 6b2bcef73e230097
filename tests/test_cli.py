"""The command line as a user meets it: exit codes and messages."""

import pytest

from conftest import ROOT, grpo
from typer.testing import CliRunner

from grpo.cli import app
from grpo.validate import validate_recipe


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_shipped_recipe_validates(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    validate_recipe(recipe, check_environment=False)


def test_validate_reports_every_problem_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {path: nothing.jsonl}\nrewards: [{name: fromat}]\ntrain: {stpes: 3, lr: fast}\n")
    result = grpo("validate", str(bad))
    assert result.returncode == 2
    err = result.stderr
    assert "did you mean 'train.steps'" in err and "train.lr: expected a number, got 'fast'" in err
    assert "Did you mean 'format'?" in err and "nothing.jsonl: no such file" in err
    assert "4 problem(s)" in err


def test_rewards_lists_builtins_with_their_source():
    result = grpo("rewards")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "rewards.format:format_reward" in lines["format"] and "grpo" in lines["format"]


def test_train_with_a_missing_recipe_says_so():
    result = grpo("train", "no/such/recipe.yaml")
    assert result.returncode == 2 and "no/such/recipe.yaml: no such file" in result.stderr


def test_convert_gguf_names_a_bad_dtype_and_a_missing_file(tmp_path):
    bad_dtype = grpo("convert-gguf", "model.gguf", str(tmp_path / "out"), "--dtype", "int8")
    assert bad_dtype.returncode == 2 and "--dtype: 'int8' is not one of float32" in bad_dtype.stderr
    missing = grpo("convert-gguf", str(tmp_path / "nothing.gguf"), str(tmp_path / "out"))
    assert missing.returncode == 2 and "nothing.gguf: no such GGUF file" in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_every_eval_option_sets_the_eval_field_of_its_name():
    """grpo eval's options are the EvalConfig fields, one to one (besides the few that are not settings)."""
    import dataclasses
    import inspect

    from grpo.config import EvalConfig
    from grpo.eval.cli import NOT_FIELDS, eval_command

    options = set(inspect.signature(eval_command).parameters) - set(NOT_FIELDS)
    fields = {f.name for f in dataclasses.fields(EvalConfig)} - {"every"}  # `every` is training's
    assert options == fields


def test_eval_options_reach_the_config(monkeypatch, tmp_path):
    import grpo.eval.run

    seen = {}
    monkeypatch.setattr(grpo.eval.run, "run_eval", lambda cfg, **kw: seen.update(cfg=cfg, **kw) or {})
    result = CliRunner().invoke(app, ["eval", "--model", "demo:tiny-arith", "--data", "a.jsonl", "--k", "3",
                                      "--max-tokens", "7", "--stop", "\n", "--prompt-template", "{question}",
                                      "--vllm", "gpu_memory_utilization=0.7", "--limit", "5"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.k, cfg.max_new_tokens, cfg.stop, cfg.prompt_template) == (3, 7, ["\n"], "{question}")
    assert seen["engine"].gpu_memory_utilization == 0.7
    assert str(seen["output_dir"]).endswith("_limit5")


@pytest.mark.slow  # grpo in a child process, several times (9 s)
def test_validate_names_a_missing_logging_extra(tmp_path):
    import importlib.util

    for key, package in (("logging.tensorboard", "tensorboard"), ("logging.wandb", "wandb")):
        if importlib.util.find_spec(package) is not None:
            continue  # installed here: nothing to report
        result = grpo("validate", str(ROOT / "recipes" / "tiny.yaml"), f"{key}=true")
        assert result.returncode == 2 and f"{key}: true, but {package} is not installed" in result.stderr


@pytest.mark.slow  # grpo in a child process, several times (9 s)
def test_validate_checks_a_planned_torchrun_launch():
    result = grpo("validate", "recipes/tiny.yaml", "--world-size", "3")
    assert result.returncode == 2
    assert "train.prompts_per_step: 8 prompts cannot be split evenly over 3 ranks" in result.stderr
    assert grpo("validate", "recipes/tiny.yaml", "--world-size", "2").returncode == 0


@pytest.mark.slow  # grpo in a child process, several times (9 s)
def test_a_relative_data_path_says_where_it_was_looked_up(tmp_path):
    result = grpo("validate", str(ROOT / "recipes" / "tiny.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert f"looked up from the directory grpo runs in, {tmp_path}" in result.stderr
    recipe = tmp_path / "r.yaml"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    recipe.write_text("data: {path: d/x.jsonl}\nrewards: [{name: math}]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = grpo("validate", str(recipe), cwd=elsewhere)
    assert result.returncode == 2 and f"a file of that name is beside the recipe: {tmp_path / 'd' / 'x.jsonl'}" in result.stderr
