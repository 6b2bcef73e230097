"""Environments (environments/): the calculator's bounded evaluation, the registry's errors, and the python
environment's sandboxed cells (output, errors, kept state, time limit)."""

import time

import pytest

from environments import as_reply
from environments.calculator import calculator, evaluate
from environments.registry import load_environment
from grpo.errors import UserError
from rewards.sandbox import capabilities


def calc(expression: str) -> dict:
    return calculator({}, f"let me see <calc>{expression}</calc>")


@pytest.mark.parametrize("expression, shown", [
    ("37*48", "1776"), ("37 * 48", "1776"), ("(2+3)*4", "20"), ("-7//2", "-4"), ("7/2", "3.5"), ("2^10", "1024"),
    ("10 % 3", "1"), ("1/3", "0.3333333333"), ("1.5*2", "3"),
])
def test_calculator_evaluates_arithmetic(expression, shown):
    assert calc(expression) == {"observation": f"<out>{shown}</out>", "error": False}


@pytest.mark.parametrize("expression, why", [
    ("__import__('os').system('id')", "only numbers"), ("open('/etc/passwd')", "only numbers"),
    ("(1).__class__", "only numbers"), ("1/0", "division by zero"), ("2**10**10", "exponents"),
    ("9**64", "digits"), ("99999999999999999999999999999999*99999999999999999999999999999999", "digits"),
    ("1+", "not an arithmetic"), ("x" * 300, "longer than"), ("1e308*10", "digits"), ("1e400", "finite"), ("", "not an arithmetic"),
])
def test_calculator_refuses_what_it_must_not_compute(expression, why):
    started = time.perf_counter()
    reply = calc(expression)
    assert reply["error"] is True and why in reply["observation"], reply
    assert time.perf_counter() - started < 0.1


def test_calculator_answers_only_a_call_that_ended_the_turn():
    assert calculator({}, "The answer is 5.") is None
    assert calculator({}, "no opening</calc>")["error"] is True
    assert evaluate("12*12") == 144


def test_replies_are_normalised_and_junk_is_an_error():
    assert as_reply(None) is None
    assert as_reply("x") == ("x", False)
    assert as_reply({"observation": "y", "error": 1}) == ("y", True)
    text, error = as_reply(42)
    assert error and "returned int" in text
    assert len(as_reply("z" * 10**6)[0]) == 64_000


def test_registry_names_the_key_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"environment.name: 'calculater' is not installed. Did you mean 'calculator'"):
        load_environment("calculater")
    with pytest.raises(UserError, match=r"environment.args: environment 'calculator' takes no argument 'speed'"):
        load_environment("calculator", {"speed": 1})
    (tmp_path / "my_env.py").write_text(
        "def nostop(row, transcript):\n    return 'x'\n"
        "def echo(row, transcript, *, tag='ok'):\n    return f'[{tag}:{row[\"q\"]}]'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"environment.stop: .*declares no stop strings"):
        load_environment("my_env:nostop")
    env = load_environment("my_env:echo", {"tag": "t"}, stop=["<go>"])
    assert env.stop == ("<go>",) and env({"q": 1}, "...<go>") == "[t:1]"
    with pytest.raises(UserError, match=r"takes no argument 'bad'"):
        load_environment("my_env:echo", {"bad": 1}, stop=["<go>"])


sandboxed = pytest.mark.skipif(capabilities.detect().level not in ("userns", "rootns"),
                               reason="no namespaces here: the python environment would refuse to run")


def cell(code: str) -> str:
    return f"```python\n{code}\n```\n```output"


@sandboxed
def test_python_runs_the_last_cell_and_keeps_state_by_replaying():
    env = load_environment("python")
    first = cell("a = 6\nprint(a * 7)")
    assert env({}, first) == {"observation": "\n42\n```\n", "error": False}
    transcript = first + "\n42\n```\nNow more.\n" + cell("print(a + 1)")
    assert env({}, transcript) == {"observation": "\n7\n```\n", "error": False}  # a from the earlier cell
    fresh = load_environment("python", {"state": "fresh"})
    reply = fresh({}, transcript)
    assert reply["error"] and "NameError" in reply["observation"]


@sandboxed
def test_python_reports_the_exception_and_the_time_limit():
    env = load_environment("python", {"timeout_s": 0.5})
    reply = env({}, cell("print('before')\n1/0"))
    assert reply == {"observation": "\nbefore\nZeroDivisionError: division by zero\n```\n", "error": True}
    started = time.perf_counter()
    reply = env({}, cell("while True:\n    pass"))
    assert reply["error"] and "timed out after 0.5 s" in reply["observation"]
    assert time.perf_counter() - started < 10
    assert env({}, "no cell here") is None
    assert env({}, "text\n```output")["error"] is True


@sandboxed
def test_python_output_is_cut_to_its_budget():
    reply = load_environment("python", {"max_output_chars": 100})({}, cell("print('x' * 5000)"))
    assert len(reply["observation"]) < 200 and "more characters cut" in reply["observation"]


def test_python_setup_refuses_a_bad_state():
    with pytest.raises(UserError, match="state='sometimes' is not one of keep, fresh"):
        load_environment("python", {"state": "sometimes"})


def test_validate_names_the_environment_key_and_the_fix():
    from pathlib import Path

    from grpo.errors import ConfigError
    from grpo.validate import validate_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny-tools.yaml"
    with pytest.raises(ConfigError) as caught:
        validate_recipe(recipe, ["environment.name=calculater", "output_dir=/tmp/grpo-validate-tools"])
    assert "environment.name: 'calculater' is not installed. Did you mean 'calculator'" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        validate_recipe(recipe, ["environment.max_turns=1", "environment.max_tool_seconds=0",
                                 "environment.args={state: keep}", "output_dir=/tmp/grpo-validate-tools"])
    text = str(caught.value)
    assert "environment.max_turns: 1 turn leaves no turn to read a tool's output" in text
    assert "environment.max_tool_seconds: must be > 0" in text
    assert "environment.args: environment 'calculator' takes no argument 'state'" in text
