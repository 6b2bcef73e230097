"""Issue 23: the trusted side of the code reward (answer channel, judge decoding, regexes on model output, helper
processes) must not be forgeable by, nor spend trainer time on, anything a completion controls."""

import time

import pytest

from rewards.code import score
from rewards.sandbox import Executor, Limits, capabilities

sandboxed = pytest.mark.skipif(capabilities.detect().level not in ("userns", "rootns"),
                               reason="no namespaces here: hostile programs would run against the host")

# A test that loops over computed values cannot be split into parent-judged probes: it runs whole ("check").
LOOP = {"asserts": "def cases(n):\n    return [i * 3 for i in range(n)]\nfor x in cases(4):\n    assert f(x) == x + 1"}
FORGE = """
import os, json
lines = b''.join(json.dumps({"k": k, "v": True}).encode() + b'\\n' for k in range(64))
fds = [3] + [int(n) for n in os.listdir('/proc/self/fd') if n.isdigit()]
for fd in sorted(set(fds)):
    try:
        os.write(fd, lines)
    except OSError:
        pass
def f(x):
    return 0
"""


def fenced(src):
    return f"```python\n{src}\n```"


@pytest.fixture(scope="module")
def ex():
    return Executor(Limits(timeout_s=0.5, wall_factor=1.0, memory_mb=256, output_kb=64))


@sandboxed
def test_loop_test_passes_for_honest_program(ex):
    assert score(fenced("def f(x):\n    return x + 1"), LOOP, executor=ex) == 1.0


@sandboxed
def test_forged_answer_lines_score_zero(ex):
    assert score(fenced(FORGE), LOOP, executor=ex) == 0.0
    # The same lines written by a function the probes call: the genuine line then duplicates, and fails.
    late = FORGE.replace("def f(x):\n    return 0", "def f(x):\n    os.write(3, lines)\n    return 0")
    assert score(fenced(late), LOOP, executor=ex) == 0.0
    assert score(fenced(FORGE), {"inputs": ["1\n"], "outputs": ["2\n"]}, executor=ex) == 0.0


# ------------------------------------------------------------------ item 2/3: bounded decoding and judging

def cpu_of(fn, *args, **kw):
    """The calling process's own CPU for one reward call (its children, the sandbox, excluded)."""
    t0 = time.process_time()
    value = fn(*args, **kw)
    return value, time.process_time() - t0


FAKE_FRACTION = """
class Fraction:
    def __str__(self):
        return {text!r}
Fraction.__module__, Fraction.__qualname__ = "fractions", "Fraction"
def f(x):
    return Fraction()
"""


@sandboxed
@pytest.mark.parametrize("text", ["1/0", "1e2000000", "nan/0"])
def test_fake_fraction_class_scores_zero_cheaply(ex, text):
    value, cpu = cpu_of(score, fenced(FAKE_FRACTION.format(text=text)), {"asserts": ["assert f(1) == 2"]}, executor=ex)
    assert value == 0.0 and cpu < 0.2


@sandboxed
@pytest.mark.parametrize("ret, test", [
    ("Decimal('1e200000')", "assert int(f(1)) == 5"),
    ("Decimal('1e200000')", "assert f(1) == 5"),
    ("Decimal('1e4000')", "assert round(f(1) ** 60) == 5"),
    ("Fraction(3, 2)", "assert f(1) ** 10 ** 7 == 5"),
])
def test_big_numbers_in_comparisons_are_bounded(ex, ret, test):
    program = f"from decimal import Decimal\nfrom fractions import Fraction\ndef f(x):\n    return {ret}"
    value, cpu = cpu_of(score, fenced(program), {"asserts": [test]}, executor=ex)
    assert value == 0.0 and cpu < 0.2


def test_honest_fractions_and_decimals_still_compare(ex):
    if capabilities.detect().level not in ("userns", "rootns"):
        pytest.skip("no namespaces")
    program = "from decimal import Decimal\nfrom fractions import Fraction\ndef f(x):\n    return Fraction(x, 3)\n" \
              "def g():\n    return Decimal('2.50')"
    tests = {"asserts": ["from fractions import Fraction", "assert f(2) == Fraction(2, 3)", "assert g() == 2.5",
                         "assert int(g()) == 2"]}
    assert score(fenced(program), tests, executor=ex) == 1.0


@pytest.mark.parametrize("line", [
    '{"k": 0, "v": {"n": ["fractions.Fraction", "1e2000000"]}}',
    '{"k": 0, "v": {"n": ["fractions.Fraction", "1/0"]}}',
    '{"k": 0, "v": {"n": ["decimal.Decimal", "1e2000000"]}}',
    '{"k": 0, "v": {"n": ["decimal.Decimal", "not a number"]}}',
    '{"k": 0, "v": {"i": "' + "9" * 4999 + 'x"}}',
    '{"k": 0, "v": {"f": "' + "1" * 100000 + '"}}',
    '{"k": 0, "v": ' + "[" * 100000 + "]" * 100000 + '}',
    '{"k": 0, "v": {"c": [1, 2]}}',
])
def test_read_answers_never_raises_and_is_bounded(line):
    from rewards.sandbox.judge import read_answers
    answers, cpu = cpu_of(read_answers, [line], {0})
    assert answers == {} and cpu < 0.2


