"""Code reward: extraction, the tests formats, grading outside the sandbox, and the reward contract."""

import json
import os
import sys

import pytest

from grpo.errors import UserError
from rewards.code import code_reward, extract_program, score
from rewards.sandbox import Executor, Limits, capabilities
from rewards.sandbox.judge import decode, same_stdout
from rewards.sandbox.plan import plan_tests


def fenced(src: str, tag: str = "python") -> str:
    return f"Here is my solution.\n```{tag}\n{src}\n```\nDone."


@pytest.fixture(scope="module")
def ex():
    # Honest programs only in this file: where the machine allows no namespaces (some CI containers) they may
    # run with rlimits alone; where it does, the flag changes nothing (the best level is always taken).
    return Executor(Limits(timeout_s=2, memory_mb=512), allow_unsandboxed=True)


# ------------------------------------------------------------------ extraction

def test_extract_takes_last_python_block():
    text = "```python\nx = 1\n```\nthen\n```\nplain\n```\n```python\nx = 2\n```"
    assert extract_program(text) == "x = 2\n"
    assert extract_program(text, "first_python_block") == "x = 1\n"
    assert extract_program(text, "last_block") == "x = 2\n"


def test_extract_untagged_block_when_no_python_block_and_unterminated_tail():
    assert extract_program("```\nprint(1)\n```") == "print(1)\n"
    assert extract_program("text\n```python\nprint(2)\n") == "print(2)\n"
    assert extract_program("no code at all") is None
    assert extract_program("def f(x):\n    return x\n") == "def f(x):\n    return x\n"  # a bare program
    assert extract_program("```python\n\n```") is None


def test_extract_custom_regex_and_bad_regex():
    assert extract_program("<code>print(3)</code>", r"<code>(.*?)</code>") == "print(3)"
    with pytest.raises(UserError):
        extract_program("x", "([")


# ------------------------------------------------------------------ honest programs, each format

