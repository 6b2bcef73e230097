"""The command line as a user meets it: exit codes and messages."""

import subprocess
import sys
from pathlib import Path

import pytest

from grpo.validate import validate_recipe

ROOT = Path(__file__).resolve().parents[1]


def grpo(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "grpo.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


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
