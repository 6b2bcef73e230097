"""Issue 23, the open gap: tests that loop over computed values ("check" probes) and probes that use the test's own
names ("jeval") are judged by a clean judge process, never in the program's process. A program written against the
harness (patched builtins or modules, an object equal to everything, its own answer lines, a reach into the judge)
scores 0 on them, and an honest program 1."""

import json

import pytest

from rewards.code import score
from rewards.sandbox import Executor, Limits, capabilities
from rewards.sandbox.plan import plan_tests

pytestmark = pytest.mark.skipif(capabilities.detect().level not in ("userns", "rootns"),
                                reason="no namespaces here: hostile programs would run against the host")


def fenced(src):
    return f"```python\n{src}\n```"


@pytest.fixture(scope="module")
def ex():
    return Executor(Limits(timeout_s=1, wall_factor=2.0, memory_mb=256, output_kb=64))


def humaneval(body: str, setup: str = "") -> dict:
    """A HumanEval row: `def check(candidate)` over computed cases, which no planner can split into probes."""
    test = "def check(candidate):\n    import random\n    rng = random.Random(7)\n" + body
    return {"test": test, "entry_point": "add", **({"setup": setup} if setup else {})}


EQ = humaneval("    for _ in range(20):\n        x, y = rng.randint(0, 99), rng.randint(0, 99)\n"
               "        assert candidate(x, y) == x + y\n")
ABS = humaneval("    for _ in range(20):\n        x = rng.random()\n"
                "        assert abs(candidate(x, 1.0) - (x + 1.0)) < 1e-9\n")
ALL = humaneval("    pairs = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(20)]\n"
                "    assert all(candidate(x, y) == x + y for x, y in pairs)\n")
TYPED = humaneval("    for _ in range(20):\n        x, y = rng.randint(0, 99), rng.randint(0, 99)\n"
                  "        got = candidate(x, y)\n        assert isinstance(got, int) and got == x + y\n")
HELPERS = humaneval("    for i in range(1, 20):\n        v = candidate(i, 0.5)\n"
                    "        assert math.isclose(v, i + 0.5) and close(v, i + 0.5)\n",
                    setup="import math\ndef close(a, b):\n    d = a - b\n    return abs(d) < 1e-9")
CHECKS = {"eq": EQ, "abs": ABS, "all": ALL, "typed": TYPED, "helpers": HELPERS}

HONEST = "def add(a, b):\n    return a + b"

# Each one is what a program that knows this harness would try; each must score 0 on every test above.
ATTACKS = {
    "patched range": "import builtins\nbuiltins.range = lambda *a: iter(())\ndef add(a, b):\n    return -7",
    "patched all, abs, isinstance": "import builtins\nbuiltins.all = builtins.any = lambda *a, **k: True\n"
                                    "builtins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\n"
                                    "def add(a, b):\n    return -7",
    "globals named like builtins": "def range(*a):\n    return []\ndef all(*a):\n    return True\n"
                                   "def abs(x):\n    return 0\ndef isinstance(*a):\n    return True\n"
                                   "def add(a, b):\n    return -7",
    "equal to everything": "class A(float):\n    def __eq__(s, o): return True\n    def __ne__(s, o): return False\n"
                           "    def __lt__(s, o): return True\n    def __sub__(s, o): return A()\n"
                           "    def __abs__(s): return 0\n    __hash__ = float.__hash__\n"
                           "def add(a, b):\n    return A()",
    "patched helpers": "import math, random, builtins\nmath.isclose = lambda *a, **k: True\n"
                       "builtins.abs = lambda x: 0\nrandom.Random.randint = lambda self, a, b: 0\n"
                       "random.Random.random = lambda self: 0.0\n"
                       "def add(a, b):\n    return 0 if isinstance(a, int) else 0.5 + a * 0",
    "own answer lines": """
import os, json, _blake2
def forge():
    os.write(3, b"ready\\n")
    got = b""
    while not got.endswith(b"\\n"):
        got += os.read(3, 64)
    key = bytes.fromhex(got.decode().strip())
    out = b""
    for k in range(64):
        line = json.dumps({"k": k, "v": True}).encode()
        out += _blake2.blake2b(line, key=key, digest_size=16).hexdigest().encode() + b" " + line + b"\\n"
    for fd in range(3, 64):
        try:
            os.write(fd, out)
        except OSError:
            pass
try:
    forge()
finally:
    os._exit(0)  # before the harness sends its own request, which would void these lines
""",
    "writes into other processes' fds": """
import os, json
def add(a, b):
    lines = b"".join(json.dumps({"k": k, "v": True}).encode() + b"\\n" for k in range(64))
    for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
        for fd in range(64):
            try:
                with open(f"/proc/{pid}/fd/{fd}", "wb") as f:
                    f.write(lines)
            except OSError:
                pass
    return -7
""",
}