def test_read_answers_only_asked_probes_and_no_duplicates():
    from rewards.sandbox.judge import read_answers
    lines = ['{"k": 0, "v": 1}', '{"k": 1, "v": 2}', '{"k": 1, "v": 3}', '{"k": 7, "v": true}', '{"k": 2, "e": "X"}',
             '{"k": 2, "v": true}']
    assert read_answers(lines, {0, 1, 2}) == {0: 1}


def test_code_reward_never_raises_on_a_crash_inside(monkeypatch):
    import rewards.code as code

    def boom(*a, **k):
        raise ZeroDivisionError("from the judge")

    monkeypatch.setattr(code, "run_tests", boom)
    monkeypatch.setattr(code, "_executor", lambda *a: Executor.__new__(Executor))
    before = code.CRASHES["ZeroDivisionError"]
    snapshot = code.crash_counts()
    out = code.code_reward(["p"], [fenced("def f(x):\n    return x")], [{"asserts": ["assert f(1) == 1"]}],
                           max_parallel=1)
    assert out == [0.0] and code.CRASHES["ZeroDivisionError"] == before + 1
    # crash_counts() is a snapshot for the trainer's metrics: the earlier one did not move, a new one did.
    assert snapshot.get("ZeroDivisionError", 0) == before
    assert code.crash_counts()["ZeroDivisionError"] == before + 1


# ------------------------------------------------------------------ item 6: helpers die with their parent

PARENT = r"""
import os, sys, threading
from rewards.mathcheck.worker import POOL
# Start the workers from a short-lived thread, as the trainer's reward guard does: they must outlive it.
t = threading.Thread(target=POOL.warm, kwargs={"timeout": 120, "standby": True})
t.start(); t.join()
print(" ".join(str(p.p.pid) for p in (POOL.active, POOL.standby)), flush=True)
import time
deadline = time.monotonic() + 60
POOL.equal("(x+1)^{3000}", "(x+2)^{3000}", deadline)  # seconds of sympy: busy when the kill comes
"""


@pytest.mark.slow
def test_math_workers_die_within_half_a_second_of_a_sigkilled_parent():
    import os
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, cwd=root,
                              env={**os.environ, "PYTHONPATH": root})
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    # The workers started from a thread that has ended are still alive and answering.
    time.sleep(0.5)
    assert all(os.path.exists(f"/proc/{p}") for p in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t0 = time.monotonic()
    left = pids
    while left and time.monotonic() - t0 < 10:
        left = [p for p in pids if _alive(p)]
        time.sleep(0.01)
    gone_after = time.monotonic() - t0
    assert not left and gone_after < 0.5, (left, gone_after)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not yet reaped
    except OSError:
        return False


SANDBOX_PARENT = r"""
from rewards.code import score
from rewards.sandbox import Executor, Limits
ex = Executor(Limits(timeout_s=30, wall_factor=1.0))  # its capability probe runs (and ends) here
print("go", flush=True)
score("```python\ndef f(x):\n    while True:\n        pass\n```", {"asserts": ["assert f(1) == 1"]}, executor=ex)
"""


@sandboxed
def test_sandbox_launcher_dies_with_a_sigkilled_parent():
    import os
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, "-c", SANDBOX_PARENT], stdout=subprocess.PIPE, cwd=root,
                              env={**os.environ, "PYTHONPATH": root})
    parent.stdout.readline()
    time.sleep(0.3)
    deadline = time.monotonic() + 10
    kids = []
    while not kids and time.monotonic() < deadline:
        kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == parent.pid]
        time.sleep(0.02)
    assert kids, "no launcher started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t0 = time.monotonic()
    while any(_alive(p) for p in kids) and time.monotonic() - t0 < 10:
        time.sleep(0.01)
    assert not any(_alive(p) for p in kids) and time.monotonic() - t0 < 0.5


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------ item 4: linear time on model output

def _entries():
    from rewards.code import extract_program
    from rewards.format import format_reward
    from rewards.mathcheck.extract import extract_answer
    from rewards.mathcheck.normalize import normalize
    # Every regex in rewards/ that sees model output, by the entry point that feeds it model output:
    return {
        # rewards/code.py: the code-fence scan (fenced_blocks, was _FENCE), the unterminated-tail match, _TAG,
        # and compile() of an unfenced completion (capped at MAX_UNFENCED).
        "code fences": extract_program,
        # rewards/format.py: _ANSWER_MARK and the think tags (_think_then_answer, was _THINK).
        "format answer": lambda s: format_reward([""], [s]),
        "format think": lambda s: format_reward([""], [s], style="think"),
        # rewards/mathcheck/extract.py: box_spans (_TOKEN), _MARKERS (answer phrases), _GAP_*, _IS_TAIL,
        # _math_blocks (was _MATH_BLOCK), _INLINE_MULTILINE, _NUMBER, the think cut.
        "math extraction": extract_answer,
        # rewards/mathcheck/normalize.py (every module-level pattern and the inline re.sub calls); numbers.py,
        # shapes.py, lists.py, compare.py see an extracted answer (at most _MAX_ANSWER = 50 kB) via rewards.math.
        "math normaliser": normalize,
    }