def test_assert_tests_fraction_and_all(ex):
    tests = {"asserts": ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add(-1, 1) == 0"]}
    src = fenced("def add(a, b):\n    return a + b")
    assert score(src, tests, executor=ex) == pytest.approx(2 / 3)
    assert score(src, tests, mode="all", executor=ex) == 0.0
    assert score(src, {"asserts": tests["asserts"][:1]}, mode="all", executor=ex) == 1.0


def test_assert_forms_computed_in_parent(ex):
    tests = {"test_list": [
        "assert abs(root(2.0) - 1.41421356) < 1e-6",
        "assert math.isclose(root(9.0), 3.0)",
        "assert sorted(pair()) == [1, 2]",
        "assert set(pair()) == {1, 2}",
        "assert pair() == (2, 1)",
        "assert not is_neg(3)",
        "assert is_neg(-3)",
        "assert len(pair()) == 2 and pair()[0] == 2",
    ], "test_imports": ["import math"]}
    src = fenced("import math\ndef root(x):\n    return math.sqrt(x)\n"
                 "def pair():\n    return (2, 1)\ndef is_neg(x):\n    return x < 0")
    assert score(src, tests, executor=ex) == 1.0


def test_humaneval_check_style(ex):
    tests = {"test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
             "entry_point": "total"}
    assert score(fenced("def total(xs):\n    return sum(xs)"), tests, executor=ex) == 1.0
    assert score(fenced("def total(xs):\n    return 3"), tests, executor=ex) == 0.5


def test_stdin_stdout_cases_and_real_fds(ex):
    tests = {"inputs": ["1 2\n", "3 4\n", "10 20\n"], "outputs": ["3\n", "7\n", "31\n"]}
    for prog in ("a, b = map(int, input().split())\nprint(a + b)",
                 "import sys\na, b = map(int, sys.stdin.buffer.read().split())\nsys.stdout.write(f'{a+b}\\n')",
                 "def main():\n    a, b = map(int, open(0).read().split())\n    print(a + b)\n"
                 "if __name__ == '__main__':\n    main()"):
        assert score(fenced(prog), tests, executor=ex) == pytest.approx(2 / 3)


def test_call_based_apps_style(ex):
    tests = json.dumps({"fn_name": "double", "inputs": [[1], [2], [3]], "outputs": [[2], [4], [7]]})
    assert score(fenced("def double(x):\n    return x * 2"), tests, executor=ex) == pytest.approx(2 / 3)
    # LeetCode style: the function is a method of Solution.
    assert score(fenced("class Solution:\n    def double(self, x):\n        return 2 * x"), tests,
                 executor=ex) == pytest.approx(2 / 3)


def test_raw_apps_input_output_column(ex):
    tests = {"input_output": json.dumps({"inputs": ["5\n"], "outputs": ["25\n"]})}
    assert score(fenced("n = int(input())\nprint(n * n)"), tests, executor=ex) == 1.0


def test_wrong_crashing_and_missing_programs_score_zero(ex):
    tests = {"inputs": ["1\n"], "outputs": ["1\n"]}
    assert score(fenced("print(2)"), tests, executor=ex) == 0.0
    assert score(fenced("print(1)\nraise SystemExit(3)"), tests, executor=ex) == 0.0  # runtime error
    assert score(fenced("def broken(:"), tests, executor=ex) == 0.0
    assert score("I cannot solve this.", tests, executor=ex) == 0.0


def test_slow_test_fails_alone(ex):
    prog = "import time\ndef f(x):\n    if x == 2:\n        time.sleep(30)\n    return x"
    tests = {"asserts": ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"]}
    assert score(fenced(prog), tests, executor=Executor(Limits(timeout_s=0.5), allow_unsandboxed=True)) == pytest.approx(2 / 3)


def test_float_tolerance_in_stdout():
    assert same_stdout("0.3333333\n", "0.33333333333\n")
    assert not same_stdout("0.34\n", "0.33\n")
    assert same_stdout("1 2  \n3\n\n", "1 2\n3")


def test_decode_is_strict():
    assert decode({"t": [1, {"f": "0.5"}]}) == (1, 0.5)
    with pytest.raises(ValueError):
        decode({"evil": 1})


def test_bad_tests_rows_are_user_errors():
    with pytest.raises(UserError):
        plan_tests({"inputs": ["1"], "outputs": []}, 1.0)
    with pytest.raises(UserError):
        plan_tests({"nothing": 1}, 1.0)


# ------------------------------------------------------------------ the reward contract

def test_code_reward_batch_contract():
    good = fenced("def add(a, b):\n    return a + b")
    tests = json.dumps({"asserts": ["assert add(1, 2) == 3"]})
    out = code_reward(["p"] * 4, [good, "no code", good, good], tests=[tests, tests, None, tests],
                      timeout_s=2, max_parallel=2, allow_unsandboxed=True, completion_ids=[[1]] * 4)
    assert out == [1.0, 0.0, None, 1.0]
    assert code_reward(["p"], [good]) == [None]  # a dataset without a tests column


def test_mode_is_checked():
    with pytest.raises(UserError):
        code_reward(["p"], ["x"], tests=[None], mode="most")


def test_refuses_without_isolation_unless_opted_in(monkeypatch):
    bare = capabilities.Capabilities("none", capabilities.LEVELS["none"], [], ["user namespace"],
                                     {"userns": "EPERM"})
    monkeypatch.setattr(capabilities, "detect", lambda refresh=False: bare)
    with pytest.raises(UserError, match="allow_unsandboxed"):
        capabilities.require(False)
    assert capabilities.require(True) is bare


def test_detect_reports_protections():
    caps = capabilities.detect()
    required = os.environ.get("GRPO_SANDBOX_LEVEL_REQUIRED")  # CI names the level its hosts reach (.ci/run)
    if required:
        assert required in capabilities.LEVELS, \
            f"GRPO_SANDBOX_LEVEL_REQUIRED={required!r} is not a level (one of {', '.join(capabilities.LEVELS)})"
        assert caps.level == required, (
            f"GRPO_SANDBOX_LEVEL_REQUIRED={required}, but this machine's code sandbox reaches level {caps.level!r}; "
            f"it lacks: {', '.join(caps.missing) or 'nothing listed'}; levels ruled out: "
            + ("; ".join(f"{level}: {why}" for level, why in caps.why.items()) or "none"))
    else:  # a developer's machine: whichever level it allows, as long as one works
        assert caps.level in ("userns", "rootns", "none")
    assert "empty environment" in caps.applied
    assert caps.level in caps.describe()


def test_honest_returns_beyond_plain_types(ex):
    prog = fenced("from collections import Counter, namedtuple\nP = namedtuple('P', 'x y')\n"
                  "def count(s):\n    return Counter(s)\ndef point():\n    return P(1, 2)\n"
                  "def evens(n):\n    return (i for i in range(n) if i % 2 == 0)\ndef stop():\n    exit(0)")
    tests = {"asserts": ["assert count('aab') == {'a': 2, 'b': 1}", "assert point() == (1, 2)",
                         "assert list(evens(5)) == [0, 2, 4]", "assert sorted(evens(3)) == [0, 2]",
                         "assert evens(3) != [0, 2]"]}
    assert score(prog, tests, executor=ex) == 1.0
    # A generator is not a list, in Python or here.
    assert score(prog, {"asserts": ["assert evens(3) == [0, 2]"]}, executor=ex) == 0.0
    assert score(fenced("print(1)\nexit()"), {"inputs": [""], "outputs": ["1"]}, executor=ex) == 1.0


def test_bare_assert_code_column(ex):
    assert score(fenced("def sq(x):\n    return x * x"), "assert sq(3) == 9\nassert sq(2) == 5", executor=ex) == 0.5


def test_shutdown_like_python(ex):
    tests = {"inputs": ["4\n"], "outputs": ["16\n"]}
    threaded = ("import sys, threading\nsys.setrecursionlimit(10000)\nthreading.stack_size(1 << 26)\n"
                "def main():\n    n = int(input())\n    print(n * n)\nthreading.Thread(target=main).start()")
    unclosed = "out = open(1, 'w', closefd=False)\nout.write(str(int(input()) ** 2) + '\\n')"
    hooked = "import atexit\natexit.register(lambda: print(16))\ninput()"
    for prog in (threaded, unclosed, hooked):
        assert score(fenced(prog), tests, executor=ex) == 1.0, prog


def test_loops_helpers_and_named_expectations_are_judged_in_parent(ex):
    tests = {"test": ("def check(candidate):\n"
                      "    pairs = [((1, 2), 3), ((5, 7), 12)]\n"
                      "    for args, want in pairs:\n"
                      "        assert candidate(*args) == want\n"
                      "    for i in range(3):\n"
                      "        assert close(candidate(i, 0.5), i + 0.5)\n"
                      "    expected = 10\n"
                      "    assert candidate(4, 6) == expected\n"),
             "setup": "def close(a, b):\n    return abs(a - b) < 1e-9", "entry_point": "add"}
    plan = plan_tests(tests, 1.0)
    assert len(plan.tests) == 6 and all(t.kind == "assert" for t in plan.tests)
    sandbox_text = json.dumps(plan.runs)
    assert "12" not in sandbox_text and "expected" not in sandbox_text  # expectations stay in the parent
    assert score(fenced("def add(a, b):\n    return a + b"), tests, executor=ex) == 1.0
    # A patched helper inside the sandbox changes nothing: close() is computed by the parent.
    cheat = "import builtins\nbuiltins.abs = lambda x: 0\ndef close(a, b):\n    return True\ndef add(a, b):\n    return 0"
    assert score(fenced(cheat), tests, executor=ex) == 0.0


def test_unsplittable_assert_still_runs(ex):
    tests = {"asserts": "i = 0\nwhile i < 3:\n    assert f(i) == i\n    i += 1"}
    assert [t.kind for t in plan_tests(tests, 1.0).tests] == ["check"]
    assert score(fenced("def f(x):\n    return x"), tests, executor=ex) == 1.0
    assert score(fenced("def f(x):\n    return 0"), tests, executor=ex) == 0.0


def test_struct_column_rows_with_none_keys(ex):
    # `datasets` unifies dict columns: each row carries every key, None where it has none.
    row = {"inputs": None, "outputs": None, "fn_name": None, "asserts": ["assert sq(3) == 9"]}
    assert score(fenced("def sq(x):\n    return x * x"), row, executor=ex) == 1.0
    empty = {"inputs": None, "outputs": None, "fn_name": None, "asserts": None}
    assert code_reward(["p"], [fenced("x = 1")], tests=[empty], allow_unsandboxed=True) == [None]


def test_large_expected_output_is_not_an_output_flood():
    small_cap = Executor(Limits(timeout_s=2, output_kb=1), allow_unsandboxed=True)
    n = 3000
    tests = {"inputs": [f"{n}\n"], "outputs": ["\n".join(str(i) for i in range(n))]}
    assert score(fenced("print('\\n'.join(map(str, range(int(input())))))"), tests, executor=small_cap) == 1.0
    assert score(fenced("while True:\n    print(0)"), tests, executor=small_cap) == 0.0


def test_opted_in_plain_subprocess_level_runs_and_cleans_up(monkeypatch):
    bare = capabilities.Capabilities("none", capabilities.LEVELS["none"], [], [], {}, {})
    monkeypatch.setattr(capabilities, "detect", lambda refresh=False: bare)
    ex = Executor(Limits(timeout_s=2), allow_unsandboxed=True)
    before = {p for p in os.listdir("/tmp") if p.startswith("grpo-sbx-")}
    tests = {"inputs": ["2\n"], "outputs": ["0 4\n"]}
    assert score(fenced("import os\nprint(len(os.environ), int(input()) ** 2)"), tests, executor=ex) == 1.0
    assert score(fenced("def sq(x):\n    return x * x"), {"asserts": ["assert sq(3) == 9"]}, executor=ex) == 1.0
    after = {p for p in os.listdir("/tmp") if p.startswith("grpo-sbx-")}
    assert after <= before


def test_call_arguments_one_json_value_per_line(ex):
    tests = {"fn_name": "add", "inputs": ["[1, 2]\n3", "[4]\n5"], "outputs": [6, "9"]}
    assert score(fenced("def add(xs, y):\n    return sum(xs) + y"), tests, executor=ex) == 1.0


def test_far_side_arrives_compiled_and_refuses_another_interpreter():
    import subprocess

    from rewards.sandbox import launch

    blob = launch._compiled()
    assert blob.startswith(f"{sys.implementation.cache_tag} ".encode())
    wrong = b"cpython-00 " + blob.split(b" ", 1)[1]
    proc = subprocess.run(launch.launch_command(), input=wrong + b"{}", capture_output=True, timeout=60,
                          env=launch.launch_env(), cwd="/")
    assert proc.returncode == 3 and json.loads(proc.stdout)["fatal"].startswith("the sandbox interpreter")