def test_check_tests_are_judged_outside_the_program():
    for name, tests in CHECKS.items():
        run = plan_tests(tests, 1.0).runs[0]
        assert run.get("judge"), name
        assert all(op[0] != "eval" or "rng" not in op[2] for op in run["ops"]), name


@pytest.mark.parametrize("test_name", sorted(CHECKS))
def test_honest_program_passes_check_tests(ex, test_name):
    assert score(fenced(HONEST), CHECKS[test_name], executor=ex) == 1.0


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("test_name", sorted(CHECKS))
def test_harness_aware_program_scores_zero_on_check_tests(ex, attack, test_name):
    assert score(fenced(ATTACKS[attack]), CHECKS[test_name], executor=ex) == 0.0


REACH = """
import os
def add(a, b):
    reached = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
        for what in ("mem", "environ", "fd/3", "fd/4"):
            try:
                open(f"/proc/{pid}/{what}", "rb").close()
                reached.append(f"{pid}/{what}")
            except OSError:
                pass
    return reached
"""


def test_judge_process_is_out_of_the_programs_reach(ex):
    # Its memory (the MAC key), its environment and its descriptors (the answer channel) cannot be opened.
    tests = {"test": "def check(candidate):\n    for _ in range(len('ab')):\n        assert candidate(0, 0) == []\n",
             "entry_point": "add"}
    assert plan_tests(tests, 1.0).runs[0]["judge"]
    assert score(fenced(REACH), tests, executor=ex) == 1.0


def test_probe_over_test_names_is_judged_too(ex):
    # `cases` and `expect` are the test's own: a probe over them is test code, so the judge process evaluates it.
    tests = {"asserts": "import math\ncases = [math.factorial(n) for n in range(6)]\n"
                        "assert [double(c) for c in cases] == [2 * c for c in cases]\n"
                        "assert math.gcd(double(6), 8) == 4"}
    run = plan_tests(tests, 1.0).runs[0]
    assert run["judge"] and [op[0] for op in run["ops"] if op[1] >= 0] == ["jeval", "jeval", "jeval"]
    assert score(fenced("def double(x):\n    return 2 * x"), tests, executor=ex) == 1.0
    cheat = "import math\nmath.gcd = lambda *a: 4\nmath.factorial = lambda n: 0\ndef double(x):\n    return 0"
    assert score(fenced(cheat), tests, executor=ex) == 0.0


def test_builtins_applied_to_the_programs_output_are_judged(ex):
    # `isinstance(f(2), int)` judges f's output with a builtin the program can patch in its own process; a builtin
    # that only builds f's input (`f(list(range(3)))`) leaves the probe a plain value of the program's.
    tests = {"asserts": ["assert isinstance(f(2), int)", "assert f(list(range(3))) == 6"]}
    kinds = [op[0] for op in plan_tests(tests, 1.0).runs[0]["ops"]]
    assert kinds == ["jeval", "eval"]
    honest = "def f(x):\n    return sum(x) * 2 if isinstance(x, list) else x"
    assert score(fenced(honest), tests, executor=ex) == 1.0
    cheat = "import builtins\nbuiltins.isinstance = lambda *a: True\ndef f(x):\n    return 6 if x == [0, 1, 2] else 'no'"
    # 0.5 before: the patched isinstance passed the first assert (its own encoder, misled too, fails the second).
    assert score(fenced(cheat), tests, executor=ex) == 0.0