ADVERSARIAL = ["```a", "```python\n", "a", " ", "1,", "\\boxed{", "\\boxed 1", "{", "$", "$a", "\\[", "\\(", "\\\\",
               "<think>", "<think> a", "the answer is ", "Answer: ", "答案", "####", "\\text{", "\\frac{1}{", "1 cm",
               "a is ", "x<", "a=", "1.", "1/", "_{1", "or ", "...", "\n", "1}"]


@pytest.mark.parametrize("entry", ["code fences", "format answer", "format think", "math extraction",
                                   "math normaliser"])
def test_megabyte_adversarial_inputs_cost_well_under_a_second(entry):
    fn = _entries()[entry]
    worst = (0.0, None)
    for frag in ADVERSARIAL:
        text = (frag * ((1 << 20) // len(frag) + 1))[: 1 << 20]
        _, cpu = cpu_of(fn, text)
        worst = max(worst, (cpu, frag))
    assert worst[0] < 1.0, worst  # measured: at most ~0.55 s on a loaded 2-core box (math extraction)


def test_fence_scan_is_linear_and_matches_the_old_regex():
    import random
    import re

    from rewards.code import extract_program, fenced_blocks

    old = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
    rng = random.Random(0)
    parts = ["```", "python", "\n", " ", "a", "`", "``", "py x"]
    for _ in range(3000):
        t = "".join(rng.choice(parts) for _ in range(rng.randint(0, 9)))
        assert fenced_blocks(t) == old.findall(t), t
    _, cpu = cpu_of(extract_program, "```a" * (1 << 18))  # 80 kB of this cost the old regex 2.7 s
    assert cpu < 0.2


def test_think_check_matches_the_old_regex():
    import random
    import re

    from rewards.format import _think_then_answer

    old = re.compile(r"^\s*<think>.*?\S.*?</think>\s*\S", re.DOTALL)
    rng = random.Random(0)
    parts = ["<think>", "</think>", " ", "a", "\n", "<", "think>"]
    for _ in range(3000):
        t = "".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))
        assert bool(old.search(t)) == _think_then_answer(t), t


def test_math_block_scan_matches_the_old_regex():
    import random

    from rewards.mathcheck.extract import _MATH_BLOCK, _math_blocks

    rng = random.Random(0)
    parts = ["$", "$$", "\\[", "\\]", "\\(", "\\)", "a", "\n", "\\", " "]
    for _ in range(5000):
        t = "".join(rng.choice(parts) for _ in range(rng.randint(0, 12)))
        want = [(m.start(), m.end(), m.groups()) for m in _MATH_BLOCK.finditer(t)]
        assert [(m.start(), m.end(), m.groups()) for m in _math_blocks(t)] == want, t


# ------------------------------------------------------------------ item 5: memory of the whole process tree

SPREAD = """
import os, time
def f(x):
    kids = []
    for _ in range(5):
        pid = os.fork()
        if pid == 0:
            b = bytearray(150 << 20)  # under RLIMIT_AS alone; 750 MiB together
            time.sleep(1.5)
            os._exit(0)
        kids.append(pid)
    return sum(os.waitpid(p, 0)[1] == 0 for p in kids)
"""


@sandboxed
def test_memory_spread_over_processes_is_capped_for_the_tree():
    import copy

    ex = Executor(Limits(timeout_s=3, wall_factor=1.0, memory_mb=256))
    ex.caps = copy.copy(ex.caps)
    ex.caps.report = {**ex.caps.report, "cgroups": False}  # as on a host without root: no cgroup, the watchdog
    assert score(fenced(SPREAD), {"asserts": ["assert f(1) == 5"]}, executor=ex) == 0.0
    honest = "def f(x):\n    b = bytearray(120 << 20)\n    return 5"
    assert score(fenced(honest), {"asserts": ["assert f(1) == 5"]}, executor=ex) == 1.0


def test_a_crash_in_the_code_reward_is_counted_where_the_trainer_reads_it(monkeypatch):
    """The trainer logs reward/code/crashes as the step's increase of crash_totals() (grpo/train/trainer.py)."""
    import rewards.code as code
    from rewards.scoring import crash_totals, named

    def boom(*a, **k):
        raise ZeroDivisionError("from the judge")

    monkeypatch.setattr(code, "run_tests", boom)
    monkeypatch.setattr(code, "_executor", lambda *a: Executor.__new__(Executor))
    rewards = [named("code", code.code_reward, args={"max_parallel": 1}), named("plain", lambda **kw: [1.0])]
    before = crash_totals(rewards)
    assert set(before) == {"code"}  # only a reward that declares crash_counts is counted
    rewards[0].fn(["p", "q"], [fenced("def f(x):\n    return x")] * 2, [{"asserts": ["assert f(1) == 1"]}] * 2)
    assert crash_totals(rewards)["code"] == before["code"] + 2
