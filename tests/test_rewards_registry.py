"""Reward plugins: entry points (found without installing a package), module:function names, and the
scorer that keeps a run alive when a reward misbehaves."""

import sys
import textwrap

import pytest

from grpo.errors import UserError
from rewards.registry import installed_rewards, load_reward
from rewards.scoring import build_rewards, score


def make_plugin(tmp_path, monkeypatch, dist="grpo_test_plugin", names=("brevity",), module="my_plugin_rewards"):
    """A package visible to importlib.metadata: a module plus a .dist-info with entry_points.txt on sys.path."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        def brevity(prompts, completions, **kwargs):
            return [1.0 / (1 + len(c)) for c in completions]
    """))
    info = tmp_path / f"{dist}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{n} = {module}:brevity" for n in names)
    (info / "entry_points.txt").write_text(f"[grpo.rewards]\n{lines}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(module, None)


def test_builtins_are_registered_through_the_entry_point_group():
    found = installed_rewards()
    for name in ("math", "format", "length", "cosine_length", "overlong", "code"):
        assert name in found and found[name].origin.startswith("grpo ")


def test_plugin_from_entry_point_without_installing(tmp_path, monkeypatch):
    make_plugin(tmp_path, monkeypatch)
    found = installed_rewards()
    assert found["brevity"].origin == "grpo_test_plugin 1.2.3"
    fn = load_reward("brevity")
    assert fn(["p"], ["abc"]) == [0.25]


def test_duplicate_name_shows_both_sources(tmp_path, monkeypatch):
    make_plugin(tmp_path, monkeypatch, dist="other_plugin", names=("format",), module="other_plugin_rewards")
    with pytest.raises(UserError) as info:
        installed_rewards()
    message = str(info.value)
    assert "'format' is registered twice" in message
    assert "rewards.format:format_reward" in message and "other_plugin_rewards:brevity" in message
    assert "other_plugin 1.2.3" in message


def test_module_function_names_load_directly(tmp_path, monkeypatch):
    make_plugin(tmp_path, monkeypatch)
    assert load_reward("my_plugin_rewards:brevity")(["p"], [""]) == [1.0]


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(UserError) as info:
        load_reward("fromat")
    assert "Did you mean 'format'?" in str(info.value) and "math" in str(info.value)


def test_bad_module_function_names_say_what_is_wrong():
    with pytest.raises(UserError, match="cannot import module 'no_such_module_xyz'"):
        load_reward("no_such_module_xyz:f")
    with pytest.raises(UserError, match="has no attribute 'nope'"):
        load_reward("rewards.format:nope")


class Spec:
    def __init__(self, name, weight=1.0, args=None):
        self.name, self.weight, self.args = name, weight, args or {}


def test_weighted_sum_and_none_handling(tmp_path, monkeypatch):
    (tmp_path / "rw_fixture.py").write_text(textwrap.dedent("""
        def one(prompts, completions, **kw):
            return [1.0 for _ in completions]
        def only_first(prompts, completions, **kw):
            return [2.0] + [None] * (len(completions) - 1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = build_rewards([Spec("rw_fixture:one", 0.5), Spec("rw_fixture:only_first", 2.0)])
    s = score(rewards, ["p", "p"], ["a", "b"], {})
    assert s.total == [0.5 + 4.0, 0.5]
    assert s.per_reward["rw_fixture:only_first"] == [2.0, None]


def test_a_reward_that_raises_on_one_completion_scores_it_zero_and_counts_it(tmp_path, monkeypatch):
    (tmp_path / "rw_buggy.py").write_text(textwrap.dedent("""
        def buggy(prompts, completions, answer, **kw):
            return [1.0 / len(c) if c != "boom" else 1 / 0 for c in completions]
        def junk(prompts, completions, **kw):
            return [float("nan") if c == "boom" else 1.0 for c in completions]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    s = score(build_rewards([Spec("rw_buggy:buggy"), Spec("rw_buggy:junk")]), ["p"] * 3, ["ab", "boom", "a"],
              {"answer": ["x", "y", "z"], "max_new_tokens": 8})
    assert s.per_reward["rw_buggy:buggy"] == [0.5, 0.0, 1.0]
    assert s.errors == {"rw_buggy:buggy": 1, "rw_buggy:junk": 1}
    assert s.per_reward["rw_buggy:junk"] == [1.0, 0.0, 1.0]


def test_recipe_args_reach_the_function():
    rewards = build_rewards([Spec("format", args={"style": "pattern", "pattern": r"^OK"})])
    assert score(rewards, ["p", "p"], ["OK then", "not OK"], {}).total == [1.0, 0.0]


def test_a_duplicate_is_reported_under_the_reward_that_clashes(tmp_path, monkeypatch):
    from grpo.errors import ConfigError
    from grpo.validate import validate_recipe

    make_plugin(tmp_path, monkeypatch, dist="other_plugin", names=("format",), module="other_plugin_rewards")
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{path: {data}}}\nrewards: [{{name: math}}, {{name: format}}]\n")
    with pytest.raises(ConfigError) as info:
        validate_recipe(recipe)
    problems = info.value.problems
    assert any(p.startswith("rewards[1].name: reward 'format' is registered twice") for p in problems)
    assert not any(p.startswith("rewards[0]") for p in problems)
    assert load_reward("math")  # a clash on another name does not stop this one