def test_judged_runs_keep_honest_forms_working(ex):
    prog = ("import math\nLIMIT = 10\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
            "    return a\ndef split(xs):\n    return [x for x in xs if x % 2], {'n': len(xs)}\n"
            "def sort_in_place(xs):\n    xs.sort()\ndef picky(x):\n    if x < 0:\n        raise ValueError(x)\n"
            "    return x\ndef root(x):\n    return math.sqrt(x)")
    tests = {"test": (
        "def check(candidate):\n"
        "    for n in range(2, LIMIT):\n"            # a program constant, read as plain data
        "        assert candidate(n) == candidate(n - 1) + candidate(n - 2)\n"
        "    for n in range(3):\n"
        "        odd, meta = split(list(range(n + 3)))\n"  # tuples, lists and dicts come back as values
        "        assert odd == [x for x in range(n + 3) if x % 2] and meta == {'n': n + 3}\n"
        "    for n in range(3):\n"
        "        xs = [5, 3, n]\n"
        "        sort_in_place(xs)\n"                 # a list changed in place comes back changed
        "        assert xs == sorted([5, 3, n])\n"
        "    for x in [-1, -2]:\n"
        "        try:\n"
        "            picky(x)\n"
        "            assert False\n"
        "        except ValueError:\n"                # the program's builtin exception, raised here by name
        "            pass\n"
        "    for x in [4.0, 9.0]:\n"
        "        assert math.isclose(root(x) ** 2, x)\n"), "entry_point": "fib"}
    assert score(fenced(prog), tests, executor=ex) == 1.0
    wrong = prog.replace("xs.sort()", "xs.append(0)").replace("raise ValueError(x)", "raise StopIteration")
    assert score(fenced(wrong), tests, executor=ex) == pytest.approx(4 / 6)  # the in-place and the raise tests fail


def test_values_that_are_not_plain_data_fail_the_check(ex):
    tests = humaneval("    for _ in range(3):\n        assert candidate(1, 2) is not None\n")
    assert score(fenced("def add(a, b):\n    return object()"), tests, executor=ex) == 0.0
    assert score(fenced("def add(a, b):\n    return (a + b for _ in range(2))"), tests, executor=ex) == 1.0


def test_entry_point_named_like_a_builtin_is_the_programs(ex):
    tests = {"test": "def check(candidate):\n    import random\n    for _ in range(5):\n"
                     "        xs = [random.randint(0, 9) for _ in range(5)]\n"
                     "        assert candidate(xs) == [x for x in xs if x > 4]\n", "entry_point": "filter"}
    run = plan_tests(tests, 1.0).runs[0]
    assert ["bind", -1, "candidate", "filter"] in run["ops"]
    assert score(fenced("def filter(xs):\n    return [x for x in xs if x > 4]"), tests, executor=ex) == 1.0
    # No function of that name: the builtin must not stand in for it.
    assert score(fenced("def other(xs):\n    return xs"), tests, executor=ex) == 0.0


def test_a_hanging_call_fails_alone_and_the_run_goes_on(ex):
    # As in an unjudged run: after a probe that hung, fresh processes go on from the next one.
    prog = "def add(a, b):\n    if a == 1:\n        while True:\n            pass\n    return a + b"
    loop = "    for x in [{x}]:\n        y = x + 1\n        assert candidate(x, y) == {want}\n"
    tests = {"test": "def check(candidate):\n" + "".join(loop.format(x=x, want=2 * x + 1) for x in (2, 1, 3)),
             "entry_point": "add"}
    assert score(fenced(prog), tests, executor=ex) == pytest.approx(2 / 3)


def test_plan_keeps_plain_probes_in_the_programs_process():
    # The common forms stay one process: nothing of the test's runs there beyond a value of the program's.
    tests = {"test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert abs(candidate(0.5, 1) - 1.5) < 1e-9\n",
             "entry_point": "add"}
    run = plan_tests(tests, 1.0).runs[0]
    assert not run.get("judge") and [op[0] for op in run["ops"]] == ["eval", "eval"]
    assert "candidate" not in json.dumps(run)


def test_judged_run_at_the_plain_subprocess_level(monkeypatch):
    # Without namespaces (allow_unsandboxed) the two processes are each their own session: both end with the run.
    bare = capabilities.Capabilities("none", capabilities.LEVELS["none"], [], [], {}, {})
    monkeypatch.setattr(capabilities, "detect", lambda refresh=False: bare)
    plain = Executor(Limits(timeout_s=1), allow_unsandboxed=True)
    # No imports: as root this level runs both as nobody, who may not read a standard library under /root.
    tests = {"test": "def check(candidate):\n    for x in range(len('abc')):\n        y = x * 7 % 5\n"
                     "        assert candidate(x, y) == x + y\n", "entry_point": "add"}
    assert plan_tests(tests, 1.0).runs[0]["judge"]
    assert score(fenced(HONEST), tests, executor=plain) == 1.0
    assert score(fenced("def add(a, b):\n    return 0"), tests, executor=plain) == 0.0
